"""The whole DAG on the tiny demo corpus: outputs, reruns, incremental catalogs, rejects."""

from __future__ import annotations

import os
import shutil

import luigi
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.audio.io import file_checksum
from pipeline.mining.schema import read_index

pytestmark = pytest.mark.slow

# Tiny settings: every stage runs for real, on a few seconds of audio and tiny models.
SETTINGS = {
    "ScanCatalog": {"shard_size": 3},
    "TrainDetector": {"width": 0.0625, "epochs": 2, "patience": 2, "crop_seconds": 3.0},
    # loose calibration, so that the tiny detector extracts something from the tiny catalog
    "Calibrate": {"min_windows": 10, "target_fraction": 0.4, "target_db": -10,
                  "splits": '["valid", "calibration"]'},
    # luigi.cfg's TasNet in mono: museval's projection filters, most of Evaluate's cost, solve a
    # system 8 times smaller than in stereo (stereo scoring is test_evaluation's)
    "TrainSeparator": {"channels": 4, "depth": 3, "epochs": 1, "batches_per_epoch": 2, "batch_size": 2,
                       "window_s": 1.0, "lr_decay_every": 1,
                       "model_config": '{"filters": 32, "lstm_layers": 2, "hidden": 32, "sample_rate": 16000, '
                                       '"consistency": true, "audio_channels": 1}'},
    "Evaluate": {"max_tracks": 1},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_demo, luigi_options):
    """The tiny demo corpus, and luigi.cfg pointed at it (restored afterwards)."""
    root = tmp_path_factory.mktemp("pipeline")
    tiny_demo(root / "demo")
    options = {"silentmine": {"data_root": root / "data", "stem_root": root / "demo" / "stems",
                              "catalog": root / "demo" / "catalog", "threads": 2,
                              "catalog_truth": root / "demo" / "catalog_truth.parquet"}, **SETTINGS}
    with luigi_options(options):
        yield root


def test_all_runs_and_every_output_says_what_made_it(demo, run_pipeline):
    import tasks

    ran = run_pipeline("All")
    assert {"Labels", "ScanCatalog", "StemFeatures", "CatalogFeatures", "TrainDetector", "DetectStems",
            "DetectCatalog", "Calibrate", "ExtractShard", "Extract", "MeasureExtraction", "TrainSeparator",
            "Evaluate", "DetectorReport"} <= set(ran)
    # The mining chain goes first (tasks.extract.MINING_PRIORITY): in this cold run the shards
    # are dynamic dependencies, met after the plain training runs were scheduled, and still
    # every extraction ends before the first training run.
    last_extraction = max(i for i, family in enumerate(ran) if family in ("ExtractShard", "Extract"))
    assert last_extraction < ran.index("TrainSeparator"), ran
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


def test_a_detector_seed_mines_d_i_of_its_own_beside_the_default(demo, run_pipeline):
    """What ``[Evaluate] repeat_mining`` asks for each seed: another detector, trained under that
    seed on the same features, its calibration and its D_i, under keys of their own; the default
    detector's outputs are left as they were."""
    import tasks

    run_pipeline("Extract")
    ran = run_pipeline("Extract", detector_seed=1)
    assert set(ran) == {"TrainDetector", "DetectStems", "Calibrate", "DetectCatalog", "ExtractShard", "Extract"}
    detector, other = tasks.TrainDetector(detector_seed=1), tasks.Extract(detector_seed=1)
    assert detector.manifest["params"]["seed"] == 1 and detector.key != tasks.TrainDetector().key
    assert other.key != tasks.Extract().key and other.manifest["inputs"]["detector"] == detector.key
    assert other.manifest["inputs"]["calibration"] == tasks.Calibrate(detector_seed=1).key
    index = read_index(other.folder / "index")
    assert set(index["detector_key"]) <= {detector.key}
    assert run_pipeline("Extract") == []


def test_unchanged_rerun_does_nothing(demo, run_pipeline):
    run_pipeline("All")
    assert run_pipeline("All") == []


def test_new_catalog_tracks_run_only_their_shards(demo, run_pipeline):
    import tasks
    from pipeline.mining.datasets import EMPTY_INDEX_PART

    run_pipeline("Extract")

    def shard_parts():  # the store's index parts linked into the view (not the view's own empty part)
        folder = tasks.Extract().folder
        return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in (folder / "index").rglob("*.parquet")
                if p.relative_to(folder).as_posix() != EMPTY_INDEX_PART}

    before = shard_parts()
    added = demo / "demo" / "catalog" / "added"
    added.mkdir()
    source = sorted((demo / "demo" / "catalog").rglob("*.wav"))[0]
    for i in range(2):  # new content (a gain change) so the track ids are new
        data, rate = sf.read(source)
        sf.write(added / f"new{i}.wav", data * (0.5 + 0.1 * i), rate)
    ran = run_pipeline("Extract")
    assert sorted(ran) == ["CatalogFeatures", "DetectCatalog", "Extract", "ExtractShard", "ScanCatalog"]
    after = shard_parts()
    assert all(after[name] == mtime for name, mtime in before.items() if name in after)
    shutil.rmtree(added)


def test_a_changed_target_reruns_only_calibration_and_extraction(demo, run_pipeline, monkeypatch):
    run_pipeline("Extract")
    config = luigi.configuration.get_config()
    config.set("Calibrate", "target_db", "-25")
    try:
        ran = set(run_pipeline("Extract"))
    finally:
        config.set("Calibrate", "target_db", str(SETTINGS["Calibrate"]["target_db"]))
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


def _rules_and_measure(task) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(task.folder / "measure.csv"), pd.read_csv(task.folder / "rules.csv")


def test_measure_and_rules_count_true_runs_with_the_configured_min_seconds(demo, run_pipeline, luigi_options,
                                                                           monkeypatch):
    # The tiny demo's truly silent runs (<= -30 dB) last 2 to 3 s: with 2 s extraction's rule
    # counts them, the default 5 s does not (a rule of 7 s is measured on hand-made tables in
    # test_options.py).
    import tasks
    from pipeline.threads import THREAD_VARIABLES
    from tasks.cli import main

    run_pipeline("MeasureExtraction")
    at_5 = _rules_and_measure(tasks.MeasureExtraction())
    for name in THREAD_VARIABLES:  # `silentmine run` sets the ones that are unset; put them back after
        monkeypatch.setenv(name, os.environ.get(name, "2"))
    assert main(["run", "MeasureExtraction", "--Extract-min-seconds", "2"]) == 0
    with luigi_options({"Extract": {"min_seconds": 2}}):
        measure = tasks.MeasureExtraction()
        assert measure.requires()["calibration_windows"].run_rule.min_seconds == 2.0
        at_2 = _rules_and_measure(measure)
    for measured, rules in (at_5, at_2):
        runs = measured.set_index("source")["n_true_runs"]
        for rule, table in rules.groupby("rule"):
            assert table.set_index("source")["n_true_runs"].to_dict() == runs.to_dict(), rule
    assert at_2[0]["n_true_runs"].sum() > at_5[0]["n_true_runs"].sum()


def test_the_scan_catalog_option_reaches_measure_and_audit(demo, run_pipeline, luigi_options, monkeypatch, tmp_path):
    import tasks
    import tasks.audit
    import tasks.measure

    run_pipeline("Audit")
    link = tmp_path / "catalog-link"
    link.symlink_to(demo / "demo" / "catalog")
    seen = {}
    for module, name in ((tasks.measure, "build_measure"), (tasks.audit, "build_audit")):
        original = getattr(module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen[_name] = kwargs.get("catalog_root", args[2] if len(args) > 2 else None)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    # [silentmine] catalog names another folder; the scan's option names the same catalog by another path
    with luigi_options({"silentmine": {"catalog": empty}, "ScanCatalog": {"catalog": link}}):
        assert run_pipeline("Audit") == []  # Measure and Audit are keyed by the scan's catalog: nothing to redo
        truth = tmp_path / "truth.parquet"
        truth.write_bytes((demo / "demo" / "catalog_truth.parquet").read_bytes())
        with luigi_options({"silentmine": {"catalog_truth": truth}}):
            assert {"MeasureExtraction", "Audit"} <= set(run_pipeline("Audit"))
    real = str((demo / "demo" / "catalog").resolve())
    assert {name: str(root) for name, root in seen.items()} == {"build_measure": real, "build_audit": real}
