"""`silentmine gc`: lists what the configuration does not reach, keeps what it (or --keep) reaches,
deletes only with --delete, and a rerun after --delete recomputes nothing."""

from __future__ import annotations

import json

from pipeline.storage import gc
from pipeline.storage.status import StageDescription
from tasks.cli import main


def _feature_shards() -> list:
    import tasks
    from tasks.graph import walk
    from tasks.inputs import forget_inputs

    forget_inputs()
    return [t for t in walk(tasks.All()) if t.task_family == "CatalogFeatures"]


def _run_inputs(run_pipeline) -> set[str]:
    """Run the scan, the labels and every catalog feature shard; the families that ran."""
    ran = set(run_pipeline("ScanCatalog")) | set(run_pipeline("Labels"))
    for job in _feature_shards():
        ran |= set(run_pipeline("CatalogFeatures", shard=job.shard, shard_key=job.shard_key,
                                tracks_file=job.tracks_file))
    return ran


def _outputs() -> tuple[list, list]:
    """(the scan's and the labels' folders, every feature shard's files) of the configuration."""
    import tasks
    from tasks.inputs import forget_inputs

    forget_inputs()
    folders = [tasks.ScanCatalog().folder, tasks.Labels().folder]
    shard_files = [p for job in _feature_shards() for p in job.marker.parent.glob(f"{job.shard_key}.*")]
    return folders, shard_files


def _gc(capsys, *args) -> str:
    capsys.readouterr()
    assert main(["gc", *args]) == 0
    return capsys.readouterr().out


def test_gc_lists_keeps_and_deletes_only_with_delete(configured, run_pipeline, capsys, tmp_path):
    data = tmp_path / "data"
    assert _run_inputs(run_pipeline) == {"ScanCatalog", "Labels", "CatalogFeatures"}
    old_folders, old_shards = _outputs()
    assert len(old_shards) == 4 * 4  # marker, .npy, .index.parquet, .rejects.parquet per shard
    old_cfg = tmp_path / "old.cfg"  # the options that made them (the rest is the current configuration)
    old_cfg.write_text('[ScanCatalog]\nshard_size = 1\n[Labels]\nsplits = ["train", "valid", "calibration", "test"]\n')

    configured("ScanCatalog", "shard_size", 2)  # a new scan with new shards, same features folder
    configured("Labels", "splits", '["train", "test"]')
    assert _run_inputs(run_pipeline) == {"ScanCatalog", "Labels", "CatalogFeatures"}
    new_folders, new_shards = _outputs()
    assert not set(new_shards) & set(old_shards) and new_shards[0].parent == old_shards[0].parent
    (data / "demo").mkdir()
    (data / "demo" / "corpus.txt").write_text("not a stage output")
    (data / "catalog" / "notes").mkdir()  # not a keyed folder: kept, and said so
    others = [data / "demo" / "corpus.txt", data / "catalog" / "notes", *data.glob("journal/*")]
    assert len(others) > 2  # the runs wrote a journal

    listing = _gc(capsys)
    for path in old_folders:
        assert f"stage folder  {path.resolve()}" in listing
    for marker in (p for p in old_shards if p.suffix == ".json"):
        assert f"shard output  {marker.resolve()} (+3 files)" in listing
    for path in new_folders + new_shards:
        assert str(path.resolve()) not in listing
    assert "not a keyed stage folder" in listing and "nothing removed" in listing
    assert "total unreachable:" in listing and "in 6 outputs" in listing
    assert all(p.exists() for p in old_folders + old_shards + new_folders + new_shards + others)

    kept = _gc(capsys, "--keep", str(old_cfg))  # the old configuration reaches all of it
    assert "total unreachable: 0 B in 0 outputs" in kept and "stage folder  " + str(old_folders[0]) not in kept

    removed = _gc(capsys, "--delete")
    assert "removed under" in removed and "total removed:" in removed
    assert not any(p.exists() for p in old_folders + old_shards)
    assert all(p.exists() for p in new_folders + new_shards + others)

    assert _run_inputs(run_pipeline) == set()  # nothing recomputed
    from tasks.graph import pipeline_status

    states = {s.description.task: s.state for s in pipeline_status()}
    assert states["ScanCatalog"] == states["Labels"] == states["CatalogFeatures"] == "complete"
    assert "in 0 outputs" in _gc(capsys)


def test_gc_keeps_what_a_new_scan_will_reuse(configured, run_pipeline, capsys, small_catalog):
    import numpy as np
    import soundfile as sf

    _run_inputs(run_pipeline)
    old_folders, old_shards = _outputs()
    sf.write(small_catalog / "folder0" / "song9.wav", np.zeros((22050 * 2, 2)), 22050)  # the catalog grows

    listing = _gc(capsys, "--delete")  # the new scan has not run: its shards, and so the feature shards, are unknown
    assert f"{old_shards[0].parents[1].resolve()}  (unsure:" in listing
    assert str(old_folders[0].resolve()) not in listing  # the previous scan: the new one reuses its shards
    assert all(p.exists() for p in old_folders + old_shards)

    ran = []
    for name in ("ScanCatalog", "Labels"):
        ran += run_pipeline(name)
    for job in _feature_shards():
        ran += run_pipeline("CatalogFeatures", shard=job.shard, shard_key=job.shard_key, tracks_file=job.tracks_file)
    assert ran == ["ScanCatalog", "CatalogFeatures"]  # only the new track's shard is computed


def test_gc_keep_needs_a_readable_file(configured, capsys, tmp_path):
    assert main(["gc", "--keep", str(tmp_path / "absent.cfg")]) == 2
    assert "no such configuration file" in capsys.readouterr().err


def test_shard_outputs_include_the_files_their_marker_lists_but_never_a_reached_shards(tmp_path):
    """A store whose shard markers list their files (index parts, audio), one file shared by two."""
    store = tmp_path / "data" / "excerpts" / ("ab" * 8)
    files = {"a": ["index/source=bass/part-a.parquet", "audio/bass/x.flac", "audio/bass/shared.flac"],
             "b": ["index/source=bass/part-b.parquet", "audio/bass/shared.flac"]}
    keys = {"a": "1" * 16, "b": "2" * 16}
    for shard, listed in files.items():
        for name in listed:
            (store / name).parent.mkdir(parents=True, exist_ok=True)
            (store / name).write_bytes(b"x" * 100)
        marker = store / "shards" / f"{keys[shard]}.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"files": {"index": listed[:1], "audio": listed[1:], "rejects": "../../x"}}))
    description = StageDescription(family="ExtractShard", task="ExtractShard", stage="excerpts", key=store.name,
                                   folder=store, params={}, inputs={},
                                   markers=(store / "shards" / f"{keys['b']}.json",))
    reach = gc.reach("current", [description])

    entries = gc.plan(tmp_path / "data", [reach], {"excerpts"}, {"excerpts"})
    assert len(entries) == 1 and entries[0].remove
    assert entries[0].files == [
        store / "shards" / f"{keys['a']}.json",
        store / "index/source=bass/part-a.parquet",
        store / "audio/bass/x.flac",
    ]
    assert (
        entries[0].size
        == len(json.dumps({"files": {"index": files["a"][:1], "audio": files["a"][1:], "rejects": "../../x"}})) + 200
    )
    assert gc.delete(entries) == []
    assert not (store / "audio/bass/x.flac").exists() and not (store / "shards" / f"{keys['a']}.json").exists()
    assert (store / "audio/bass/shared.flac").exists() and (store / "index/source=bass/part-b.parquet").exists()

    unsure = gc.reach(
        "other",
        [
            StageDescription(
                family="Extract",
                task="Extract",
                stage="datasets",
                key="0" * 16,
                folder=tmp_path / "data" / "datasets" / ("0" * 16),
                params={},
                inputs={},
                shards_pending=True,
            )
        ],
    )
    assert gc.plan(tmp_path / "data", [unsure], {"excerpts"}, {"excerpts"})[0].remove is False
    assert gc.human_size(1536) == "1.5 KiB" and gc.human_size(12) == "12 B"
