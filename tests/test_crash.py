"""Crash safety: SIGKILL in the middle of each long stage, then a plain re-run.

One data root is run uninterrupted (the reference, in a process of its own alongside the
others).  A second one is killed four times in a row, each time in the middle of a different
long stage (catalog features, catalog detection, extraction, separator training;
``tests/crash_run.py`` kills the process between writing an output's temporary and renaming
it), and finally re-run to the end.  After every kill (a copy of what it left, compared once
the reference is done), every visible file equals the reference's file of the same name (so
no partial file is ever visible under a final name) and the killed write's temporary is
there; after the final re-run, the two data roots hold the same files with the same bytes,
and the killed shards' temporaries are gone.  Files that record wall-clock times (manifests,
shard markers, logs, the journal) are compared by name only, and the separator's resume
checkpoint by content without the seconds each epoch took.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("crash_run.py")
TARGET = "TrainSeparator"  # with remix: everything up to the D_i, then the separator (luigi.cfg's model)
SETTINGS = """
[core]
log_level = WARNING
autoload_range = false
[worker]
keep_alive = false
[ScanCatalog]
shard_size = 2
[TrainDetector]
width = 0.0625
epochs = 2
patience = 2
crop_seconds = 3.0
[Calibrate]
min_windows = 10
target_fraction = 0.9
splits = ["valid", "calibration"]
[TrainSeparator]
channels = 4
depth = 3
epochs = 2
batches_per_epoch = 2
batch_size = 2
window_s = 1.0
lr_decay_every = 1
"""
# (stage, glob of the write to kill in, which matching write): each long stage, mid-way.
KILLS = [
    ("features", "features/*/shards/*.npy", 2),
    ("detection", "detect/*/shards/*.parquet", 2),
    ("extraction", "excerpts/*/rejects/part-*.parquet", 2),
    ("separator training", "separator/*/checkpoint.pt", 2),
]
# Names whose content holds wall-clock times or process ids: compared by presence only.
TIMED = {"manifest.json", "history.json", "history.parquet", "log.jsonl", "history.csv", "summary.json"}


def _config(root: Path, demo: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "luigi.cfg"
    path.write_text(f"[silentmine]\ndata_root = {root / 'data'}\nstem_root = {demo / 'stems'}\n"
                    f"catalog = {demo / 'catalog'}\nthreads = 1\n{SETTINGS}")
    return path


def _start(config: Path, *args: str, log: Path) -> subprocess.Popen:
    """``crash_run.py TARGET ARGS`` with ``config``, one thread, its stderr into ``log``."""
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stderr:
        return subprocess.Popen([sys.executable, str(RUNNER), TARGET, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, text=True)


def _finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    """``(return code, the tail of its stderr)`` once ``process`` has ended."""
    code = process.wait(timeout=600)
    return code, log.read_text()[-3000:]


def _run(config: Path, *args: str) -> tuple[int, str]:
    log = config.with_name(f"run-{len(list(config.parent.glob('run-*.log')))}.log")
    return _finish(_start(config, *args, log=log), log)


def _visible_files(data: Path) -> dict[str, Path]:
    """Relative posix path -> file, for every file a reader may see (no hidden names)."""
    files = {}
    for path in data.rglob("*"):
        relative = path.relative_to(data)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts) \
                and relative.parts[0] != "journal":
            files[relative.as_posix()] = path
    return files


def _timed(name: str) -> bool:
    return Path(name).name in TIMED or (name.split("/")[-2:-1] == ["shards"] and name.endswith(".json"))


def _without_seconds(value):
    """A loaded checkpoint with the wall-clock ``seconds`` of its history left out."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, (list, tuple)):
        return [_without_seconds(v) for v in value]
    return value


def _same_checkpoint(path: Path, other: Path) -> bool:
    """Equal content apart from wall-clock seconds (NaN equals NaN, tensors bit for bit)."""
    a, b = (_without_seconds(torch.load(p, weights_only=False)) for p in (path, other))

    def equal(x, y) -> bool:
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(map(equal, x, y))
        if torch.is_tensor(x):
            return torch.is_tensor(y) and torch.equal(x, y)
        return x == y or (x != x and y != y)

    return equal(a, b)


def _differences(files: dict[str, Path], reference: dict[str, Path]) -> list[str]:
    """Names in ``files`` that the reference lacks or holds with other bytes."""
    wrong = []
    for name, path in files.items():
        if name not in reference:
            wrong.append(f"{name} (not in the reference)")
        elif _timed(name) or path.read_bytes() == reference[name].read_bytes():
            continue
        elif not (name.endswith("/checkpoint.pt") and _same_checkpoint(path, reference[name])):
            wrong.append(f"{name} (bytes differ)")
    return wrong


def _temporaries(data: Path) -> list[str]:
    return sorted(p.relative_to(data).as_posix() for p in data.rglob(".*") if ".tmp-" in p.name)


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory, tiny_demo) -> Path:
    return tiny_demo(tmp_path_factory.mktemp("crash") / "demo")


def test_sigkill_in_each_long_stage_then_rerun_equals_an_uninterrupted_run(demo_corpus, tmp_path):
    # The reference runs alongside the killed runs (one thread each, 2 cores); what each kill
    # leaves is copied aside and compared with the reference once that has finished.
    reference_config = _config(tmp_path / "reference", demo_corpus)
    reference_log = tmp_path / "reference" / "run.log"
    reference_run = _start(reference_config, log=reference_log)

    config = _config(tmp_path / "crashed", demo_corpus)
    data = tmp_path / "crashed" / "data"
    left = {}
    for stage, pattern, nth in KILLS:
        code, log = _run(config, "--kill-at", pattern, "--nth", str(nth))
        assert code == -signal.SIGKILL, f"{stage}: not killed ({code})\n{log}"
        left[stage] = tmp_path / "after" / stage.replace(" ", "-")
        shutil.copytree(data, left[stage], symlinks=True)
    code, log = _run(config)
    assert code == 0, log

    code, log = _finish(reference_run, reference_log)
    assert code == 0, log
    reference = _visible_files(tmp_path / "reference" / "data")
    for stage, pattern, _ in KILLS:
        leftovers = _temporaries(left[stage])
        prefix = pattern.split("/")[0]
        assert any(name.startswith(prefix + "/") for name in leftovers), f"{stage}: no temporary left"
        wrong = _differences(_visible_files(left[stage]), reference)
        if stage == "separator training":
            # Training writes a resumable snapshot after every epoch (checkpoint, best model, history,
            # plot): complete files of epoch 1 that epoch 2 replaces; the folder has no manifest yet.
            snapshot = [name for name in wrong if name.startswith("separator/")]
            assert all(
                (left[stage] / name.split(" ")[0]).parent.joinpath("manifest.json").exists() is False
                for name in snapshot
            )
            (checkpoint,) = left[stage].glob("separator/*/checkpoint.pt")
            assert torch.load(checkpoint, weights_only=False)["epoch"] == 1
            wrong = [name for name in wrong if name not in snapshot]
        assert wrong == [], f"after the kill in {stage}"

    files = _visible_files(data)
    assert _differences(files, reference) == []
    assert sorted(files) == sorted(reference)
    shard_leftovers = [
        name
        for name in _temporaries(data)
        if "/shards/" in name
        or "/rejects/" in name
        or "/index/" in name
        or "/audio/" in name
        or name.startswith("separator/")
    ]
    assert shard_leftovers == []
