"""The D_i datasets of one extraction run, as a whole.

Shards write their parts into one run folder (:mod:`pipeline.extraction`); once every shard
of the current catalog scan is done, :func:`finalize_run` gathers the rejects of the earlier
stages beside the extraction's own, removes the parts and audio of shards that are no longer
in the catalog (a changed or removed file), and counts what the run holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.dataset_index import REJECTS_SCHEMA, read_index, read_rejects
from pipeline.sources import SOURCES
from pipeline.storage import is_temporary, write_parquet_atomic

SCAN_REJECTS = "part-scan.parquet"


def _rejects_table(frame: pd.DataFrame) -> pa.Table:
    frame = frame.reindex(columns=REJECTS_SCHEMA.names).fillna("").astype(str)
    return pa.Table.from_pandas(frame, schema=REJECTS_SCHEMA, preserve_index=False)


def finalize_run(run_dir: str | os.PathLike, shard_keys: list[str], scan_rejects: pd.DataFrame,
                 feature_rejects: dict[str, pd.DataFrame]) -> dict:
    """Make ``run_dir`` hold exactly the current shards' D_i and every reject; return counts.

    ``feature_rejects`` maps shard key -> that shard's rejects from the features stage.
    """
    run_dir = Path(run_dir)
    write_parquet_atomic(_rejects_table(scan_rejects), run_dir / "rejects" / SCAN_REJECTS)
    for key, frame in feature_rejects.items():
        write_parquet_atomic(_rejects_table(frame), run_dir / "rejects" / f"part-features-{key}.parquet")
    current = {f"part-{k}.parquet" for k in shard_keys} | {f"part-features-{k}.parquet" for k in shard_keys}
    current.add(SCAN_REJECTS)
    stale = [p for p in (run_dir / "index").glob("source=*/part-*.parquet") if p.name not in current]
    stale += [p for p in (run_dir / "rejects").glob("part-*.parquet") if p.name not in current]
    for path in stale:
        path.unlink()
    index = read_index(run_dir / "index")
    removed_audio = _remove_unindexed_audio(run_dir, set(index["audio_path"])) if stale else 0
    rejects = read_rejects(run_dir)
    counts = {"shards": len(shard_keys), "excerpts": len(index), "rejects": len(rejects),
              "stale_parts_removed": len(stale), "stale_audio_removed": removed_audio}
    for source in SOURCES:
        rows = index[index["source"] == source]
        counts[f"excerpts_{source}"] = len(rows)
        counts[f"hours_{source}"] = round(float(rows["duration_s"].sum()) / 3600, 4)
    for stage, count in rejects["stage"].value_counts().items():
        counts[f"rejects_{stage}"] = int(count)
    counts["summary"] = [f"{s}: {counts[f'excerpts_{s}']} excerpts, {counts[f'hours_{s}'] * 60:.1f} min"
                         for s in SOURCES] + [f"rejects: {len(rejects)} ({', '.join(f'{r.path}: {r.reason}' for r in rejects.head(3).itertuples())}{', ...' if len(rejects) > 3 else ''})"]
    return counts


def _remove_unindexed_audio(run_dir: Path, indexed: set[str]) -> int:
    removed = 0
    for path in (run_dir / "audio").rglob("*.flac"):
        if path.relative_to(run_dir).as_posix() not in indexed:
            path.unlink()
            removed += 1
    return removed
