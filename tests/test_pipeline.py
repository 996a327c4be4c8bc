"""The whole DAG on the tiny demo corpus: outputs, reruns, incremental catalogs, rejects."""

from __future__ import annotations

import shutil

import luigi
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.audio.io import file_checksum
from pipeline.mining.schema import read_index
from tests.conftest import luigi_options

pytestmark = pytest.mark.slow

# Tiny settings: every stage runs for real, on a few seconds of audio and tiny models.
SETTINGS = {
    "ScanCatalog": {"shard_size": 3},
    "TrainDetector": {"width": 0.0625, "epochs": 2, "patience": 2, "crop_seconds": 3.0},
    "Calibrate": {"min_windows": 10, "target_fraction": 0.9, "splits": '["valid", "calibration"]'},
    "TrainSeparator": {"channels": 4, "depth": 3, "epochs": 1, "batches_per_epoch": 2, "batch_size": 2,
                       "window_s": 1.0, "lr_decay_every": 1},
    "Evaluate": {"max_tracks": 1},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_demo):
    """The tiny demo corpus, and luigi.cfg pointed at it (restored afterwards)."""
    root = tmp_path_factory.mktemp("pipeline")
    tiny_demo(root / "demo")
    options = {"silentmine": {"data_root": root / "data", "stem_root": root / "demo" / "stems",
                              "catalog": root / "demo" / "catalog", "threads": 2},
               "MeasureExtraction": {"truth": root / "demo" / "catalog_truth.parquet"}, **SETTINGS}
    with luigi_options(options):
        yield root


def test_all_runs_and_every_output_says_what_made_it(demo, run_pipeline):
    import tasks

    ran = run_pipeline("All")
    assert {"Labels", "ScanCatalog", "StemFeatures", "CatalogFeatures", "TrainDetector", "DetectStems",
            "DetectCatalog", "Calibrate", "ExtractShard", "Extract", "MeasureExtraction", "TrainSeparator",
            "Evaluate", "DetectorReport"} <= set(ran)
    extract = tasks.Extract()
    manifest = extract.manifest
    assert manifest["inputs"]["calibration"] == tasks.Calibrate().key
    assert manifest["params"] == {"min_seconds": 5.0} and manifest["code_version"] and manifest["packages"]
    index = read_index(extract.folder / "index")
    assert manifest["counts"]["excerpts"] == len(index)
    for row in index.itertuples():
        assert file_checksum(extract.dataset.audio_file(row)) == row.audio_checksum
        assert row.duration_s >= 5.0 and row.prob_min >= row.threshold
    comparison = pd.read_csv(tasks.Evaluate().folder / "comparison.csv", index_col=0)
    from pipeline.separation.evaluation import REFERENCE_ROWS

    # The reference rows, then luigi.cfg's runs (TasNet +/- remix, adversarial, contrastive).
    assert list(comparison.index) == [*REFERENCE_ROWS, *tasks.Evaluate().runs]


def test_bad_catalog_files_are_recorded_rejections(demo, run_pipeline):
    import tasks
    from pipeline.mining.schema import read_rejects

    run_pipeline("Extract")
    rejects = read_rejects(tasks.Extract().folder)
    reasons = dict(zip(rejects["path"].map(lambda p: p.rsplit("/", 1)[-1]), rejects["reason"]))
    assert "empty" in reasons["empty.wav"]
    assert "not an audio file" in reasons["not_audio.mp3"]
    assert "truncated" in reasons["truncated.flac"] or "corrupt" in reasons["truncated.flac"]


def test_unchanged_rerun_does_nothing(demo, run_pipeline):
    run_pipeline("All")
    assert run_pipeline("All") == []


def test_new_catalog_tracks_run_only_their_shards(demo, run_pipeline):
    import tasks

    run_pipeline("Extract")
    before = {p.name: p.stat().st_mtime_ns for p in (tasks.Extract().folder / "index").rglob("*.parquet")}
    added = demo / "demo" / "catalog" / "added"
    added.mkdir()
    source = sorted((demo / "demo" / "catalog").rglob("*.wav"))[0]
    for i in range(2):  # new content (a gain change) so the track ids are new
        data, rate = sf.read(source)
        sf.write(added / f"new{i}.wav", data * (0.5 + 0.1 * i), rate)
    ran = run_pipeline("Extract")
    assert sorted(ran) == ["CatalogFeatures", "DetectCatalog", "Extract", "ExtractShard", "ScanCatalog"]
    after = {p.name: p.stat().st_mtime_ns for p in (tasks.Extract().folder / "index").rglob("*.parquet")}
    assert all(after[name] == mtime for name, mtime in before.items() if name in after)
    shutil.rmtree(added)


def test_a_changed_target_reruns_only_calibration_and_extraction(demo, run_pipeline, monkeypatch):
    run_pipeline("Extract")
    config = luigi.configuration.get_config()
    config.set("Calibrate", "target_db", "-25")
    try:
        ran = set(run_pipeline("Extract"))
    finally:
        config.set("Calibrate", "target_db", "-20")
    assert {"Calibrate", "Extract", "ExtractShard"} <= ran
    assert ran <= {"Calibrate", "Extract", "ExtractShard", "ScanCatalog"}
    assert not ran & {"StemFeatures", "CatalogFeatures", "TrainDetector", "DetectStems", "DetectCatalog"}


def test_excerpts_hold_the_original_samples(demo, run_pipeline):
    import tasks

    run_pipeline("Extract")
    index = read_index(tasks.Extract().folder / "index")
    if index.empty:
        pytest.skip("the tiny detector found no excerpt on this corpus")
    row = index.iloc[0]
    excerpt, rate = sf.read(tasks.Extract().dataset.audio_file(row), always_2d=True)
    original, original_rate = sf.read(row.catalog_path, always_2d=True, start=int(row.start_sample),
                                      stop=int(row.end_sample))
    assert rate == original_rate == row.sample_rate and excerpt.shape == original.shape
    np.testing.assert_allclose(excerpt, original, atol=2 ** -15)
