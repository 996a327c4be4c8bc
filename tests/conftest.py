"""Shared fixtures: a tiny labelled stem set and catalog, the tiny demo corpus, and a configured
Luigi data root."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import luigi
import numpy as np
import pytest
import soundfile as sf

from pipeline.corpora.demo import DemoConfig, generate
from pipeline.sources import SOURCES

os.environ.setdefault("MPLBACKEND", "Agg")


def write_stem_track(folder: Path, rng: np.random.Generator, seconds: float, rate: int = 44100,
                     silent: dict[int, tuple[float, float]] | None = None) -> np.ndarray:
    """Write ``<folder>/{mixture,drums,bass,other,vocals}.wav`` of noise-like stems; return stems."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    stems = np.stack([
        rng.standard_normal((2, n)) * 0.1 * (np.sin(2 * np.pi * 2 * t) > 0.5),  # pulses
        np.stack([0.2 * np.sin(2 * np.pi * 55 * t)] * 2),  # bass tone
        rng.standard_normal((2, n)) * 0.05,  # broadband "other"
        np.stack([0.1 * np.sin(2 * np.pi * 440 * t + 3 * np.sin(2 * np.pi * 5 * t))] * 2),  # voice-ish
    ]).astype(np.float32)
    for index, (start, stop) in (silent or {}).items():
        stems[index, :, int(start * rate): int(stop * rate)] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    for name, stem in zip(SOURCES, stems):
        sf.write(folder / f"{name}.wav", stem.T, rate, subtype="FLOAT")
    sf.write(folder / "mixture.wav", stems.sum(0).T, rate, subtype="FLOAT")
    return stems


@pytest.fixture
def small_stem_set(tmp_path) -> Path:
    """Two train, one valid, one calibration, one test track of 3 s in the MUSDB18-HQ layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "stems"
    for split, count in (("train", 2), ("valid", 1), ("calibration", 1), ("test", 1)):
        for i in range(count):
            write_stem_track(root / split / f"{split}-{i}", rng, 3.0, silent={3: (1.0, 3.0)})
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
def luigi_options(options: dict[str, dict] | None = None) -> Iterator[Callable[[str, str, object], None]]:
    """Set Luigi configuration ``{section: {key: value}}``; yield a setter; restore on exit."""
    from tasks.graph import kept_config

    with kept_config() as config:

        def set_option(section: str, key: str, value) -> None:
            if not config.has_section(section):
                config.add_section(section)
            config.set(section, key, str(value))

        for section, values in (options or {}).items():
            for key, value in values.items():
                set_option(section, key, value)
        yield set_option


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
    """Point ``[silentmine]`` at a fresh data root; returns a setter for further options."""
    with luigi_options({"silentmine": {"data_root": tmp_path / "data"}}) as set_option:
        yield set_option


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
