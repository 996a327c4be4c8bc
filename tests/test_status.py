"""`silentmine status`: each stage of the DAG complete, partial or missing, and why, on tiny data."""

from __future__ import annotations

import json

import luigi
import pandas as pd


def _status() -> dict:
    from tasks.graph import pipeline_status

    return {s.description.task: s for s in pipeline_status()}


def _tasks_of(family: str) -> list:
    """The configured DAG's tasks of ``family`` (shard tasks appear once the scan is complete)."""
    import tasks
    from tasks.graph import walk
    from tasks.inputs import forget_inputs

    forget_inputs()
    return [t for t in walk(tasks.All()) if t.task_family == family]


def _build(jobs: list) -> None:
    assert luigi.build(jobs, local_scheduler=True, workers=1)


def test_status_says_complete_partial_missing_and_why(configured, run_pipeline, capsys):
    status = _status()
    assert {s.state for s in status.values()} == {"missing"}
    assert any("no earlier output of this stage" in line for line in status["ScanCatalog"].why)
    assert any("catalog scan has not run" in line for line in status["Extract"].why)
    assert "CatalogFeatures" not in status  # per-shard stages are known once the scan exists

    run_pipeline("ScanCatalog")
    run_pipeline("Labels")
    status = _status()
    assert status["ScanCatalog"].state == status["Labels"].state == "complete"
    features = status["CatalogFeatures"]
    assert (features.state, features.shards_done, features.shards_total) == ("missing", 0, 4)

    _build(_tasks_of("CatalogFeatures")[:2])
    features = _status()["CatalogFeatures"]
    assert (features.state, features.shards_done, features.shards_total) == ("partial", 2, 4)
    assert "2 of 4 shards not run" in features.why

    run_pipeline("Calibrate")
    _build(_tasks_of("ExtractShard")[:1])  # the first shard of the D_i (its features are done)
    status = _status()
    assert status["Calibrate"].state == "complete"
    assert (status["ExtractShard"].state, status["ExtractShard"].shards_done) == ("partial", 1)
    old_calibration = status["Calibrate"].description.key

    configured("Calibrate", "target_db", -12)
    status = _status()
    calibrate = status["Calibrate"]
    assert calibrate.state == "missing" and calibrate.description.key != old_calibration
    assert "  parameter target_db: -10.0 -> -12.0" in calibrate.why
    assert not any(line.strip().startswith(("parameter", "input")) and "target_db" not in line
                   for line in calibrate.why)  # nothing else differs
    for upstream in ("Labels", "TrainDetector", "DetectStems", 'StemFeatures(split=calibration)', "ScanCatalog"):
        assert status[upstream].state == "complete", upstream
    shard = status["ExtractShard"]  # depends on the calibration: a new store folder, nothing in it yet
    assert (shard.state, shard.shards_done, shard.shards_total) == ("missing", 0, 4)
    new_calibration = calibrate.description.key
    assert f'  input calibration (Calibrate): "{old_calibration}" -> "{new_calibration}"' in shard.why
    assert "input calibration (Calibrate) is missing" in shard.why
    dependants = [s for s in status.values() if "Calibrate" in s.description.input_families.values()]
    assert dependants and all(s.state != "complete" for s in dependants)

    from tasks.cli import main

    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    listed = {entry["task"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(status)
    assert listed["Calibrate"]["state"] == "missing" and listed["Calibrate"]["key"] == new_calibration
    assert (listed["CatalogFeatures"]["shards_done"], listed["CatalogFeatures"]["shards_total"]) == (2, 4)
    assert listed["Labels"]["why"] == [] and listed["Labels"]["state"] == "complete"

    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert "parameter target_db: -10.0 -> -12.0" in table and "partial 2/4" in table


def test_status_reads_no_audio_and_no_per_shard_table(configured, run_pipeline, monkeypatch):
    import soundfile

    import pipeline.audio.io as audio_io
    from pipeline.corpora import catalog

    run_pipeline("ScanCatalog")

    def refuse(*args, **kwargs):
        raise AssertionError("status opened an audio file")

    for module, name in ((soundfile, "SoundFile"), (soundfile, "read"), (audio_io, "probe"), (audio_io, "load"),
                         (audio_io, "stream"), (audio_io, "file_checksum"), (catalog, "file_checksum")):
        monkeypatch.setattr(module, name, refuse)
    reads = []
    read_parquet = pd.read_parquet

    def recording(path, *args, **kwargs):
        reads.append((str(path), kwargs.get("filters")))
        return read_parquet(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_parquet", recording)
    status = _status()
    assert status["CatalogFeatures"].shards_total == 4
    assert all(filters is None for _, filters in reads), reads  # no per-shard read of the scan
    assert len([path for path, _ in reads if path.endswith("tracks.parquet")]) <= 2, reads  # not once per shard
