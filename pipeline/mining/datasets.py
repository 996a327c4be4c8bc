"""The D_i datasets: the shard store that extraction writes, and per-scan views over it.

**The shard store** (``<data_root>/excerpts/<K>/``, :class:`ShardStore`; ``K`` hashes the
detector, the calibration, ``min_seconds`` and the decoders) is where every extraction shard
(:mod:`pipeline.mining.extraction`) writes, whichever catalog it came from::

    shards/<shard_key>.json                      the shard's marker, written last
    index/source=<s>/part-<shard_key>.parquet    its index rows (PART_SCHEMA: INDEX_SCHEMA, source included)
    audio/<s>/<track_id[:2]>/<excerpt_id>.flac   its excerpts
    rejects/part-<shard_key>.parquet             the tracks it rejected (REJECTS_SCHEMA)

A marker holds the shard's ``counts`` (``tracks``, ``excerpts``, ``excerpts_<s>``,
``rejects``) and ``files`` (``index``: list, ``audio``: list, ``rejects``: one path, all
relative to the store folder).  Nothing in the store is ever deleted by a run: a shard's
output stays until the user removes it (``silentmine gc``).

**A view** (``<data_root>/datasets/<V>/``, :class:`DatasetRun`; ``V`` hashes ``K`` and the
catalog scan) is one catalog scan's D_i: ``index/`` and ``rejects/`` hold hard links (copies
where the filesystem cannot link) of exactly the parts of the scan's shards, plus the scan's
and the features stage's rejects, so that ``pd.read_parquet("<view>/index")`` reads exactly
this catalog's D_i.  A view with no excerpt holds one index part without rows,
``index/part-empty.parquet`` (:data:`EMPTY_INDEX_PART`, ``PART_SCHEMA``), so that its index still
reads as a table with every column, in pandas, pyarrow and DuckDB alike.  ``manifest.json``
(written last by the pipeline) records the store, the scan and the shard keys covered
(:func:`view_manifest_fields`) and the counts of :func:`build_datasets`.  Audio is not linked:
an index row's ``audio_path`` is relative to the data root (``excerpts/<K>/audio/...``), which is the view
folder's grandparent.

:func:`rejects_summary` counts the rejects by stage and by kind (the ``kind`` column, set where
each error was raised: :mod:`pipeline.rejects`) for people.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Collection, Iterator, Mapping

import pandas as pd
import pyarrow as pa

from pipeline import rejects as kinds
from pipeline.mining.schema import PART_SCHEMA, Excerpt, read_index, read_rejects
from pipeline.rejects import REJECTS_SCHEMA
from pipeline.sources import SOURCES
from pipeline.storage.outputs import (
    MANIFEST,
    StageResult,
    link_or_copy,
    read_manifest,
    write_parquet_atomic,
)

INDEX_DIR = "index"
AUDIO_DIR = "audio"
REJECTS_DIR = "rejects"
SHARDS_DIR = "shards"
SCAN_REJECTS = "part-scan.parquet"
# The one index part of a view without excerpts: no rows, PART_SCHEMA's columns, at the top of
# index/ (no source=<s>/ folder to belong to), only while the view has no other part.
EMPTY_INDEX_PART = f"{INDEX_DIR}/part-empty.parquet"
STAGE_ORDER = ("scan", "features", "extract")  # the stages that reject files, in pipeline order

def rejects_summary(rejects: pd.DataFrame, examples: int = 1) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Counts of ``rejects`` (REJECTS_SCHEMA rows) by stage and by kind, and summary lines.

    Lines: the total with its split by stage (pipeline order), then one line per kind (most
    frequent first) with ``examples`` file names and reasons.
    """
    stages = rejects["stage"].astype(str).value_counts()
    by_stage = {s: int(stages[s]) for s in [*STAGE_ORDER, *sorted(set(stages.index) - set(STAGE_ORDER))]
                if s in stages.index}
    kinds = rejects["kind"].astype(str)
    counted = kinds.value_counts()
    by_kind = {k: int(counted[k]) for k in sorted(counted.index, key=lambda k: (-counted[k], k))}
    if not len(rejects):
        return by_stage, by_kind, ["rejects: none"]
    lines = [f"rejects: {len(rejects)} files ({', '.join(f'{s} {n}' for s, n in by_stage.items())})"]
    for kind, count in by_kind.items():
        rows = rejects[kinds == kind].head(examples)
        shown = "; ".join(f"{Path(str(r.path)).name} [{r.stage}]: {r.reason}" for r in rows.itertuples())
        lines.append(f"  {kind}: {count}" + (f" (e.g. {shown}{', ...' if count > examples else ''})" if shown else ""))
    return by_stage, by_kind, lines


def excerpt_relpath(source: str, track_id: str, excerpt_id: str) -> str:
    """Posix path of an excerpt file relative to the shard store folder."""
    return f"{AUDIO_DIR}/{source}/{track_id[:2]}/{excerpt_id}.flac"


def index_part_relpath(source: str, shard_key: str) -> str:
    """Posix path of a shard's index part of ``source``, relative to a store or view folder."""
    return f"{INDEX_DIR}/source={source}/part-{shard_key}.parquet"


def rejects_part_relpath(shard_key: str) -> str:
    """Posix path of a shard's extraction rejects, relative to a store or view folder."""
    return f"{REJECTS_DIR}/part-{shard_key}.parquet"


def normal_relative_path(path: str) -> str | None:
    """``path`` as a normalised relative posix path, or None if it is absolute, empty or uses ``..``."""
    pure = PurePosixPath(str(path).replace("\\", "/"))
    if pure.is_absolute() or not pure.parts or ".." in pure.parts:
        return None
    return pure.as_posix()


class ShardStore:
    """The folder that extraction shards write into (layout in the module docstring)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def marker_path(self, shard_key: str) -> Path:
        return self.folder / SHARDS_DIR / f"{shard_key}.json"

    def shard_keys(self) -> list[str]:
        """Keys of every finished shard in the store (a marker exists), sorted."""
        folder = self.folder / SHARDS_DIR
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))

    def read_marker(self, shard_key: str) -> dict[str, Any]:
        """The marker of a finished shard; ``FileNotFoundError`` if the shard has none (not
        finished, or removed), ``ValueError`` if it is not a JSON object."""
        path = self.marker_path(shard_key)
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"shard {shard_key} has no marker {path}: it is not finished") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"shard marker {path} is not readable JSON: {err}") from None
        if not isinstance(marker, dict):
            raise ValueError(f"shard marker {path} is not a JSON object")
        return marker

    def relative_to(self, data_root: str | os.PathLike) -> str:
        """The store folder relative to ``data_root`` (posix), as views record it."""
        return Path(os.path.relpath(self.folder, data_root)).as_posix()


def marker_files(marker: Mapping[str, Any]) -> tuple[list[str], list[str], str | None]:
    """``(index parts, audio files, rejects part)`` a shard marker lists, relative to the store."""
    files = marker.get("files") or {}
    return list(files.get("index") or []), list(files.get("audio") or []), files.get("rejects")


def view_manifest_fields(store: ShardStore, data_root: str | os.PathLike, store_key: str, scan_key: str,
                         shard_keys: list[str]) -> dict[str, Any]:
    """The fields a view's ``manifest.json`` adds to the common ones: ``store`` (the store folder
    relative to the data root), ``store_key``, ``scan`` (the catalog scan's key) and ``shards``
    (the shard keys the view covers, in scan order)."""
    return {"store": store.relative_to(data_root), "store_key": store_key, "scan": scan_key,
            "shards": list(shard_keys)}


class DatasetRun:
    """One catalog scan's D_i: the view folder ``<data_root>/datasets/<V>/`` and its readers.

    ``data_root`` defaults to the folder's grandparent (the pipeline's layout); index rows'
    ``audio_path`` is relative to it.  The readers work on any folder with ``index/`` (and
    ``rejects/``); :attr:`manifest`, :attr:`shard_keys` and :attr:`store` need the manifest.
    """

    def __init__(self, folder: str | os.PathLike, data_root: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        self.data_root = Path(data_root) if data_root is not None else self.folder.parent.parent

    @classmethod
    def of(cls, run: "DatasetRun | str | os.PathLike") -> "DatasetRun":
        """``run`` itself, or the DatasetRun of a view folder path."""
        return run if isinstance(run, DatasetRun) else cls(run)

    def __repr__(self) -> str:
        return f"DatasetRun({str(self.folder)!r})"

    @property
    def index_dir(self) -> Path:
        return self.folder / INDEX_DIR

    @property
    def rejects_dir(self) -> Path:
        return self.folder / REJECTS_DIR

    @property
    def complete(self) -> bool:
        """True once the pipeline wrote the view's manifest (last)."""
        return (self.folder / MANIFEST).is_file()

    @cached_property
    def manifest(self) -> dict[str, Any]:
        if not self.complete:
            raise FileNotFoundError(f"{self.folder} has no {MANIFEST}: the D_i was not (completely) gathered")
        return read_manifest(self.folder)

    @property
    def shard_keys(self) -> list[str]:
        """The shard keys the view covers (from the manifest)."""
        return list(self.manifest.get("shards") or [])

    @property
    def store(self) -> ShardStore:
        """The shard store the view's parts come from (from the manifest)."""
        store = self.manifest.get("store")
        if not isinstance(store, str) or normal_relative_path(store) is None:
            raise ValueError(f"the manifest of {self.folder} names no shard store (field 'store': {store!r})")
        return ShardStore(self.data_root / store)

    def index(self, source: str | None = None) -> pd.DataFrame:
        """The D_i index (INDEX_SCHEMA columns), optionally of one source; empty if there is none."""
        return read_index(self.index_dir, source)

    def rejects(self) -> pd.DataFrame:
        """Every reject of the view (scan, features, extraction), REJECTS_SCHEMA columns."""
        return read_rejects(self.folder)

    def excerpts(self, source: str | None = None) -> Iterator[Excerpt]:
        """The excerpts (optionally of one source), in ``excerpt_id`` order."""
        index = self.index(source).sort_values("excerpt_id", kind="mergesort")
        for row in index.to_dict("records"):
            yield Excerpt.from_row(row)

    def audio_file(self, row: Excerpt | Mapping[str, Any] | Any) -> Path:
        """The excerpt file of an index row (an :class:`Excerpt`, a mapping, a Series or a named
        tuple with ``audio_path``); ``ValueError`` if the path is absolute or leaves the data root."""
        audio_path = row["audio_path"] if isinstance(row, Mapping) else row.audio_path
        relative = normal_relative_path(audio_path)
        if relative is None:
            raise ValueError(f"audio_path {audio_path!r} is not a relative path inside the data root")
        return self.data_root / relative


def _rejects_table(frame: pd.DataFrame) -> pa.Table:
    frame = frame.reindex(columns=REJECTS_SCHEMA.names)
    frame["kind"] = frame["kind"].fillna(kinds.OTHER)
    frame = frame.fillna("").astype(str)
    return pa.Table.from_pandas(frame, schema=REJECTS_SCHEMA, preserve_index=False)


def _view_parts(view_dir: Path) -> set[str]:
    parts = {p.relative_to(view_dir).as_posix() for p in (view_dir / INDEX_DIR).glob("source=*/part-*.parquet")}
    parts |= {p.relative_to(view_dir).as_posix() for p in (view_dir / REJECTS_DIR).glob("part-*.parquet")}
    return {p for p in parts if not PurePosixPath(p).name.startswith(".")}


def build_datasets(view_dir: str | os.PathLike, store: ShardStore | str | os.PathLike, shard_keys: list[str],
                   scan_rejects: pd.DataFrame, feature_rejects: dict[str, pd.DataFrame],
                   finished_before: Collection[str] = ()) -> StageResult:
    """The datasets stage: make ``view_dir`` hold exactly the D_i of ``shard_keys`` (finished
    shards of ``store``) and every reject.  Nothing in the store is touched.

    The shards' index and rejects parts are linked into the view; ``scan_rejects`` and
    ``feature_rejects`` (shard key -> that shard's rejects from the features stage) are written
    there; parts in the view that belong to no listed shard (an earlier, interrupted gathering)
    are removed from the view.  ``FileNotFoundError`` if a listed shard has no marker.  The
    counts hold ``shards``, ``excerpts``, ``excerpts_<s>``, ``hours_<s>``, ``rejects`` (total),
    ``rejects_<stage>``, ``rejects_by_kind`` ({kind: n}, kinds of :mod:`pipeline.rejects`),
    ``shards_unlisted`` and ``unlisted_shard_keys`` (finished shards of the store that this view
    does not list: other catalogs, other versions of this one), ``shards_reused``,
    ``shards_computed`` and ``reused_shard_keys`` (the listed shards in ``finished_before``:
    finished before this run); the summary: excerpts per source, then the rejects by stage and
    by kind with an example of each.
    """
    view_dir = Path(view_dir)
    store = store if isinstance(store, ShardStore) else ShardStore(store)
    wanted: dict[str, Path] = {}
    for key in shard_keys:
        index_parts, _, rejects_part = marker_files(store.read_marker(key))
        for rel in [*index_parts, *([rejects_part] if rejects_part else [])]:
            normal = normal_relative_path(rel)
            if normal is None or normal.split("/")[0] not in (INDEX_DIR, REJECTS_DIR):
                raise ValueError(f"shard {key}'s marker lists {rel!r}, not a part under {INDEX_DIR}/ or {REJECTS_DIR}/")
            wanted[normal] = store.folder / normal
    own = {f"{REJECTS_DIR}/{SCAN_REJECTS}", *(f"{REJECTS_DIR}/part-features-{key}.parquet" for key in feature_rejects)}
    has_excerpts = any(rel.startswith(f"{INDEX_DIR}/") for rel in wanted)
    for rel in sorted(_view_parts(view_dir) - set(wanted) - own):
        (view_dir / rel).unlink()  # the view's own link or copy; the store keeps its file
    for rel, source in wanted.items():
        link_or_copy(source, view_dir / rel)
    if has_excerpts:
        (view_dir / EMPTY_INDEX_PART).unlink(missing_ok=True)
    elif not (view_dir / EMPTY_INDEX_PART).exists():
        # no excerpt: the index is one part without rows, so that it reads as an empty table (written
        # once: rebuilding a view that stays empty touches no index file)
        write_parquet_atomic(PART_SCHEMA.empty_table(), view_dir / EMPTY_INDEX_PART)
    write_parquet_atomic(_rejects_table(scan_rejects), view_dir / REJECTS_DIR / SCAN_REJECTS)
    for key, frame in feature_rejects.items():
        write_parquet_atomic(_rejects_table(frame), view_dir / REJECTS_DIR / f"part-features-{key}.parquet")

    run = DatasetRun(view_dir)
    index, rejects = run.index(), run.rejects()
    listed = set(shard_keys)
    unlisted = [key for key in store.shard_keys() if key not in listed]
    counts: dict[str, Any] = {"shards": len(shard_keys), "excerpts": len(index), "rejects": len(rejects)}
    for source in SOURCES:
        rows = index[index["source"] == source]
        counts[f"excerpts_{source}"] = len(rows)
        counts[f"hours_{source}"] = round(float(rows["duration_s"].sum()) / 3600, 4)
    by_stage, by_kind, reject_lines = rejects_summary(rejects)
    for stage, count in by_stage.items():
        counts[f"rejects_{stage}"] = count
    counts["rejects_by_kind"] = by_kind
    counts["shards_unlisted"] = len(unlisted)
    counts["unlisted_shard_keys"] = unlisted
    finished = set(finished_before)
    reused = [key for key in shard_keys if key in finished]
    counts.update(shards_reused=len(reused), shards_computed=len(shard_keys) - len(reused), reused_shard_keys=reused)
    summary = [f"{s}: {counts[f'excerpts_{s}']} excerpts, {counts[f'hours_{s}'] * 60:.1f} min"
               for s in SOURCES] + reject_lines
    if unlisted:
        summary.append(f"store: {len(unlisted)} finished shards of other catalog scans kept, not listed")
    return StageResult(counts, summary)
