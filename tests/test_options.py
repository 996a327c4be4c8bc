"""Options that several stages share: extraction's run rule (one value, declared by Extract) and
the catalog's truth table (``[silentmine] catalog_truth``, never guessed from the working folder)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.mining.extraction import PAPER_RUN_RULE, RunRule


def test_a_run_rule_is_one_checked_value():
    assert PAPER_RUN_RULE == RunRule(5.0, 0) and PAPER_RUN_RULE.min_frames == 70
    assert RunRule(5.0, 3).strict == PAPER_RUN_RULE
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAPER_RUN_RULE.min_seconds = 7.0
    for bad in ({"min_seconds": 0.0}, {"min_seconds": float("nan")}, {"max_gap": -1}, {"max_gap": 1.5},
                {"max_gap": True}):
        with pytest.raises(ValueError):
            RunRule(**bad)


def test_the_run_rule_parameter_reads_and_writes_json():
    from tasks.base import RunRuleParameter

    parameter = RunRuleParameter()
    rule = parameter.parse('{"min_seconds": 7, "max_gap": 2}')
    assert rule == RunRule(7.0, 2) and isinstance(rule.min_seconds, float)
    assert parameter.parse(parameter.serialize(rule)) == rule
    assert parameter.normalize({"min_seconds": 7, "max_gap": 2}) == rule
    with pytest.raises(ValueError, match="not"):
        parameter.parse('{"min_seconds": 7, "gap": 2}')


def test_extract_passes_its_rule_to_its_calibration_and_measurement(luigi_config):
    import tasks

    luigi_config("Extract", "min_seconds", 7)
    luigi_config("Extract", "max_gap", 2)
    extract = tasks.Extract()
    assert extract.run_rule == RunRule(7.0, 2) == extract.calibration_task().run_rule
    assert extract.key_params() == {"min_seconds": 7.0, "max_gap": 2}
    assert {task.run_rule for name, task in tasks.MeasureExtraction().requires().items()
            if name.startswith("calibration_")} == {RunRule(7.0, 2)}
    assert tasks.Calibrate().run_rule == PAPER_RUN_RULE  # on its own: the paper's


def _families(root) -> set[str]:
    from tasks.graph import walk

    return {task.task_family for task in walk(root)}


def test_the_truth_table_is_an_option_not_a_file_in_the_working_folder(configured, tmp_path, monkeypatch):
    import tasks

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "demo").mkdir(parents=True)
    (tmp_path / "data" / "demo" / "catalog_truth.parquet").write_bytes(b"")  # where the demo's used to be found
    assert "MeasureExtraction" not in _families(tasks.All())
    no_truth = tasks.Audit().key

    configured("silentmine", "catalog_truth", tmp_path / "data" / "demo" / "catalog_truth.parquet")
    assert {"MeasureExtraction", "Audit"} <= _families(tasks.All())
    assert tasks.Audit().key != no_truth

    configured("silentmine", "catalog_truth", tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="catalog_truth"):
        tasks.All().requires()


def test_the_demo_command_names_the_demo_truth(luigi_config, tmp_path, monkeypatch):
    import pipeline.corpora.demo
    import tasks.cli
    from tasks.base import config

    seen = {}
    luigi_config("silentmine", "stem_root", tmp_path / "demo" / "stems")
    monkeypatch.setattr(pipeline.corpora.demo, "generate", lambda *args, **kwargs: None)
    monkeypatch.setattr(tasks.cli, "run_tasks", lambda *args, **kwargs: seen.update(truth=config().catalog_truth))
    assert tasks.cli.main(["demo"]) == 1  # the stubbed run "fails"
    assert seen["truth"] == str(tmp_path / "demo" / "catalog_truth.parquet")


def test_measure_and_rules_count_true_runs_with_one_rule(tmp_path, truth_table):
    """One file whose bass is truly silent (-40 dB) for 85 grid windows (6.016 s) and loud
    elsewhere: a true run for a rule of 5 s, none for 7 s, in measure.csv and rules.csv alike."""
    from pipeline.mining.ground_truth import build_measure
    from pipeline.sources import HOP_S, SOURCES

    n = 200
    bass = np.zeros(n)
    bass[20:105] = -40.0
    truth_table("song.wav", {"bass": bass}, n).to_parquet(tmp_path / "truth.parquet")
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (tmp_path / "run").mkdir()  # a D_i without excerpts
    pd.DataFrame({"track_id": "t1", "frame": np.arange(n, dtype=np.int32), "start_s": np.arange(n) * HOP_S,
                  **{f"p_{s}": np.zeros(n, np.float32) for s in SOURCES}}).to_parquet(tmp_path / "p.parquet")
    pd.DataFrame({"track_id": ["t1"], "path": [str(catalog / "song.wav")]}).to_parquet(tmp_path / "tracks.parquet")
    pd.DataFrame({"source": list(SOURCES), "calibratable": True, "threshold": 0.5}).to_parquet(tmp_path / "t.parquet")
    true_runs = {}
    for seconds in (5.0, 7.0):
        out = tmp_path / f"measure-{seconds:g}"
        out.mkdir()
        build_measure(tmp_path / "run", tmp_path / "truth.parquet", catalog, out, [tmp_path / "p.parquet"],
                      tmp_path / "tracks.parquet", {"windows": tmp_path / "t.parquet"}, run_rule=RunRule(seconds))
        measured = pd.read_csv(out / "measure.csv").set_index("source")["n_true_runs"]
        rules = pd.read_csv(out / "rules.csv").set_index("source")["n_true_runs"]
        assert measured.to_dict() == rules.to_dict()
        true_runs[seconds] = measured["bass"]
    assert true_runs == {5.0: 1, 7.0: 0}
