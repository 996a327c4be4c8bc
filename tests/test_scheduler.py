"""Two `silentmine run` processes sharing one luigid: every task runs once, results as one worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.mining.schema import read_index
from pipeline.storage.journal import read_journal
from pipeline.threads import effective_threads

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Tiny settings (as in test_pipeline.py), 2 tracks per shard so the catalog has several shards, and a
# loose calibration with 1 s excerpts so that the tiny detector extracts something to compare.
SETTINGS = {
    "ScanCatalog": {"shard_size": 2},
    "TrainDetector": {"width": 0.0625, "epochs": 2, "patience": 2, "crop_seconds": 3.0},
    "Calibrate": {"min_windows": 5, "target_fraction": 0.4, "target_db": -10, "splits": '["valid", "calibration"]'},
    "Extract": {"min_seconds": 1.0},
}


def _options(root: Path, data_root: Path) -> dict[str, dict]:
    return {"silentmine": {"data_root": data_root, "stem_root": root / "demo" / "stems",
                           "catalog": root / "demo" / "catalog", "threads": 1}, **SETTINGS}


def _write_config(path: Path, options: dict[str, dict]) -> Path:
    path.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                            for section, values in options.items()))
    return path


def _silentmine(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    return subprocess.Popen([str(BIN / "silentmine"), "run", "Extract", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, tiny_demo, luigid):
    """The tiny demo run by two processes through one luigid and, alongside them (one thread each;
    the shared run leaves a core idle while one task holds the other worker back), by one
    process alone into its own data root."""
    root = tmp_path_factory.mktemp("scheduler")
    tiny_demo(root / "demo")
    shared = _write_config(root / "shared.cfg", _options(root, root / "shared"))
    alone = _silentmine(_write_config(root / "alone.cfg", _options(root, root / "alone")))
    try:
        with luigid(root, shared) as port:
            workers = [_silentmine(shared, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port),
                                   "--workers", "1") for _ in range(2)]
            shared_results = [_finish(p) for p in workers]
    except BaseException:
        alone.kill()
        raise
    return root, shared_results, _finish(alone)


def _graph(options) -> set[tuple[str, str, str | None]]:
    """``(family, key, shard_key)`` of every stage task of `Extract` (its shards included)."""
    import tasks
    from tasks.base import Stage
    from tasks.graph import walk

    with options:
        return {(task.task_family, task.key, getattr(task, "shard_key", None))
                for task in walk(tasks.Extract()) if isinstance(task, Stage)}


def _run_folder(options, task_name: str, requirement: str | None = None) -> Path:
    """The folder of task ``task_name`` (or of its ``requirement``) under ``options``."""
    import tasks

    with options:
        task = getattr(tasks, task_name)()
        return (task.requires()[requirement] if requirement else task).folder


def test_two_workers_through_luigid_run_every_task_once(shared_run, luigi_options):
    root, results, _ = shared_run
    for code, out in results:
        assert code == 0, out[-3000:]
    journal = read_journal(root / "shared")
    done = journal[journal["status"] == "done"]
    ran = [(family, key, shard_key if isinstance(shard_key, str) else None)
           for family, key, shard_key in zip(done["family"], done["key"], done["shard_key"])]
    expected = _graph(luigi_options(_options(root, root / "shared")))
    assert len(ran) == len(set(ran)), done.groupby(["family", "shard_key"], dropna=False).size()
    assert set(ran) == expected
    families = {family for family, _, _ in expected}
    assert {"ScanCatalog", "Labels", "StemFeatures", "TrainDetector", "DetectStems", "Calibrate", "CatalogFeatures",
            "DetectCatalog", "ExtractShard", "Extract"} <= families
    assert sum(family == "CatalogFeatures" for family, _, _ in expected) >= 3
    split = done.groupby("pid")["family"].apply(list).to_dict()
    print("work split between the two processes:", split)
    assert len(split) == 2, f"one process did all the work: {split}"
    assert journal["status"].eq("done").all()
    assert (done["body_s"] > 0).all() and (done["body_s"] <= done["wall_s"]).all()


def test_a_single_worker_gives_the_same_datasets(shared_run, luigi_options):
    root, _, (code, out) = shared_run
    assert code == 0, out[-3000:]
    shared_run_dir = _run_folder(luigi_options(_options(root, root / "shared")), "Extract")
    alone_run_dir = _run_folder(luigi_options(_options(root, root / "alone")), "Extract")
    assert shared_run_dir.name == alone_run_dir.name  # same key: same parameters and inputs
    shared_index = read_index(shared_run_dir / "index").sort_values("excerpt_id").reset_index(drop=True)
    alone_index = read_index(alone_run_dir / "index").sort_values("excerpt_id").reset_index(drop=True)
    assert len(shared_index) > 0
    assert list(shared_index["excerpt_id"]) == list(alone_index["excerpt_id"])
    assert list(shared_index["audio_checksum"]) == list(alone_index["audio_checksum"])
    thresholds = [pd.read_parquet(_run_folder(luigi_options(_options(root, data_root)), "Extract", "calibration")
                                  / "thresholds.parquet")
                  for data_root in (root / "shared", root / "alone")]
    pd.testing.assert_frame_equal(*thresholds)
    alone_journal = read_journal(root / "alone")
    assert alone_journal["pid"].nunique() == 1 and alone_journal["status"].eq("done").all()


def test_threads_split_the_cores_among_workers():
    assert effective_threads(0, 1, 16) == 16
    assert effective_threads(0, 4, 16) == 4
    assert effective_threads(0, 3, 2) == 1
    assert effective_threads(6, 4, 16) == 6
