"""verify_run finds every way an extraction run folder can disagree with its index and manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import soundfile as sf

from fixtures_extraction import make_extraction_run
from pipeline.mining.schema import INDEX_SCHEMA, REJECTS_SCHEMA, read_index
from pipeline.storage.outputs import write_parquet_atomic
from pipeline.mining.schema import read_rejects
from pipeline.mining.verify import Problem, list_audio_files, verify_cli, verify_run


@pytest.fixture
def run(tmp_path):
    run_dir, _, catalog_root, _ = make_extraction_run(tmp_path)
    return run_dir, catalog_root


def rewrite_index(run_dir: Path, frame: pd.DataFrame) -> None:
    """Replace the run's index with ``frame`` (one part per source, hive layout)."""
    shutil.rmtree(run_dir / "index")
    schema = pa.schema([f for f in INDEX_SCHEMA if f.name != "source"])
    for source, part in frame.groupby("source"):
        table = pa.Table.from_pandas(part.drop(columns="source"), schema=schema, preserve_index=False)
        write_parquet_atomic(table, run_dir / "index" / f"source={source}" / "part-test.parquet")


def kinds(problems: list[Problem]) -> list[tuple[str, str]]:
    return sorted((p.kind, p.subject) for p in problems)


def test_fixture_run_verifies(run, capsys):
    run_dir, _ = run
    assert verify_run(run_dir) == []
    assert verify_cli(run_dir) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [out[-1]] and out[-1].startswith("verify: OK (12 excerpts [bass=3, drums=6, vocals=3]")
    assert "3 catalog files re-hashed" in out[-1] and "2 rejects" in out[-1]
    assert len(list_audio_files(run_dir)) == 12
    assert list(read_rejects(run_dir).columns) == [f.name for f in REJECTS_SCHEMA]


def test_deleted_excerpt_is_named(run, capsys):
    run_dir, _ = run
    row = read_index(run_dir / "index").iloc[4]
    (run_dir / row.audio_path).unlink()
    problems = verify_run(run_dir)
    assert kinds(problems) == [("missing_audio", row.excerpt_id)]
    assert row.audio_path in problems[0].message
    assert verify_cli(run_dir) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"missing_audio: {row.excerpt_id}:")
    assert lines[-1].startswith("verify: 1 problem in")


def test_altered_excerpt_fails_its_checksum(run):
    run_dir, _ = run
    row = read_index(run_dir / "index").iloc[0]
    path = run_dir / row.audio_path
    audio, rate = sf.read(path, always_2d=True)
    sf.write(path, audio * 0.5, rate, format="FLAC", subtype="PCM_16")  # same header, other samples
    assert kinds(verify_run(run_dir)) == [("audio_checksum", row.excerpt_id)]


def test_excerpt_header_must_match_the_index(run):
    run_dir, _ = run
    index = read_index(run_dir / "index")
    index.loc[2, "end_sample"] += 7  # the file holds 7 samples fewer than the index says
    rewrite_index(run_dir, index)
    problems = verify_run(run_dir)
    assert kinds(problems) == [("audio_header", index.loc[2, "excerpt_id"])]
    assert "index says" in problems[0].message


def test_removed_index_row_leaves_an_orphan_and_wrong_counts(run):
    run_dir, _ = run
    index = read_index(run_dir / "index")
    dropped = index[index["source"] == "vocals"].iloc[0]
    rewrite_index(run_dir, index[index["excerpt_id"] != dropped.excerpt_id])
    assert kinds(verify_run(run_dir)) == [("manifest_count", "excerpts"), ("manifest_count", "excerpts_vocals"),
                                          ("orphan_audio", dropped.audio_path)]


def test_changed_catalog_file_is_named_once(run):
    run_dir, catalog_root = run
    index = read_index(run_dir / "index")
    changed = index.iloc[0].catalog_path
    with open(changed, "ab") as fh:
        fh.write(b"\0\0")
    problems = verify_run(run_dir)
    assert kinds(problems) == [("catalog_checksum", changed)]
    assert f"{int((index['catalog_path'] == changed).sum())} excerpts" in problems[0].message
    assert verify_run(run_dir, check_catalog=False) == []


def test_missing_catalog_file(run):
    run_dir, _ = run
    gone = read_index(run_dir / "index").iloc[-1].catalog_path
    Path(gone).unlink()
    assert kinds(verify_run(run_dir)) == [("missing_catalog", gone)]


def test_unindexed_audio_file_is_an_orphan(run):
    run_dir, _ = run
    source = run_dir / read_index(run_dir / "index").iloc[0].audio_path
    stray = run_dir / "audio" / "bass" / "zz" / "stray.flac"
    stray.parent.mkdir(parents=True)
    shutil.copyfile(source, stray)
    assert kinds(verify_run(run_dir)) == [("orphan_audio", "audio/bass/zz/stray.flac")]


def test_temporary_files_are_ignored(run):
    run_dir, _ = run
    folder = run_dir / "audio" / "drums"
    (folder / ".x.flac.tmp-123-abcd1234").write_bytes(b"partial")
    temporary_dir = folder / ".ab.tmp-9-00ff00ff"
    temporary_dir.mkdir()
    (temporary_dir / "inside.flac").write_bytes(b"partial")
    (run_dir / "index" / "source=bass" / ".part-x.parquet.tmp-1-deadbeef").write_bytes(b"junk")
    assert verify_run(run_dir) == []


def test_duplicate_ids_and_bad_paths(run):
    run_dir, _ = run
    index = read_index(run_dir / "index")
    twice = index.iloc[[0]]
    original_path = index.loc[1, "audio_path"]
    index.loc[1, "audio_path"] = "../elsewhere.flac"
    rewrite_index(run_dir, pd.concat([index, twice], ignore_index=True))
    found = kinds(verify_run(run_dir))
    assert ("duplicate_id", twice.iloc[0].excerpt_id) in found
    assert ("bad_audio_path", index.loc[1, "excerpt_id"]) in found
    assert ("manifest_count", "excerpts") in found and ("manifest_count", f"excerpts_{twice.iloc[0].source}") in found
    # the file the bad row used to name is now unindexed
    assert [s for k, s in found if k == "orphan_audio"] == [original_path]


def test_manifest_is_required_and_counts_rejects(run):
    run_dir, _ = run
    extra = pd.DataFrame([{"path": "/x.wav", "track_id": "", "stage": "extract", "reason": "boom"}])
    write_parquet_atomic(pa.Table.from_pandas(extra, schema=REJECTS_SCHEMA, preserve_index=False),
                         run_dir / "rejects" / "part-extra.parquet")
    problems = verify_run(run_dir)
    assert kinds(problems) == [("manifest_count", "rejects")]
    assert "counts 2, there are 3" in problems[0].message
    (run_dir / "manifest.json").unlink()
    assert kinds(verify_run(run_dir)) == [("missing_manifest", "manifest.json")]


def test_unreadable_index_and_missing_folder(run, tmp_path):
    run_dir, _ = run
    part = next((run_dir / "index" / "source=drums").glob("part-*.parquet"))
    n_rows = len(pd.read_parquet(part))
    part.write_bytes(np.random.default_rng(0).bytes(64))
    found = kinds(verify_run(run_dir))
    assert found[0] == ("index_unreadable", part.relative_to(run_dir).as_posix())
    # the lost rows' excerpts become orphans and the counts disagree
    assert [k for k, _ in found].count("orphan_audio") == n_rows
    assert ("manifest_count", "excerpts_drums") in found
    with pytest.raises(FileNotFoundError, match="does not exist"):
        verify_run(tmp_path / "nowhere")
