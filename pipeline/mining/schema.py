"""Schemas of the tables that stages exchange: detector probabilities and the D_i index.

The D_i index is one Parquet dataset for all sources, hive-partitioned by source
(``index/source=bass/part-<shard>.parquet``), one row per excerpt.  Every column is
documented in README.md ("The excerpt index").  ``catalog_path`` is absolute; ``audio_path`` is
relative to the data root in the pipeline (``excerpts/<key>/audio/...``: excerpts stay in the
shard store, see :mod:`pipeline.mining.datasets`, whose ``DatasetRun`` resolves it).  The
folder layout of a D_i (store and views) is :mod:`pipeline.mining.datasets`'s.
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
        ("audio_path", pa.string()),  # excerpt file, relative to the data root
        ("audio_format", pa.string()),  # e.g. "FLAC/PCM_24"
        ("audio_checksum", pa.string()),  # SHA-256 of the excerpt file
        # the separator's second opinion (Extract's `separator`; NaN without one): estimated
        # V_i = 10 log10(||s_i_hat||^2 / ||m||^2) per grid window, mean and max over the excerpt, dB
        ("separator_db_mean", pa.float64()),
        ("separator_db_max", pa.float64()),
    ]
)
# The index part files: INDEX_SCHEMA with ``source`` dictionary-encoded, the type that
# ``pd.read_parquet`` / ``pq.read_table`` give the hive partition column ``source=<s>/``; a
# plain string column there fails to merge with it ("Unable to merge: Field source has
# incompatible types"), so ``pd.read_parquet(index_dir)`` could not read the index.  The parts
# keep the column so that a flat glob over index/ loses nothing.
PART_SCHEMA = INDEX_SCHEMA.set(INDEX_SCHEMA.get_field_index("source"),
                               pa.field("source", pa.dictionary(pa.int32(), pa.string())))
# Named in ExtractShard's key: part files of another format never share a store (and a view).
INDEX_PART_FORMAT = "source dictionary-encoded"

# Rejected inputs, one row per (file, stage).
REJECTS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("track_id", pa.string()),  # empty when the file could not even be read
        ("stage", pa.string()),
        ("kind", pa.string()),  # one of pipeline.rejects.KINDS, set where the error was raised
        ("reason", pa.string()),
    ]
)


def read_index(index_dir: str | os.PathLike, source: str | None = None) -> pd.DataFrame:
    """Load the D_i index (optionally one source) as a DataFrame; empty if none exists."""
    index_dir = Path(index_dir)
    columns = [f.name for f in INDEX_SCHEMA]
    if not index_dir.exists() or not any(index_dir.rglob("*.parquet")):
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in INDEX_SCHEMA})
    # read as INDEX_SCHEMA: parts with a string or a dictionary ``source`` column, or none (the
    # partition folder's), read alike, and columns that older parts lack read as null (NaN)
    dataset = ds.dataset(index_dir, format="parquet", schema=INDEX_SCHEMA, partitioning="hive",
                         exclude_invalid_files=True, ignore_prefixes=[".", "_"])
    table = dataset.to_table(filter=(ds.field("source") == source) if source else None)
    return table.to_pandas()[columns]


def read_rejects(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every reject of a D_i folder (``rejects/part-*.parquet``: scan, features, extract),
    ``REJECTS_SCHEMA`` columns; empty if there is none."""
    parts = sorted(p for p in (Path(run_dir) / "rejects").glob("part-*.parquet") if not p.name.startswith("."))
    columns = [f.name for f in REJECTS_SCHEMA]
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    if "kind" not in frame.columns:  # parts written before kinds were recorded
        frame["kind"] = "other"
    frame["kind"] = frame["kind"].fillna("other")
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ValueError(f"rejects parts under {Path(run_dir) / 'rejects'} lack columns {sorted(missing)}")
    return frame[columns]
