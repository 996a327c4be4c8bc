"""Options that several stages share: extraction's run rule (one value, declared by Extract) and
the catalog's truth table (``[silentmine] catalog_truth``, never guessed from the working folder)."""

from __future__ import annotations

import dataclasses

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
