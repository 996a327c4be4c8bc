"""The record of one excerpt that every export carries, and the JSON-lines writers they share.

A record is the excerpt's whole index row (every ``INDEX_SCHEMA`` column: catalog path and
checksum, offsets, threshold, probabilities, detector and calibration keys, ...), plus
``audio_file`` (the excerpt's absolute path), ``num_samples`` (``end_sample - start_sample``
samples at ``sample_rate`` Hz) and ``duration`` (``num_samples / sample_rate`` seconds, the file's
own; the index's grid-time ``duration_s`` stays in the provenance).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from pipeline.mining.datasets import DatasetRun
from pipeline.storage.outputs import atomic_path, write_bytes_atomic

SHARD_SIZE = 1000  # excerpts per file of a sharded export (webdataset tars, hf Parquet files): a parameter


def _plain(value: Any) -> Any:
    """A JSON-ready copy of one index value (numpy scalars become Python numbers, NaN None)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a column not filled for this excerpt (NaN): null, so every line stays strict JSON
    return value


def export_records(run: DatasetRun | str | os.PathLike) -> list[dict[str, Any]]:
    """One dict per excerpt of ``run`` (``excerpt_id`` order): every index column, ``audio_file``
    (absolute path), ``num_samples`` (samples in the file) and ``duration`` (its seconds)."""
    run = DatasetRun.of(run)
    index = run.index().sort_values("excerpt_id", kind="mergesort")
    records = []
    for row in index.to_dict("records"):
        record = {name: _plain(value) for name, value in row.items()}
        num_samples = int(record["end_sample"]) - int(record["start_sample"])
        if num_samples <= 0 or int(record["sample_rate"]) <= 0:
            raise ValueError(f"excerpt {record['excerpt_id']} has no samples ({record['start_sample']}.."
                             f"{record['end_sample']} at {record['sample_rate']} Hz): the index is damaged")
        record["audio_file"] = str(run.audio_file(row).resolve())
        record["num_samples"] = num_samples
        record["duration"] = num_samples / int(record["sample_rate"])
        records.append(record)
    return records


def provenance(record: dict[str, Any]) -> dict[str, Any]:
    """The provenance an export carries: every index column and ``audio_file``."""
    return {k: v for k, v in record.items() if k not in ("num_samples", "duration")}


def write_jsonl_gz(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    """Gzipped JSON lines, atomically; ``mtime=0``, so the file's bytes depend on its lines only."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        for line in lines:
            fh.write((json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))


def write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    """JSON lines, atomically."""
    write_bytes_atomic(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode("utf-8"))
