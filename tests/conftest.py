"""Shared fixtures: a tiny labelled stem set and catalog, the tiny demo corpus, a configured
Luigi data root, a luigid to run against, and the helpers several test files use.

Helpers are fixtures (``write_stem_track``, ``luigi_options``, ``free_port``, ``luigid``,
``truth_table``): test files take them as arguments and never import this module."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import luigi
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.corpora.demo import DemoConfig, generate
from pipeline.sources import HOP_S, SOURCES
from tests.fixtures_stems import stem_track

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def write_stem_track() -> Callable[..., np.ndarray]:
    """``write(folder, rng, seconds, rate=44100, silent=None) -> stems``: writes
    ``<folder>/{mixture,drums,bass,other,vocals}.wav`` of noise-like stems, ``silent`` mapping a
    source number to the ``(start, stop)`` seconds where it is zero; returns the stems
    ``(4, 2, samples)``."""
    return stem_track


@pytest.fixture
def small_stem_set(tmp_path) -> Path:
    """Two train, one valid, one calibration, one test track of 3 s in the MUSDB18-HQ layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "stems"
    for split, count in (("train", 2), ("valid", 1), ("calibration", 1), ("test", 1)):
        for i in range(count):
            stem_track(root / split / f"{split}-{i}", rng, 3.0, silent={3: (1.0, 3.0)})
    return root


@pytest.fixture
def small_catalog(tmp_path) -> Path:
    """Four short mixtures in two folders."""
    rng = np.random.default_rng(1)
    root = tmp_path / "catalog"
    for i in range(4):
        path = root / f"folder{i % 2}" / f"song{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, rng.uniform(-0.2, 0.2, (22050 * 2, 2)), 22050)
    return root


@contextlib.contextmanager
def _luigi_options(options: dict[str, dict] | None = None) -> Iterator[Callable[[str, str, object], None]]:
    """Set Luigi configuration ``{section: {key: value}}``; yield a setter; restore on exit.
    The stages look at their inputs and options afresh inside and after (``forget_inputs``)."""
    from tasks.graph import kept_config
    from tasks.inputs import forget_inputs

    with kept_config() as config:

        def set_option(section: str, key: str, value) -> None:
            if not config.has_section(section):
                config.add_section(section)
            config.set(section, key, str(value))
            forget_inputs()

        for section, values in (options or {}).items():
            for key, value in values.items():
                set_option(section, key, value)
        try:
            yield set_option
        finally:
            forget_inputs()


@pytest.fixture(scope="session")
def luigi_options() -> Callable[..., contextlib.AbstractContextManager]:
    """``with luigi_options({section: {key: value}}) as set_option:`` the Luigi configuration with
    these options (``set_option(section, key, value)`` sets more); as it was again after."""
    return _luigi_options


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Callable[[Path], Path]:
    """``copy(dest) -> dest``: a fresh copy (file times kept) of the tiny demo corpus,
    ``DemoConfig.tiny(seed=3)``, generated once per session (about 5 s)."""
    master = tmp_path_factory.mktemp("tiny-demo") / "corpus"
    generate(master, DemoConfig.tiny(seed=3))

    def copy(dest: Path) -> Path:
        shutil.copytree(master, dest)
        return dest

    return copy


@pytest.fixture
def luigi_config(tmp_path):
    """Point ``[silentmine]`` at a fresh data root, with no catalog truth; returns a setter for
    further options."""
    with _luigi_options({"silentmine": {"data_root": tmp_path / "data", "catalog_truth": ""}}) as set_option:
        yield set_option


@pytest.fixture
def configured(luigi_config, small_stem_set, small_catalog):
    """The small stem set and catalog configured, one track per shard, one thread, no ground
    truth, and a detector and calibration that train in seconds on 3 s tracks."""
    for section, values in {
        "silentmine": {"stem_root": small_stem_set, "catalog": small_catalog, "threads": 1},
        "ScanCatalog": {"shard_size": 1},
        "TrainDetector": {"width": 0.0625, "epochs": 1, "patience": 1, "crop_seconds": 2.0},
        "Calibrate": {"min_windows": 1, "target_fraction": 0.5, "target_db": -10},
    }.items():
        for key, value in values.items():
            luigi_config(section, key, value)
    return luigi_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port() -> int``: a TCP port on 127.0.0.1 that nothing listens on now."""
    return _free_port


def luigid_api(port: int, method: str, **data) -> dict:
    """One call of the API of the luigid on ``port`` (``/api/<method>``); its ``response``."""
    query = urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{method}?{query}", timeout=5) as answer:
        return json.loads(answer.read())["response"]


LUIGID = "import sys; from luigi.cmdline import luigid; luigid(sys.argv[1:])"  # the luigid command, by this Python


@contextlib.contextmanager
def _serve_luigid(folder: Path, config: Path | None = None, wait_s: float = 120) -> Iterator[int]:
    """A luigid on 127.0.0.1 (state and logs under ``folder``, ``config`` as its luigi.cfg),
    answering its API; yields its port; stopped on exit."""
    port = _free_port()
    (folder / "luigid-logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"LUIGI_CONFIG_PATH": str(config)} if config else {})}
    process = subprocess.Popen([sys.executable, "-c", LUIGID, "--address", "127.0.0.1",
                                "--port", str(port), "--state-path", str(folder / "luigid.pickle"),
                                "--logdir", str(folder / "luigid-logs")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + wait_s
        while True:
            try:
                luigid_api(port, "task_list", status="RUNNING")
                break
            except (OSError, urllib.error.URLError):
                assert process.poll() is None and time.time() < deadline, "luigid did not start"
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def luigid() -> Callable[..., contextlib.AbstractContextManager]:
    """``with luigid(folder, config=None) as port:`` a central Luigi scheduler to run against,
    and ``luigid.api(port, method, **data)`` to ask it."""

    class Luigid:
        api = staticmethod(luigid_api)

        def __call__(self, folder: Path, config: Path | None = None):
            return _serve_luigid(folder, config)

    return Luigid()


def _truth_table(file: str, volumes: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    table = pd.DataFrame({"file": file, "window": np.arange(n), "start_s": np.arange(n) * HOP_S})
    for source in SOURCES:
        table[f"V_{source}"] = volumes.get(source, np.zeros(n))
    return table


@pytest.fixture(scope="session")
def truth_table() -> Callable[[str, dict, int], pd.DataFrame]:
    """``truth_table(file, {source: V (n,) dB}, n)``: a catalog truth table of one file of ``n``
    grid windows (``file, window, start_s, V_<source>``; sources not given are 0 dB)."""
    return _truth_table


@pytest.fixture
def run_pipeline():
    """Run a task with the local scheduler; return the families of the tasks that ran."""
    from tasks.inputs import forget_inputs

    def run(task_name: str, **params) -> list[str]:
        import tasks

        forget_inputs()
        ran: list[str] = []
        handler = lambda task: ran.append(task.task_family)  # noqa: E731
        luigi.Task.event_handler(luigi.Event.SUCCESS)(handler)
        try:
            task = getattr(tasks, task_name)(**params)
            result = luigi.build([task], local_scheduler=True, detailed_summary=True, workers=1)
        finally:
            luigi.Task._event_callbacks[luigi.Task][luigi.Event.SUCCESS].discard(handler)
        assert result.scheduling_succeeded, result.summary_text
        return ran

    return run
