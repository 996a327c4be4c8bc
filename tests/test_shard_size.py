"""The default shard size keeps a catalog of 100,000 tracks at the task count docs/operations.md states."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from pipeline.storage.outputs import StageResult

TRACKS = 100_000
DOCUMENTED_SHARDS = 1_563  # docs/operations.md, "Shard size"
DOCUMENTED_TASKS = 4_698  # of Extract's DAG with luigi.cfg's settings: 3 per shard and 9 others


@pytest.mark.slow
def test_planning_100000_tracks_at_the_default_shard_size(luigi_config, tmp_path):
    import tasks
    from tasks.catalog import ScanCatalog
    from tasks.graph import kept_config, walk
    from tasks.inputs import forget_inputs

    listed = tmp_path / "catalog.txt"  # a list of paths: planning reads the listing, never the files
    listed.write_text("".join(f"songs/{i // 1000:03d}/{i:06d}.flac\n" for i in range(TRACKS)))
    luigi_config("silentmine", "catalog", listed)
    for split in ("train", "valid", "test"):  # an empty stem set: the detector's inputs are not planned here
        (tmp_path / "stems" / split).mkdir(parents=True)
    luigi_config("silentmine", "stem_root", tmp_path / "stems")
    with kept_config() as live:
        live.remove_option("ScanCatalog", "shard_size")  # the repository's luigi.cfg sets the demo's
        forget_inputs()
        scan = ScanCatalog()
        shard_size = scan.shard_size
        assert shard_size == ScanCatalog.shard_size._default
        # the scan's output as the scan writes it (the files need not exist to plan)
        checksums = [f"{i:064x}" for i in range(TRACKS)]
        tracks = pd.DataFrame({"path": [str(tmp_path / f"songs/{i // 1000:03d}/{i:06d}.flac") for i in range(TRACKS)],
                               "size": np.full(TRACKS, 1 << 22), "mtime_ns": np.zeros(TRACKS, np.int64),
                               "checksum": checksums, "track_id": [c[:16] for c in checksums],
                               "shard": np.arange(TRACKS) // shard_size})
        scan.folder.mkdir(parents=True)
        tracks.to_parquet(scan.folder / "tracks.parquet")
        scan.write_completion(StageResult({"tracks": TRACKS}), time.time())
        assert scan.complete()

        found = walk(tasks.Extract())
    families = pd.Series([task.task_family for task in found]).value_counts()
    shards = -(-TRACKS // shard_size)
    assert shards == DOCUMENTED_SHARDS
    assert families["CatalogFeatures"] == families["DetectCatalog"] == families["ExtractShard"] == shards
    assert len(found) == DOCUMENTED_TASKS == 3 * shards + 9
