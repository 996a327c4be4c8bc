"""Schemas of the tables that stages exchange: detector probabilities and the D_i index.

The D_i index is one Parquet dataset for all sources, hive-partitioned by source
(``index/source=bass/part-<shard>.parquet``), one row per excerpt.  Every column is described
in ``INDEX_COLUMNS`` (docs/dataset-format.md's table is generated from it).  ``catalog_path`` is
absolute; ``audio_path`` is relative to the data root in the pipeline (``excerpts/<key>/audio/...``:
excerpts stay in the shard store, see :mod:`pipeline.mining.datasets`, whose ``DatasetRun``
resolves it).  The folder layout of a D_i (store and views) is :mod:`pipeline.mining.datasets`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.rejects import REJECTS_SCHEMA
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

def _column(arrow_type: pa.DataType, meaning: str):
    return field(metadata={"arrow_type": arrow_type, "meaning": meaning})


@dataclass(frozen=True)
class Excerpt:
    """One excerpt of D_i, one row of its index: the one definition of the index's columns, in
    order (``INDEX_COLUMNS`` and ``INDEX_SCHEMA`` are made from these fields, extraction writes
    its rows as ``Excerpt(...).row()``, readers get them back with :meth:`from_row`).

    Times in seconds, samples at the catalog file's own rate; ``audio_path`` is relative to the
    data root (resolve it with :meth:`pipeline.mining.datasets.DatasetRun.audio_file`).
    ``source`` is also the hive partition column (``index/source=<s>/``).  The separator's second
    opinion (Extract's ``separator``) is the estimated ``V_i = 10 log10(||s_i_hat||^2 / ||m||^2)``
    per grid window, its mean and max over the excerpt.
    """

    excerpt_id: str = _column(pa.string(), "`<track_id>-<source>-<start_sample>`, unique")
    source: str = _column(pa.string(), "the silent source: drums, bass, other or vocals (also the partition "
                                        "column; dictionary-encoded in the part files, so pandas reads it as a "
                                        "categorical)")
    catalog_path: str = _column(pa.string(), "absolute path of the catalog file the excerpt was cut from")
    catalog_checksum: str = _column(pa.string(), "SHA-256 of that file when it was extracted")
    track_id: str = _column(pa.string(), "the track's id: the first 16 hex characters of the checksum")
    start_s: float = _column(pa.float64(), "start in the catalog file, seconds")
    end_s: float = _column(pa.float64(), "end (exclusive) in the catalog file, seconds")
    start_sample: int = _column(pa.int64(), "start at the file's own sample rate, samples")
    end_sample: int = _column(pa.int64(), "end (exclusive) at the file's own sample rate, samples")
    duration_s: float = _column(pa.float64(), "`end_s - start_s`, seconds")
    sample_rate: int = _column(pa.int32(), "the catalog file's sample rate, Hz (also the excerpt's)")
    channels: int = _column(pa.int16(), "the catalog file's channel count (also the excerpt's)")
    threshold: float = _column(pa.float64(), "the calibrated threshold p_i used for this source")
    prob_mean: float = _column(pa.float64(), "mean detector probability P_i over the excerpt's frames")
    prob_min: float = _column(pa.float64(), "minimum P_i over the excerpt's frames")
    n_frames: int = _column(pa.int32(), "detector frames in the run (one per 64 ms)")
    detector_key: str = _column(pa.string(), "key of the TrainDetector output that scored it")
    calibration_key: str = _column(pa.string(), "key of the Calibrate output whose threshold was used")
    audio_path: str = _column(pa.string(), "the excerpt's FLAC, relative to the data root "
                                           "(`excerpts/<K>/audio/<source>/<xx>/<excerpt_id>.flac`)")
    audio_format: str = _column(pa.string(), "container/subtype, e.g. `FLAC/PCM_24`")
    audio_checksum: str = _column(pa.string(), "SHA-256 of the excerpt file")
    separator_db_mean: float = _column(pa.float64(), "the second-opinion separator's estimated V_i of the source, "
                                                     "mean over the excerpt's windows, dB; NaN without "
                                                     "`[Extract] separator`")
    separator_db_max: float = _column(pa.float64(), "the same, maximum over the excerpt's windows, dB; NaN without one")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Excerpt":
        """From an index row (a mapping or a pandas Series with every column)."""
        return cls(**{f.name: _PYTHON_TYPES[f.name](row[f.name]) for f in fields(cls)})

    def row(self) -> dict[str, Any]:
        """The index row: ``{column: value}`` in column order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# (column, Arrow type, meaning) of the index, in order: docs/dataset-format.md's column table is
# generated from it (python -m tasks.docs).
INDEX_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = tuple(
    (f.name, f.metadata["arrow_type"], f.metadata["meaning"]) for f in fields(Excerpt))
_PYTHON_TYPES = {name: int if pa.types.is_integer(t) else float if pa.types.is_floating(t) else str
                 for name, t, _ in INDEX_COLUMNS}
INDEX_SCHEMA = pa.schema([(name, arrow_type) for name, arrow_type, _ in INDEX_COLUMNS])
# The index part files: INDEX_SCHEMA with ``source`` dictionary-encoded, the type that
# ``pd.read_parquet`` / ``pq.read_table`` give the hive partition column ``source=<s>/``; a
# plain string column there fails to merge with it ("Unable to merge: Field source has
# incompatible types"), so ``pd.read_parquet(index_dir)`` could not read the index.  The parts
# keep the column so that a flat glob over index/ loses nothing.
PART_SCHEMA = INDEX_SCHEMA.set(INDEX_SCHEMA.get_field_index("source"),
                               pa.field("source", pa.dictionary(pa.int32(), pa.string())))
# Named in ExtractShard's key: part files of another format never share a store (and a view).
INDEX_PART_FORMAT = "source dictionary-encoded"

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
