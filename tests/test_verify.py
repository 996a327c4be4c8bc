"""verify_run finds every way a D_i (view, shard store, audio) can disagree with its index, markers
and manifest; check_feature_shard and check_checkpoint cover the other stages' outputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from fixtures_extraction import make_extraction_run

from pipeline.features.store import index_path_for, write_feature_shard
from pipeline.mining.datasets import DatasetRun
from pipeline.mining.extraction import PART_SCHEMA
from pipeline.mining.schema import read_rejects
from pipeline.mining.verify import (
    Problem,
    check_checkpoint,
    check_feature_shard,
    list_audio_files,
    verify_cli,
    verify_run,
)
from pipeline.rejects import REJECTS_SCHEMA
from pipeline.storage.outputs import write_parquet_atomic


@pytest.fixture
def run(tmp_path):
    run_dir, _, catalog_root, _ = make_extraction_run(tmp_path)
    return run_dir, catalog_root


def edit_index(run_dir: Path, edit) -> None:
    """Apply ``edit(rows with source) -> rows`` to every index part, in the store and in the view
    (the view's part stays a link of the store's, as gathering leaves it)."""
    dataset = DatasetRun(run_dir)
    for part in sorted(dataset.index_dir.glob("source=*/part-*.parquet")):
        rel = part.relative_to(run_dir)
        rows = pq.read_table(part).to_pandas().assign(source=part.parent.name.removeprefix("source="))
        edited = edit(rows)  # parts keep the source column (PART_SCHEMA)
        write_parquet_atomic(pa.Table.from_pandas(edited, schema=PART_SCHEMA, preserve_index=False),
                             dataset.store.folder / rel)
        part.unlink()
        os.link(dataset.store.folder / rel, part)


def kinds(problems: list[Problem]) -> list[tuple[str, str]]:
    return sorted((p.kind, p.subject) for p in problems)


def shard_of(run_dir: Path, excerpt_id: str) -> str:
    """The key of the shard whose index part holds ``excerpt_id``."""
    for part in DatasetRun(run_dir).index_dir.glob("source=*/part-*.parquet"):
        if excerpt_id in set(pq.read_table(part, columns=["excerpt_id"]).column(0).to_pylist()):
            return part.stem.removeprefix("part-")
    raise KeyError(excerpt_id)


def test_fixture_run_verifies(run, capsys):
    run_dir, _ = run
    assert verify_run(run_dir) == []
    assert verify_cli(run_dir) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [out[-1]] and out[-1].startswith("verify: OK (12 excerpts [bass=3, drums=6, vocals=3] of 2 shards")
    assert "3 catalog files re-hashed" in out[-1] and "2 rejects" in out[-1] and "12 audio files" in out[-1]
    dataset = DatasetRun(run_dir)
    assert len(list_audio_files(dataset.store.folder)) == 12 and not (run_dir / "audio").exists()
    assert list(read_rejects(run_dir).columns) == [f.name for f in REJECTS_SCHEMA]


def test_deleted_excerpt_is_named(run, capsys):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    row = dataset.index().iloc[4]
    dataset.audio_file(row).unlink()
    problems = verify_run(run_dir)
    assert kinds(problems) == [("missing_audio", row.excerpt_id)]
    assert row.audio_path in problems[0].message
    assert verify_cli(run_dir) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"missing_audio: {row.excerpt_id}:")
    assert lines[-1].startswith("verify: 1 problem in")


def test_deleted_index_part_of_a_shard_is_named(run, capsys):
    run_dir, _ = run
    part = sorted((run_dir / "index" / "source=drums").glob("part-*.parquet"))[0]
    rel = part.relative_to(run_dir).as_posix()
    part.unlink()
    found = kinds(verify_run(run_dir))
    assert ("missing_index_part", rel) in found
    assert ("manifest_count", "excerpts_drums") in found  # the D_i lost those rows
    assert verify_cli(run_dir) == 1
    assert f"missing_index_part: {rel}: shard {part.stem.removeprefix('part-')}'s index part is missing from the view" \
        in capsys.readouterr().out


def test_index_part_missing_from_the_store_is_named(run):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    rel = sorted(p.relative_to(run_dir) for p in dataset.index_dir.glob("source=bass/*.parquet"))[0]
    (dataset.store.folder / rel).unlink()  # the view still reads its link; the store lost the part
    prefix = dataset.store.folder.relative_to(dataset.data_root).as_posix()
    assert kinds(verify_run(run_dir)) == [("missing_index_part", f"{prefix}/{rel.as_posix()}")]


def test_marker_counts_must_agree_with_the_shards_files(run, capsys):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    key = dataset.shard_keys[1]
    marker_path = dataset.store.marker_path(key)
    marker = json.loads(marker_path.read_text())
    marker["counts"]["excerpts_bass"] += 1
    marker_path.write_text(json.dumps(marker))
    problems = verify_run(run_dir)
    assert kinds(problems) == [("marker_count", key)]
    assert "counts excerpts_bass = 2, its files hold 1" in problems[0].message
    assert verify_cli(run_dir) == 1
    assert capsys.readouterr().out.startswith(f"marker_count: {key}:")


def test_a_listed_shard_needs_its_marker(run):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    key = dataset.shard_keys[0]
    dataset.store.marker_path(key).unlink()
    found = kinds(verify_run(run_dir))
    assert ("missing_marker", key) in found
    # its parts are now named by no listed shard, its audio by no marker
    assert {kind for kind, _ in found} == {"missing_marker", "unexpected_part", "orphan_audio"}


def test_a_file_a_marker_names_must_exist(run):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    key = dataset.shard_keys[0]
    marker_path = dataset.store.marker_path(key)
    marker = json.loads(marker_path.read_text())
    marker["files"]["audio"].append("audio/bass/00/00000000-bass-0.flac")
    marker_path.write_text(json.dumps(marker))
    prefix = dataset.store.folder.relative_to(dataset.data_root).as_posix()
    found = kinds(verify_run(run_dir))
    assert ("missing_audio", f"{prefix}/audio/bass/00/00000000-bass-0.flac") in found
    assert ("marker_count", key) in found  # one more file named than rows


def test_a_view_part_that_is_not_the_stores_is_named(run):
    run_dir, _ = run
    part = sorted((run_dir / "rejects").glob("part-*.parquet"))[0]
    if part.name == "part-scan.parquet":
        part = sorted((run_dir / "rejects").glob("part-*.parquet"))[1]
    rows = pq.read_table(part).to_pandas()
    part.unlink()  # replaced by other content under the same name
    extra = pd.DataFrame([{"path": "/x.wav", "track_id": "", "stage": "extract", "kind": "other", "reason": "boom"}])
    write_parquet_atomic(pa.Table.from_pandas(pd.concat([rows, extra]), schema=REJECTS_SCHEMA, preserve_index=False),
                         part)
    found = kinds(verify_run(run_dir))
    assert ("part_differs", part.relative_to(run_dir).as_posix()) in found
    assert ("manifest_count", "rejects") in found


def test_altered_excerpt_fails_its_checksum(run):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    row = dataset.index().iloc[0]
    path = dataset.audio_file(row)
    audio, rate = sf.read(path, always_2d=True)
    sf.write(path, audio * 0.5, rate, format="FLAC", subtype="PCM_16")  # same header, other samples
    assert kinds(verify_run(run_dir)) == [("audio_checksum", row.excerpt_id)]


def test_excerpt_header_must_match_the_index(run):
    run_dir, _ = run
    target = DatasetRun(run_dir).index().iloc[2].excerpt_id

    def longer(rows):
        rows.loc[rows["excerpt_id"] == target, "end_sample"] += 7  # the file holds 7 samples fewer
        return rows

    edit_index(run_dir, longer)
    problems = verify_run(run_dir)
    assert kinds(problems) == [("audio_header", target)]
    assert "index says" in problems[0].message


def test_removed_index_row_leaves_an_orphan_and_wrong_counts(run):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    dropped = dataset.index("vocals").iloc[0]
    key = shard_of(run_dir, dropped.excerpt_id)
    edit_index(run_dir, lambda rows: rows[rows["excerpt_id"] != dropped.excerpt_id])
    found = kinds(verify_run(run_dir))
    assert set(found) == {("manifest_count", "excerpts"), ("manifest_count", "excerpts_vocals"),
                          ("marker_count", key), ("orphan_audio", dropped.audio_path)}


def test_changed_catalog_file_is_named_once(run, capsys):
    run_dir, catalog_root = run
    index = DatasetRun(run_dir).index()
    changed = index.iloc[0].catalog_path
    with open(changed, "ab") as fh:
        fh.write(b"\0\0")
    problems = verify_run(run_dir)
    assert kinds(problems) == [("catalog_checksum", changed)]
    assert f"{int((index['catalog_path'] == changed).sum())} excerpts" in problems[0].message
    assert "changed since extraction" in problems[0].message
    assert verify_run(run_dir, check_catalog=False) == []
    assert verify_cli(run_dir) == 1
    assert capsys.readouterr().out.startswith(f"catalog_checksum: {changed}:")


def test_missing_catalog_file(run):
    run_dir, _ = run
    gone = DatasetRun(run_dir).index().iloc[-1].catalog_path
    Path(gone).unlink()
    assert kinds(verify_run(run_dir)) == [("missing_catalog", gone)]


def test_audio_in_the_store_that_no_marker_names_is_an_orphan(run):
    run_dir, _ = run
    dataset = DatasetRun(run_dir)
    source = dataset.audio_file(dataset.index().iloc[0])
    stray = dataset.store.folder / "audio" / "bass" / "zz" / "stray.flac"
    stray.parent.mkdir(parents=True)
    shutil.copyfile(source, stray)
    prefix = dataset.store.folder.relative_to(dataset.data_root).as_posix()
    assert kinds(verify_run(run_dir)) == [("orphan_audio", f"{prefix}/audio/bass/zz/stray.flac")]


def test_temporary_files_are_ignored(run):
    run_dir, _ = run
    folder = DatasetRun(run_dir).store.folder / "audio" / "drums"
    (folder / ".x.flac.tmp-123-abcd1234").write_bytes(b"partial")
    temporary_dir = folder / ".ab.tmp-9-00ff00ff"
    temporary_dir.mkdir()
    (temporary_dir / "inside.flac").write_bytes(b"partial")
    (run_dir / "index" / "source=bass" / ".part-x.parquet.tmp-1-deadbeef").write_bytes(b"junk")
    assert verify_run(run_dir) == []


def test_duplicate_ids_and_bad_paths(run):
    run_dir, _ = run
    index = DatasetRun(run_dir).index()
    twice, bad = index.iloc[0], index.iloc[1]

    def damage(rows):
        rows.loc[rows["excerpt_id"] == bad.excerpt_id, "audio_path"] = "../elsewhere.flac"
        return pd.concat([rows, rows[rows["excerpt_id"] == twice.excerpt_id]], ignore_index=True)

    edit_index(run_dir, damage)
    found = kinds(verify_run(run_dir))
    assert ("duplicate_id", twice.excerpt_id) in found
    assert ("bad_audio_path", bad.excerpt_id) in found
    assert ("manifest_count", "excerpts") in found and ("manifest_count", f"excerpts_{twice.source}") in found
    assert ("marker_count", shard_of(run_dir, twice.excerpt_id)) in found
    # the file the bad row used to name now has no row
    assert [s for k, s in found if k == "orphan_audio"] == [bad.audio_path]


def test_a_part_no_shard_names_is_unexpected(run):
    run_dir, _ = run
    extra = pd.DataFrame([{"path": "/x.wav", "track_id": "", "stage": "extract", "kind": "other", "reason": "boom"}])
    write_parquet_atomic(pa.Table.from_pandas(extra, schema=REJECTS_SCHEMA, preserve_index=False),
                         run_dir / "rejects" / "part-extra.parquet")
    problems = verify_run(run_dir)
    assert kinds(problems) == [("manifest_count", "rejects"), ("unexpected_part", "rejects/part-extra.parquet")]
    assert "counts 2, there are 3" in [p for p in problems if p.kind == "manifest_count"][0].message
    (run_dir / "manifest.json").unlink()
    assert kinds(verify_run(run_dir)) == [("missing_manifest", "manifest.json")]


def test_unreadable_index_and_missing_folder(run, tmp_path):
    run_dir, _ = run
    part = next((run_dir / "index" / "source=drums").glob("part-*.parquet"))
    part.unlink()
    part.write_bytes(np.random.default_rng(0).bytes(64))
    found = kinds(verify_run(run_dir))
    assert found[0] == ("index_unreadable", part.relative_to(run_dir).as_posix())
    assert ("part_differs", part.relative_to(run_dir).as_posix()) in found
    assert ("manifest_count", "excerpts_drums") in found
    with pytest.raises(FileNotFoundError, match="does not exist"):
        verify_run(tmp_path / "nowhere")


# --------------------------------------------------------------------------- other stages


def test_feature_shards_are_checked_against_their_index(tmp_path):
    npy = tmp_path / "shards" / "k.npy"
    rng = np.random.default_rng(0)
    write_feature_shard(npy, [("a", rng.random((7, 54, 5))), ("b", rng.random((7, 54, 3)))])
    assert check_feature_shard(npy, tracks=2) == []
    [problem] = check_feature_shard(npy, tracks=3)
    assert problem.kind == "feature_shard" and "counts 3 tracks, its index holds 2" in problem.message
    index = pd.read_parquet(index_path_for(npy))
    index.loc[1, "n_frames"] = 9  # the index expects more frames than the .npy holds
    index.to_parquet(index_path_for(npy))
    [problem] = check_feature_shard(npy)
    assert "unreadable" in problem.message and "frames" in problem.message
    index_path_for(npy).unlink()
    assert [p.kind for p in check_feature_shard(npy)] == ["feature_shard"]


def test_checkpoints_must_load_with_weights_only(tmp_path):
    good = tmp_path / "best.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, good)
    assert check_checkpoint(good) == []
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": Path("not allowed")}, pickled)
    [problem] = check_checkpoint(pickled)
    assert problem.kind == "checkpoint" and "weights_only" in problem.message
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    assert [p.kind for p in check_checkpoint(truncated)] == ["checkpoint"]
    assert [p.kind for p in check_checkpoint(tmp_path / "absent.pt")] == ["checkpoint"]


def test_rehash_reads_every_file_of_the_catalog_scan(run, capsys):
    from fixtures_extraction import SCAN_KEY

    from pipeline.corpora.catalog import STAGE, build_catalog

    run_dir, catalog_root = run
    build_catalog(catalog_root, 2, DatasetRun(run_dir).data_root / STAGE / SCAN_KEY)
    assert verify_cli(run_dir, rehash_scan=True) == 0
    assert "5 files of the catalog scan re-hashed" in capsys.readouterr().out
    short = catalog_root / "artist_c" / "short.wav"  # no excerpt was cut from it (too short)
    stat = short.stat()
    sf.write(short, np.full(22050, 0.25), 22050, subtype="PCM_16")  # new bytes, same size and time
    os.utime(short, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert short.stat().st_size == stat.st_size
    assert verify_cli(run_dir) == 0  # the excerpts' catalog files alone do not include it
    capsys.readouterr()
    assert verify_cli(run_dir, rehash_scan=True) == 1
    assert f"scan_checksum: {short.resolve()}: SHA-256" in capsys.readouterr().out
    from tasks.cli import main

    assert main(["verify", str(run_dir), "--rehash"]) == 1  # the command line's flag
    assert "scan_checksum" in capsys.readouterr().out
