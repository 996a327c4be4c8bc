"""Catalog listing, track ids, append-only shards, unreadable files and duplicates, checksum reuse."""

import os
import time

import numpy as np
import soundfile as sf

from pipeline.corpora import catalog
from pipeline.mining.verify import check_scan
from pipeline.storage.outputs import write_manifest


def write(path, seed, seconds=0.2):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).uniform(-0.1, 0.1, int(8000 * seconds)), 8000)


def test_folder_listing_skips_hidden_and_non_audio(tmp_path):
    write(tmp_path / "a" / "one.wav", 0)
    write(tmp_path / "b" / "two.flac", 1)
    (tmp_path / "a" / "cover.jpg").write_bytes(b"jpg")
    write(tmp_path / ".hidden" / "three.wav", 2)
    names = [p.name for p in catalog.list_files(tmp_path)]
    assert names == ["one.wav", "two.flac"]


def test_list_file_catalog_resolves_relative_paths(tmp_path):
    write(tmp_path / "x" / "one.wav", 0)
    listing = tmp_path / "list.txt"
    listing.write_text("# my catalog\nx/one.wav\n\n")
    assert catalog.list_files(listing) == [tmp_path / "x" / "one.wav"]


def test_track_id_follows_content_not_name(tmp_path):
    write(tmp_path / "one.wav", 0)
    tracks, _, _ = catalog.scan(catalog.listing(tmp_path), shard_size=4)
    before = tracks.loc[0, "track_id"]
    os.rename(tmp_path / "one.wav", tmp_path / "renamed.wav")
    tracks, _, _ = catalog.scan(catalog.listing(tmp_path), shard_size=4)
    assert tracks.loc[0, "track_id"] == before and len(before) == catalog.TRACK_ID_LENGTH


def test_duplicates_and_unreadable_files_are_rejected_with_a_reason(tmp_path):
    write(tmp_path / "one.wav", 0)
    write(tmp_path / "copy.wav", 0)
    write(tmp_path / "locked.wav", 1)
    os.chmod(tmp_path / "locked.wav", 0)
    try:
        readable = os.access(tmp_path / "locked.wav", os.R_OK)  # root can read anything
        tracks, rejects, _ = catalog.scan(catalog.listing(tmp_path), shard_size=4)
    finally:
        os.chmod(tmp_path / "locked.wav", 0o644)
    assert "same content as" in rejects.set_index("path").loc[str(tmp_path / "one.wav"), "reason"]
    if not readable:
        assert "permission denied" in rejects.set_index("path").loc[str(tmp_path / "locked.wav"), "reason"]
    assert len(tracks) + len(rejects) == 3


def test_new_tracks_fill_new_shards_and_old_shards_keep_their_keys(tmp_path):
    for i in range(5):
        write(tmp_path / f"t{i}.wav", i)
    first, _, _ = catalog.scan(catalog.listing(tmp_path), shard_size=2)
    keys_before = {n: k for n, k, _ in catalog.shards(first)}
    assert sorted(first["shard"].unique()) == [0, 1, 2]
    write(tmp_path / "a_new.wav", 10)  # sorts first by path, still goes to a new shard
    second, _, _ = catalog.scan(catalog.listing(tmp_path), shard_size=2, previous=first)
    keys_after = {n: k for n, k, _ in catalog.shards(second)}
    assert all(keys_after[n] == k for n, k in keys_before.items())
    assert second.set_index("path").loc[str(tmp_path / "a_new.wav"), "shard"] == 3


def test_rescan_reuses_checksums_of_unchanged_files(tmp_path, monkeypatch):
    for i in range(3):
        write(tmp_path / f"t{i}.wav", i)
    first, _, _ = catalog.scan(catalog.listing(tmp_path), shard_size=2)
    read = []
    monkeypatch.setattr(catalog, "file_checksum", lambda p: read.append(p) or "f" * 64)
    catalog.scan(catalog.listing(tmp_path), shard_size=2, previous=first)
    assert read == []


def test_rescan_reuses_checksums_only_for_unchanged_size_and_mtime(tmp_path):
    paths = [tmp_path / f"t{i}.wav" for i in range(4)]
    for i, path in enumerate(paths):
        write(path, i)
    then = time.time_ns() - 60 * 10**9
    for path in paths:
        os.utime(path, ns=(then, then))
    first, _, counts = catalog.scan(catalog.listing(tmp_path), shard_size=2)
    assert counts["checksums_computed"] == 4 and counts["checksums_reused"] == 0
    assert counts["bytes_hashed"] == sum(p.stat().st_size for p in paths)
    write(paths[1], 11)  # new bytes, same size, its time put back: a file that lies
    os.utime(paths[1], ns=(then, then))
    os.utime(paths[2], ns=(then + 10**9, then + 10**9))  # touched: same bytes, new time
    write(paths[3], 3, seconds=0.3)  # grown
    os.utime(paths[3], ns=(then, then))
    second, _, counts = catalog.scan(catalog.listing(tmp_path), shard_size=2, previous=first,
                                     previous_listed_ns=time.time_ns())
    assert counts["checksums_reused"] == 2 and counts["checksums_computed"] == 2
    before, after = (scan.set_index("path")["checksum"] for scan in (first, second))
    assert after[str(paths[0])] == before[str(paths[0])]
    assert after[str(paths[1])] == before[str(paths[1])] != catalog.file_checksum(paths[1])  # kept, stale
    assert after[str(paths[2])] == catalog.file_checksum(paths[2]) == before[str(paths[2])]
    assert after[str(paths[3])] == catalog.file_checksum(paths[3]) != before[str(paths[3])]

    # verify --rehash reads every file again and finds the lie, and only it
    second.to_parquet(tmp_path / "tracks.parquet")
    problems, read = check_scan(tmp_path / "tracks.parquet", workers=2)
    assert read == 4 and [(p.kind, p.subject) for p in problems] == [("scan_checksum", str(paths[1]))]
    paths[0].unlink()
    problems, read = check_scan(tmp_path / "tracks.parquet", workers=2)
    assert read == 3 and {(p.kind, p.subject) for p in problems} == {("scan_checksum", str(paths[0])),
                                                                   ("scan_checksum", str(paths[1]))}


def test_files_modified_just_before_the_previous_listing_are_read_again(tmp_path):
    for i in range(3):
        write(tmp_path / f"t{i}.wav", i)
    first, _, _ = catalog.scan(catalog.listing(tmp_path), shard_size=2)
    modified = int(first["mtime_ns"].max())
    _, _, counts = catalog.scan(catalog.listing(tmp_path), shard_size=2, previous=first,
                                previous_listed_ns=modified + catalog.REUSE_MARGIN_NS // 2)
    assert counts["checksums_computed"] == 3 and counts["checksums_reused"] == 0  # same tick: not trusted
    _, _, counts = catalog.scan(catalog.listing(tmp_path), shard_size=2, previous=first,
                                previous_listed_ns=modified + 2 * catalog.REUSE_MARGIN_NS)
    assert counts["checksums_reused"] == 3


def test_build_catalog_states_what_it_reused_and_reads_when_the_last_scan_listed(tmp_path):
    folder = tmp_path / "catalog"
    for i in range(3):
        write(folder / f"t{i}.wav", i)
    then = time.time_ns() - 60 * 10**9
    for path in folder.iterdir():
        os.utime(path, ns=(then, then))
    first = catalog.build_catalog(folder, 2, tmp_path / "scan1")
    assert first.counts["checksums_computed"] == 3 and first.counts["listed_at_ns"] > then
    write_manifest(tmp_path / "scan1", "catalog", "k1", {}, {}, counts=first.counts)
    assert catalog.listed_at_ns(tmp_path / "scan1") == first.counts["listed_at_ns"]
    write(folder / "t3.wav", 3)
    second = catalog.build_catalog(folder, 2, tmp_path / "scan2", tmp_path / "scan1" / "tracks.parquet")
    assert (second.counts["checksums_reused"], second.counts["checksums_computed"]) == (3, 1)
    assert "3 reused" in second.summary[0] and "verify --rehash" in second.summary[0]


def test_the_walk_lists_files_in_sorted_path_order(tmp_path):
    # shards are filled in this order: it must be that of sorted paths, whatever the names
    names = ["a.wav", "a/x.flac", "a-b/y.wav", "a b/z.mp3", "b.wav", "b/c/d.ogg", "B.wav", "é.wav", "e.WAV",
             "a/.hidden.wav", ".cache/w.wav", "a/cover.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "link").symlink_to(tmp_path / "b", target_is_directory=True)  # not followed
    expected = sorted(tmp_path / n for n in names if not any(p.startswith(".") for p in n.split("/"))
                      and not n.endswith(".jpg"))
    assert catalog.list_files(tmp_path) == expected
    assert list(catalog.listing(tmp_path)["path"]) == [str(p) for p in expected]


def test_scan_shards_gives_each_shards_key_in_shard_order(tmp_path):
    for i in range(7):
        write(tmp_path / "c" / f"t{i}.wav", i)
    tracks, _, _ = catalog.scan(catalog.listing(tmp_path / "c"), shard_size=3)
    tracks.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "tracks.parquet")  # any row order
    expected = [(number, key) for number, key, _ in catalog.shards(tracks)]
    assert [n for n, _ in expected] == [0, 1, 2]
    assert catalog.scan_shards(tmp_path / "tracks.parquet") == expected
    tracks[tracks["shard"] < 2].to_parquet(tmp_path / "tracks.parquet")  # a new version of the file
    assert catalog.scan_shards(tmp_path / "tracks.parquet") == expected[:2]
