"""Catalog listing, track ids, append-only shards, unreadable files and duplicates."""

import os

import numpy as np
import soundfile as sf

from pipeline.corpora import catalog


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
    tracks, _ = catalog.scan(catalog.listing(tmp_path), shard_size=4)
    before = tracks.loc[0, "track_id"]
    os.rename(tmp_path / "one.wav", tmp_path / "renamed.wav")
    tracks, _ = catalog.scan(catalog.listing(tmp_path), shard_size=4)
    assert tracks.loc[0, "track_id"] == before and len(before) == catalog.TRACK_ID_LENGTH


def test_duplicates_and_unreadable_files_are_rejected_with_a_reason(tmp_path):
    write(tmp_path / "one.wav", 0)
    write(tmp_path / "copy.wav", 0)
    write(tmp_path / "locked.wav", 1)
    os.chmod(tmp_path / "locked.wav", 0)
    try:
        readable = os.access(tmp_path / "locked.wav", os.R_OK)  # root can read anything
        tracks, rejects = catalog.scan(catalog.listing(tmp_path), shard_size=4)
    finally:
        os.chmod(tmp_path / "locked.wav", 0o644)
    assert "same content as" in rejects.set_index("path").loc[str(tmp_path / "one.wav"), "reason"]
    if not readable:
        assert "permission denied" in rejects.set_index("path").loc[str(tmp_path / "locked.wav"), "reason"]
    assert len(tracks) + len(rejects) == 3


def test_new_tracks_fill_new_shards_and_old_shards_keep_their_keys(tmp_path):
    for i in range(5):
        write(tmp_path / f"t{i}.wav", i)
    first, _ = catalog.scan(catalog.listing(tmp_path), shard_size=2)
    keys_before = {n: k for n, k, _ in catalog.shards(first)}
    assert sorted(first["shard"].unique()) == [0, 1, 2]
    write(tmp_path / "a_new.wav", 10)  # sorts first by path, still goes to a new shard
    second, _ = catalog.scan(catalog.listing(tmp_path), shard_size=2, previous=first)
    keys_after = {n: k for n, k, _ in catalog.shards(second)}
    assert all(keys_after[n] == k for n, k in keys_before.items())
    assert second.set_index("path").loc[str(tmp_path / "a_new.wav"), "shard"] == 3


def test_rescan_reuses_checksums_of_unchanged_files(tmp_path, monkeypatch):
    for i in range(3):
        write(tmp_path / f"t{i}.wav", i)
    first, _ = catalog.scan(catalog.listing(tmp_path), shard_size=2)
    read = []
    monkeypatch.setattr(catalog, "file_checksum", lambda p: read.append(p) or "f" * 64)
    catalog.scan(catalog.listing(tmp_path), shard_size=2, previous=first)
    assert read == []
