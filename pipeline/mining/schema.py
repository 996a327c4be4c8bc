"""Schemas of the tables that stages exchange: detector probabilities and the D_i index.

The D_i index is one Parquet dataset for all sources, hive-partitioned by source
(``index/source=bass/part-<shard>.parquet``), one row per excerpt.  Every column is
documented in README.md ("The excerpt index").  Paths in the index are relative to the
extraction run's folder (``audio_path``) or absolute (``catalog_path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.sources import SOURCES

# Per-frame detector output, one Parquet file per shard: one row per (track, frame).
PROBABILITY_SCHEMA = pa.schema(
    [
        ("track_id", pa.string()),
        ("frame", pa.int32()),  # index on the shared grid: frame k starts at k * 0.064 s
        ("start_s", pa.float64()),
        *[(f"p_{name}", pa.float32()) for name in SOURCES],  # P(source silent), 0..1
    ]
)

# The excerpt index of D_i (partition column ``source`` is added by the hive layout).
INDEX_SCHEMA = pa.schema(
    [
        ("excerpt_id", pa.string()),  # "<track_id>-<source>-<start_sample>", unique
        ("source", pa.string()),  # silent source: drums, bass, other or vocals
        ("catalog_path", pa.string()),  # absolute path of the catalog file it was cut from
        ("catalog_checksum", pa.string()),  # SHA-256 of that file at extraction time
        ("track_id", pa.string()),  # stable track id (derived from the checksum)
        ("start_s", pa.float64()),  # excerpt start in the original file, seconds
        ("end_s", pa.float64()),  # excerpt end (exclusive), seconds
        ("start_sample", pa.int64()),  # start at the original sample rate, samples
        ("end_sample", pa.int64()),  # end (exclusive) at the original sample rate
        ("duration_s", pa.float64()),
        ("sample_rate", pa.int32()),  # original sample rate of the catalog file, Hz
        ("channels", pa.int16()),  # original channel count
        ("threshold", pa.float64()),  # calibrated p_i used for this source
        ("prob_mean", pa.float64()),  # mean P_i over the excerpt's frames
        ("prob_min", pa.float64()),  # minimum P_i over the excerpt's frames
        ("n_frames", pa.int32()),  # detector frames in the run
        ("detector_key", pa.string()),  # key of the TrainDetector output
        ("calibration_key", pa.string()),  # key of the Calibrate output
        ("audio_path", pa.string()),  # excerpt file, relative to the extraction folder
        ("audio_format", pa.string()),  # e.g. "FLAC/PCM_24"
        ("audio_checksum", pa.string()),  # SHA-256 of the excerpt file
    ]
)

# Rejected inputs, one row per (file, stage).
REJECTS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("track_id", pa.string()),  # empty when the file could not even be read
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)


def read_index(index_dir: str | os.PathLike, source: str | None = None) -> pd.DataFrame:
    """Load the D_i index (optionally one source) as a DataFrame; empty if none exists."""
    index_dir = Path(index_dir)
    columns = [f.name for f in INDEX_SCHEMA]
    if not index_dir.exists() or not any(index_dir.rglob("*.parquet")):
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in INDEX_SCHEMA})
    dataset = ds.dataset(index_dir, format="parquet", partitioning="hive", exclude_invalid_files=True,
                         ignore_prefixes=[".", "_"])
    table = dataset.to_table(filter=(ds.field("source") == source) if source else None)
    frame = table.to_pandas()
    frame["source"] = frame["source"].astype(str)
    return frame[columns]


def read_rejects(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every reject of an extraction run (``rejects/part-*.parquet``: scan, features, extract),
    ``REJECTS_SCHEMA`` columns; empty if there is none."""
    parts = sorted(p for p in (Path(run_dir) / "rejects").glob("part-*.parquet") if not p.name.startswith("."))
    columns = [f.name for f in REJECTS_SCHEMA]
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ValueError(f"rejects parts under {Path(run_dir) / 'rejects'} lack columns {sorted(missing)}")
    return frame[columns]
