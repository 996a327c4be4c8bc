"""The run journal: one line per stage run, one file per process, failures included."""

from __future__ import annotations

import json
import os
import time

import luigi
import pytest

from pipeline.storage import journal
from pipeline.storage.outputs import StageResult
from tasks.base import ShardStage, Stage


class _Sleep(Stage):
    """Sleeps ``seconds`` inside build() and writes one file."""

    stage_name = "journal_test"
    seconds = luigi.FloatParameter(default=0.05)
    fail = luigi.BoolParameter(default=False)

    def build(self, folder):
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("broken on purpose")
        (folder / "out.txt").write_text("ok")
        return StageResult({"items": 3}, ["not journalled"])


class _Shard(ShardStage):
    stage_name = "journal_shards"

    def build(self, folder):
        return StageResult({"tracks": 2})


def _build(*tasks) -> bool:
    return luigi.build(list(tasks), local_scheduler=True, workers=1)


def test_stage_runs_are_journalled_once_with_body_time(luigi_config, tmp_path):
    assert _build(_Sleep(seconds=0.2), _Shard(shard=4, shard_key="k4", tracks_file="unused"))
    assert _build(_Sleep(seconds=0.2))  # complete: no second line
    frame = journal.read_journal(tmp_path / "data")
    assert sorted(frame["family"]) == ["_Shard", "_Sleep"]
    sleep = frame[frame["family"] == "_Sleep"].iloc[0]
    assert sleep["status"] == "done" and sleep["key"] == _Sleep(seconds=0.2).key
    assert 0.2 <= sleep["body_s"] <= sleep["wall_s"] == pytest.approx(sleep["finished"] - sleep["started"], abs=1e-3)
    assert sleep["counts"] == {"items": 3} and sleep["pid"] == os.getpid()
    shard = frame[frame["family"] == "_Shard"].iloc[0]
    assert (shard["shard"], shard["shard_key"], shard["counts"]) == (4, "k4", {"tracks": 2})
    files = list((tmp_path / "data" / "journal").glob("*.jsonl"))
    assert [f.name for f in files] == [journal.journal_path(tmp_path / "data").name]
    assert files[0].name.startswith(f"{sleep['host']}-{os.getpid()}-")


def test_failures_are_journalled_and_torn_lines_skipped(luigi_config, tmp_path):
    assert not _build(_Sleep(seconds=0.01, fail=True))
    path = journal.journal_path(tmp_path / "data")
    with open(path, "a") as fh:  # a process killed in the middle of a line
        fh.write('{"stage": "cut')
    other = path.with_name("otherhost-1-20200101T000000.jsonl")  # another worker's file
    other.write_text(json.dumps({"stage": "x", "family": "X", "status": "done", "started": 1.0}) + "\n")
    frame = journal.read_journal(tmp_path / "data")
    assert list(frame["family"]) == ["X", "_Sleep"]
    failed = frame.iloc[1]
    assert failed["status"] == "failed" and "broken on purpose" in failed["error"]
    assert not (_Sleep(seconds=0.01, fail=True).folder / "manifest.json").exists()


def test_reading_an_empty_data_root(tmp_path):
    frame = journal.read_journal(tmp_path)
    assert frame.empty and list(frame.columns) == journal.COLUMNS
