"""D_i in the formats training code already reads: lhotse, Hugging Face, WebDataset, NeMo, CSV.

Every export is made from one D_i (:class:`pipeline.mining.datasets.DatasetRun`), one record per
excerpt in ``excerpt_id`` order, and carries the excerpt's whole index row (every
``INDEX_SCHEMA`` column: catalog path and checksum, offsets, threshold, probabilities, detector
and calibration keys, ...) as its *provenance*, plus ``audio_file``: the excerpt's absolute path.
Durations are the excerpt files' own: ``num_samples = end_sample - start_sample`` samples at
``sample_rate`` Hz (``duration = num_samples / sample_rate`` seconds); the index's grid-time
``duration_s`` stays in the provenance.  Files are written atomically; ``export.json`` (format,
the D_i folder, counts, files written) is written last.

* ``lhotse``: ``recordings.jsonl.gz`` (one Recording per excerpt file) and ``cuts.jsonl.gz`` (one
  MonoCut, or MultiCut for several channels, per excerpt, covering the whole file, with one
  supervision whose ``custom.silent_source`` names the silent source; provenance in the cut's
  ``custom``).  Read with ``lhotse.CutSet.from_file``.
* ``hf``: a folder that ``datasets.load_dataset(folder)`` reads: one split per source that has
  excerpts, declared in ``README.md``'s YAML header, each split Parquet files
  ``<source>/part-<n>.parquet`` of ``shard_size`` excerpts with an ``audio`` column (the FLAC's
  bytes and name; an ``Audio`` feature, declared in the files' ``huggingface`` schema metadata),
  ``num_samples``, ``duration`` and the provenance (``source`` among it).  Self-contained: the
  audio travels inside the Parquet files, so the folder can be copied or pushed to a hub.
* ``webdataset``: tar shards ``shards/d_i-<n>.tar`` of ``shard_size`` excerpts each, members
  ``<excerpt_id>.flac`` (the file's bytes) and ``<excerpt_id>.json`` (source, num_samples,
  duration and the provenance); member times are 0, so the bytes depend on the D_i only.
  :func:`webdataset_members` indexes them for random access (the remix sampler).
* ``nemo``: ``manifest.jsonl``, one line per excerpt: ``audio_filepath``, ``duration``, the
  provenance; with ``nemo_reference="catalog"`` the lines point into the catalog files instead,
  with ``offset`` = ``start_s`` (for catalogs that must not be copied).
* ``csv``: ``excerpts.csv``, one row per excerpt: ``audio_file`` (absolute), ``num_samples``,
  ``duration`` and every index column.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.mining.datasets import DatasetRun
from pipeline.sources import SOURCES
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import StageResult, atomic_path, write_bytes_atomic, write_json_atomic

FORMATS = ("lhotse", "hf", "webdataset", "nemo", "csv")
SHARD_SIZE = 1000  # excerpts per WebDataset tar shard (a parameter of the export)
SHARD_PATTERN = "shards/d_i-{:06d}.tar"
EXPORT_RECORD = "export.json"
NEMO_REFERENCES = ("excerpt", "catalog")


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


def _write_jsonl_gz(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    # mtime=0: the file's bytes depend on its lines only
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        for line in lines:
            fh.write((json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))


def _write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> None:
    write_bytes_atomic(path, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode("utf-8"))


def lhotse_items(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(recording, cut)`` dicts of one excerpt, as lhotse serialises them."""
    channels = list(range(int(record["channels"])))
    channel: int | list[int] = channels[0] if len(channels) == 1 else channels
    rid = record["excerpt_id"]
    recording = {"id": rid, "sources": [{"type": "file", "channels": channels, "source": record["audio_file"]}],
                 "sampling_rate": int(record["sample_rate"]), "num_samples": record["num_samples"],
                 "duration": record["duration"], "channel_ids": channels}
    supervision = {"id": f"{rid}-silent", "recording_id": rid, "start": 0.0, "duration": record["duration"],
                   "channel": channel, "custom": {"silent_source": record["source"]}}
    cut = {"id": rid, "start": 0.0, "duration": record["duration"], "channel": channel,
           "supervisions": [supervision], "recording": recording, "custom": provenance(record),
           "type": "MonoCut" if len(channels) == 1 else "MultiCut"}
    return recording, cut


def export_lhotse(records: list[dict[str, Any]], out: Path, progress: Progress | None = None) -> list[str]:
    items = [lhotse_items(r) for r in records]
    _write_jsonl_gz(out / "recordings.jsonl.gz", (recording for recording, _ in items))
    _write_jsonl_gz(out / "cuts.jsonl.gz", (cut for _, cut in items))
    if progress:
        progress(len(records), len(records), "cuts.jsonl.gz")
    return ["recordings.jsonl.gz", "cuts.jsonl.gz"]


def _hf_readme(splits: list[str]) -> str:
    """The dataset card whose YAML header declares one split per source (``datasets`` reads it)."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: \"{split}/*.parquet\""]
    lines += ["---", "", "# D_i: excerpts where one source is silent (silentmine)", "",
              "One split per silent source; `audio` holds the excerpt, the other columns its provenance.", ""]
    return "\n".join(lines)


HF_FEATURES = {"audio": {"_type": "Audio"}}  # the other columns' types come from the Arrow schema
HF_ROW_GROUP = 64  # excerpts per Parquet row group (their audio bytes are read together)


def _hf_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list[Any]] = {"audio": [{"bytes": Path(r["audio_file"]).read_bytes(),
                                                "path": f"{r['excerpt_id']}.flac"} for r in rows]}
    for name in ("num_samples", "duration", *provenance(rows[0])):
        columns[name] = [r[name] for r in rows]
    table = pa.table(columns)
    return table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()})


def export_hf(records: list[dict[str, Any]], out: Path, shard_size: int = SHARD_SIZE,
              progress: Progress | None = None) -> list[str]:
    if not records:
        raise ValueError("the D_i has no excerpts: a Hugging Face dataset needs at least one split")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 excerpt, got {shard_size}")
    files, done = [], 0
    splits = [s for s in SOURCES if any(r["source"] == s for r in records)]
    for split in splits:
        rows = [r for r in records if r["source"] == split]
        for first in range(0, len(rows), shard_size):
            name = f"{split}/part-{first // shard_size:05d}.parquet"
            chunk = rows[first:first + shard_size]
            with atomic_path(out / name) as tmp:
                writer = None
                try:
                    for lo in range(0, len(chunk), HF_ROW_GROUP):
                        table = _hf_table(chunk[lo:lo + HF_ROW_GROUP])
                        writer = writer or pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                        done += len(chunk[lo:lo + HF_ROW_GROUP])
                        if progress:
                            progress(done, len(records), chunk[min(lo + HF_ROW_GROUP, len(chunk)) - 1]["excerpt_id"])
                finally:
                    if writer is not None:
                        writer.close()
            files.append(name)
    write_bytes_atomic(out / "README.md", _hf_readme(splits).encode("utf-8"))
    return [*files, "README.md"]


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def webdataset_sample(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON member of one excerpt: ``source``, ``num_samples``, ``duration`` and the provenance."""
    return {"source": record["source"], "num_samples": record["num_samples"], "duration": record["duration"],
            **provenance(record)}


def export_webdataset(records: list[dict[str, Any]], out: Path, shard_size: int = SHARD_SIZE,
                      progress: Progress | None = None) -> list[str]:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 excerpt, got {shard_size}")
    files = []
    for first in range(0, len(records), shard_size):
        name = SHARD_PATTERN.format(first // shard_size)
        with atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for done, record in enumerate(records[first:first + shard_size], start=first + 1):
                if "." in record["excerpt_id"]:  # WebDataset splits a member name at its first dot
                    raise ValueError(f"excerpt id {record['excerpt_id']!r} holds a dot: not a WebDataset key")
                _tar_add(tar, f"{record['excerpt_id']}.flac", Path(record["audio_file"]).read_bytes())
                _tar_add(tar, f"{record['excerpt_id']}.json",
                         json.dumps(webdataset_sample(record), sort_keys=True).encode("utf-8"))
                if progress:
                    progress(done, len(records), record["excerpt_id"])
        files.append(name)
    return files


def nemo_line(record: dict[str, Any], reference: str = "excerpt") -> dict[str, Any]:
    """One NeMo manifest line: ``audio_filepath``, ``duration`` (and ``offset`` into the catalog
    file with ``reference="catalog"``), then the provenance."""
    if reference == "excerpt":
        where = {"audio_filepath": record["audio_file"], "duration": record["duration"]}
    elif reference == "catalog":
        where = {"audio_filepath": record["catalog_path"], "offset": float(record["start_s"]),
                 "duration": record["duration"]}
    else:
        raise ValueError(f"nemo reference must be one of {NEMO_REFERENCES}, got {reference!r}")
    return {**provenance(record), **where}


def export_nemo(records: list[dict[str, Any]], out: Path, reference: str = "excerpt",
                progress: Progress | None = None) -> list[str]:
    _write_jsonl(out / "manifest.jsonl", [nemo_line(r, reference) for r in records])
    if progress:
        progress(len(records), len(records), "manifest.jsonl")
    return ["manifest.jsonl"]


def export_csv(records: list[dict[str, Any]], out: Path, columns: list[str],
               progress: Progress | None = None) -> list[str]:
    with atomic_path(out / "excerpts.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["audio_file", "num_samples", "duration", *columns])
        writer.writeheader()
        writer.writerows({k: r[k] for k in writer.fieldnames} for r in records)
    if progress:
        progress(len(records), len(records), "excerpts.csv")
    return ["excerpts.csv"]


def build_exports(run: DatasetRun | str | os.PathLike, fmt: str, out: str | os.PathLike,
                  shard_size: int = SHARD_SIZE, nemo_reference: str = "excerpt",
                  progress: Progress | None = None) -> StageResult:
    """The exports stage (and ``silentmine export``): write ``run``'s D_i in format ``fmt`` (one
    of :data:`FORMATS`) into the folder ``out``; counts ``format``, ``excerpts``, ``excerpts_<s>``,
    ``seconds_<s>``, the summary lines and the ``files`` written (relative to ``out``).
    ``export.json`` (format, D_i, options, counts, files) is written last."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    run = DatasetRun.of(run)
    if not run.index_dir.is_dir():
        raise FileNotFoundError(f"{run.folder} is not a D_i folder (no index/)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = export_records(run)
    if fmt == "lhotse":
        files = export_lhotse(records, out, progress)
    elif fmt == "hf":
        files = export_hf(records, out, shard_size, progress)
    elif fmt == "webdataset":
        files = export_webdataset(records, out, shard_size, progress)
    elif fmt == "nemo":
        files = export_nemo(records, out, nemo_reference, progress)
    else:
        files = export_csv(records, out, list(run.index().columns), progress)
    counts: dict[str, Any] = {"format": fmt, "excerpts": len(records)}
    for source in SOURCES:
        rows = [r for r in records if r["source"] == source]
        counts[f"excerpts_{source}"] = len(rows)
        counts[f"seconds_{source}"] = round(sum(r["duration"] for r in rows), 3)
    summary = [f"{fmt}: {len(records)} excerpts in {len(files)} files under {out}"] + [
        f"  {s}: {counts[f'excerpts_{s}']} excerpts, {counts[f'seconds_{s}'] / 60:.1f} min" for s in SOURCES]
    write_json_atomic(out / EXPORT_RECORD, {"format": fmt, "dataset": str(run.folder.resolve()),
                                            "shard_size": shard_size if fmt in ("webdataset", "hf") else None,
                                            "nemo_reference": nemo_reference if fmt == "nemo" else None,
                                            "counts": counts, "files": files})
    return StageResult(counts, summary, files)


@dataclass(frozen=True)
class TarMember:
    """Where one excerpt's FLAC bytes lie in a WebDataset shard, and its JSON record."""

    shard: Path
    offset: int  # byte offset of the data in the tar file
    size: int  # bytes
    record: dict[str, Any]

    def read(self) -> bytes:
        with open(self.shard, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.size)
        if len(data) != self.size:
            raise ValueError(f"{self.shard} is truncated: {self.record.get('excerpt_id')} needs {self.size} bytes")
        return data


def webdataset_shards(location: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The tar shards of an export: a folder (its ``shards/*.tar``, or ``*.tar``), one tar, or a list."""
    if isinstance(location, (str, os.PathLike)):
        path = Path(location)
        if path.is_dir():
            found = sorted((path / "shards").glob("*.tar")) or sorted(path.glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"{path} holds no WebDataset shards (*.tar)")
            return found
        return [path]
    return [Path(p) for p in location]


def webdataset_members(location: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, TarMember]:
    """``excerpt_id -> TarMember`` of every excerpt in the shards (headers and JSON records are
    read; the audio bytes stay in the tar until :meth:`TarMember.read`).  ``ValueError`` for a
    key with a FLAC but no JSON member, or the other way round."""
    members: dict[str, TarMember] = {}
    for shard in webdataset_shards(location):
        flac, records = {}, {}
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.rpartition("/")[2].partition(".")
                if ext == "flac":
                    flac[key] = (info.offset_data, info.size)
                elif ext == "json":
                    records[key] = json.loads(tar.extractfile(info).read().decode("utf-8"))
        if set(flac) != set(records):
            odd = sorted(set(flac) ^ set(records))
            raise ValueError(f"{shard}: excerpts without both a .flac and a .json member: {odd[:5]}")
        for key, (offset, size) in flac.items():
            members[key] = TarMember(shard, offset, size, records[key])
    return members
