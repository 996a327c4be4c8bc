"""Reject kinds are named where an error is raised and stored as a column, never read from wording."""

import pandas as pd
import pytest

from pipeline import rejects
from pipeline.audio.io import AudioError, load
from pipeline.corpora.catalog import listing, scan
from pipeline.mining.datasets import rejects_summary


def test_an_unknown_kind_is_refused_and_every_reject_error_has_one():
    with pytest.raises(ValueError, match="unknown reject kind"):
        rejects.Rejected("bad", kind="strange")
    assert AudioError("no reason given").kind == rejects.OTHER
    assert rejects.kind_of(AudioError("x", kind=rejects.EMPTY)) == rejects.EMPTY
    assert rejects.kind_of(ValueError("x")) == rejects.OTHER


def test_decoding_and_scanning_set_the_kind_where_they_reject(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_bytes(b"this is not audio at all " * 40)
    with pytest.raises(AudioError) as raised:
        load(tmp_path / "text.mp3")
    assert raised.value.kind == rejects.NOT_AUDIO
    (tmp_path / "copy.mp3").write_bytes((tmp_path / "text.mp3").read_bytes())
    tracks, rejected, _ = scan(listing(tmp_path), shard_size=4)
    kinds = dict(zip(rejected["path"].map(lambda p: p.rsplit("/", 1)[-1]), rejected["kind"]))
    assert kinds == {"empty.wav": rejects.EMPTY, "text.mp3": rejects.DUPLICATE} or \
        kinds == {"empty.wav": rejects.EMPTY, "copy.mp3": rejects.DUPLICATE}
    assert len(tracks) == 1


def test_the_summary_counts_the_kind_column_whatever_the_reason_says():
    table = pd.DataFrame({"path": ["a", "b", "c"], "track_id": ["", "", ""], "stage": ["scan", "features", "features"],
                          "kind": [rejects.EMPTY, rejects.CORRUPT, rejects.CORRUPT],
                          "reason": ["reworded entirely", "x", "y"]})
    by_stage, by_kind, lines = rejects_summary(table)
    assert by_stage == {"scan": 1, "features": 2}
    assert by_kind == {rejects.CORRUPT: 2, rejects.EMPTY: 1}
    assert lines[0].startswith("rejects: 3 files")
