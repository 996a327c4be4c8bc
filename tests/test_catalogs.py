"""Several catalogs, and versions of one, on one data root: each has its complete D_i, nothing is lost,
nothing finished is computed again.

One data root runs catalog A (5 tracks, shards {a0 a1} {a2 a3} {a4}), then B, then A again, then A
with two files removed (a1 and a3: two new shards {a0} {a2}, {a4} reused), then A restored.  After
each step the configured catalog's D_i is compared with a fresh run of the same catalog on an empty
data root (same excerpt ids and audio checksums); the run journal shows that no shard of any
catalog stage ran twice; and every earlier D_i still verifies (its excerpts are on disk).

The detector is an untrained tiny one and every calibrated threshold is 0 (every frame qualifies),
written as the TrainDetector and Calibrate outputs, so each track gives one excerpt per source
without any training (the extraction stages themselves run for real).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from classifiers.detector import DetectorConfig, SilentSourceDetector, save_checkpoint
from pipeline.mining.datasets import DatasetRun
from pipeline.mining.verify import verify_run
from pipeline.sources import SOURCES
from pipeline.storage.journal import read_journal
from pipeline.storage.outputs import StageResult

SHARD_STAGES = ("CatalogFeatures", "DetectCatalog", "ExtractShard")
TRACK_SECONDS = 2.0


def write_catalog(root: Path, names: list[str], seed: int) -> Path:
    """Mono 22.05 kHz noise tracks of TRACK_SECONDS, one file per name, distinct contents."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for name in names:
        t = np.arange(int(TRACK_SECONDS * 22050)) / 22050
        tone = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 800) * t)
        sf.write(root / f"{name}.wav", (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32), 22050,
                 subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory, write_stem_track):
    base = tmp_path_factory.mktemp("catalogs")
    rng = np.random.default_rng(0)
    stems = base / "stems"
    for split in ("train", "valid", "test"):  # fingerprinted for the keys, never decoded here
        write_stem_track(stems / split / f"{split}-0", rng, 1.0)
    catalog_a = write_catalog(base / "catalog_a", [f"a{i}" for i in range(5)], seed=1)
    catalog_b = write_catalog(base / "catalog_b", ["b0", "b1"], seed=2)
    torch.manual_seed(0)
    config = DetectorConfig(width=0.0625)
    checkpoint = base / "detector.pt"
    save_checkpoint(checkpoint, SilentSourceDetector(config), config)
    return base, stems, catalog_a, catalog_b, checkpoint


def options(data_root: Path, stems: Path, catalog: Path) -> dict:
    return {"silentmine": {"data_root": data_root, "stem_root": stems, "catalog": catalog, "threads": 1,
                           "catalog_truth": ""},
            "ScanCatalog": {"shard_size": 2}, "Extract": {"min_seconds": 1.0}}


def seed_detector_and_thresholds(checkpoint: Path) -> None:
    """Write the TrainDetector output (``checkpoint``) and a Calibrate output with every p_i = 0
    into the configured data root, each with its manifest, as the stages would."""
    import tasks
    from tasks.inputs import forget_inputs

    forget_inputs()
    detector, calibration = tasks.TrainDetector(), tasks.Extract().requires()["calibration"]
    if detector.complete():
        return
    detector.folder.mkdir(parents=True)
    detector.checkpoint.write_bytes(checkpoint.read_bytes())
    detector.write_completion(StageResult(), time.time())
    calibration.folder.mkdir(parents=True)
    pd.DataFrame({"source": list(SOURCES), "calibratable": True, "threshold": 0.0}).to_parquet(calibration.thresholds)
    calibration.write_completion(StageResult(), time.time())


@pytest.fixture
def run_extract(world, run_pipeline, luigi_options):
    """``run_extract(data_root, catalog) -> (families that ran, D_i)``: Extract for ``catalog`` on
    ``data_root``."""
    import tasks

    _, stems, _, _, checkpoint = world

    def run(data_root: Path, catalog: Path) -> tuple[list[str], DatasetRun]:
        with luigi_options(options(data_root, stems, catalog)):
            seed_detector_and_thresholds(checkpoint)
            ran = run_pipeline("Extract")
            dataset = tasks.Extract().dataset
            assert dataset.complete
        return ran, dataset

    return run


def excerpts(dataset: DatasetRun) -> list[tuple[str, str]]:
    """``(excerpt_id, audio_checksum)`` of a D_i, sorted."""
    return sorted((e.excerpt_id, e.audio_checksum) for e in dataset.excerpts())


def shard_runs(data_root: Path) -> pd.DataFrame:
    journal = read_journal(data_root)
    done = journal[(journal["status"] == "done") & journal["family"].isin(SHARD_STAGES)]
    return done[["family", "key", "shard_key"]]


def last_gathering(data_root: Path) -> dict:
    journal = read_journal(data_root)
    return journal[journal["family"] == "Extract"].iloc[-1]["counts"]


def test_catalogs_switch_back_and_forth_without_loss_or_recomputation(world, run_extract, tmp_path):
    base, _, catalog_a, catalog_b, _ = world
    shared = tmp_path / "shared"
    fresh = {}

    def fresh_run(label: str, catalog: Path) -> list[tuple[str, str]]:
        if label not in fresh:
            fresh[label] = excerpts(run_extract(tmp_path / f"fresh-{label}", catalog)[1])
        return fresh[label]

    earlier: list[DatasetRun] = []

    def step(label: str, catalog: Path) -> tuple[list[str], DatasetRun]:
        ran, dataset = run_extract(shared, catalog)
        assert excerpts(dataset) == fresh_run(label, catalog), label
        runs = shard_runs(shared)
        assert not runs.duplicated().any(), f"{label}: a finished shard ran again\n{runs[runs.duplicated()]}"
        for view in [*earlier, dataset]:  # every D_i made so far is still whole on disk
            assert verify_run(view.folder, check_catalog=False) == [], f"{label}: {view}"
        earlier.append(dataset)
        return ran, dataset

    # 1. catalog A: 5 tracks, 4 excerpts each (one per source: every frame qualifies)
    ran, view_a = step("A", catalog_a)
    assert {"ScanCatalog", "CatalogFeatures", "DetectCatalog", "ExtractShard", "Extract"} <= set(ran)
    assert len(excerpts(view_a)) == 20 and len(view_a.shard_keys) == 3
    shards_a = set(view_a.shard_keys)

    # 2. catalog B: its own D_i; A's shards stay in the store, unlisted
    ran, view_b = step("B", catalog_b)
    assert view_b.folder != view_a.folder and view_b.store.folder == view_a.store.folder
    assert len(excerpts(view_b)) == 8
    assert not {e.track_id for e in view_b.excerpts()} & {e.track_id for e in view_a.excerpts()}
    gathered = last_gathering(shared)
    assert set(gathered["unlisted_shard_keys"]) == shards_a and gathered["shards_reused"] == 0

    # 3. A again: nothing to do, the same D_i
    ran, again = step("A", catalog_a)
    assert ran == [] and again.folder == view_a.folder

    # 4. A without a1 and a3: two new shards ({a0}, {a2}), {a4} reused; A's first D_i is kept
    held = base / "held"
    held.mkdir(exist_ok=True)
    for name in ("a1.wav", "a3.wav"):
        os.replace(catalog_a / name, held / name)  # mtime kept: putting them back restores the listing
    try:
        ran, view_smaller = step("A-2", catalog_a)
        assert view_smaller.folder not in (view_a.folder, view_b.folder)
        assert len(excerpts(view_smaller)) == 12 and sorted(ran).count("ExtractShard") == 2
        gathered = last_gathering(shared)
        assert gathered["shards_reused"] == 1 and gathered["shards_computed"] == 2
        assert set(gathered["reused_shard_keys"]) == set(view_smaller.shard_keys) & shards_a
        assert set(gathered["unlisted_shard_keys"]) == (shards_a | set(view_b.shard_keys)) - set(
            view_smaller.shard_keys
        )
    finally:
        for name in ("a1.wav", "a3.wav"):
            os.replace(held / name, catalog_a / name)

    # 5. A restored: the first scan's D_i again, nothing recomputed
    ran, restored = step("A", catalog_a)
    assert ran == [] and restored.folder == view_a.folder
    assert read_journal(shared)["status"].eq("done").all()


def test_verify_command_checks_the_configured_d_i_and_the_other_stages(world, run_extract, luigi_options, tmp_path,
                                                                       capsys):
    from tasks.cli import main

    _, stems, catalog_a, _, _ = world
    data_root = tmp_path / "data"
    _, dataset = run_extract(data_root, catalog_a)
    with luigi_options(options(data_root, stems, catalog_a)):
        assert main(["verify"]) == 0
        out = capsys.readouterr().out
        assert "verify: OK (20 excerpts" in out and "3 feature shards, 1 checkpoint" in out

        feature_index = sorted(data_root.glob("features/*/shards/*.index.parquet"))[0]
        moved = feature_index.with_name("moved")
        feature_index.rename(moved)
        detector = next(data_root.glob("detector/*/detector.pt"))
        detector.write_bytes(detector.read_bytes()[:100])
        excerpt = dataset.audio_file(next(dataset.excerpts()))
        excerpt.unlink()
        assert main(["verify", "--no-catalog"]) == 1
        lines = capsys.readouterr().out.strip().splitlines()
        assert any(line.startswith("missing_audio: ") for line in lines)
        assert any(line.startswith(f"feature_shard: {feature_index}: ") for line in lines)
        assert any(line.startswith(f"checkpoint: {detector}") for line in lines)
        assert lines[-1].startswith("verify: 3 problems in")
