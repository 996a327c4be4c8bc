"""``webdataset``: tar shards ``shards/d_i-<n>.tar`` of ``shard_size`` excerpts each, members
``<excerpt_id>.flac`` (the file's bytes) and ``<excerpt_id>.json`` (source, num_samples,
duration and the provenance); member times are 0, so the bytes depend on the D_i only.
:func:`webdataset_members` indexes them for random access (the remix sampler)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.exports.records import SHARD_SIZE, provenance
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import atomic_path

SHARD_PATTERN = "shards/d_i-{:06d}.tar"


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
