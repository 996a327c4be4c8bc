"""Integrity check of a catalog's D_i: the view, the shards it lists in the store, their audio.

A D_i is a view folder (``datasets/<key>/``: ``index/``, ``rejects/``, ``manifest.json``) over
the shard store it names (``excerpts/<key>/``: one marker per shard, the parts it links, the
excerpt files), laid out as :mod:`pipeline.mining.datasets` describes.  :func:`verify_run`
re-reads all of it and returns one :class:`Problem` per thing that is wrong; an empty list means
the D_i is exactly what its index, its markers and its manifest say.

Problem kinds (``Problem.kind``):

* ``index_unreadable``: an index part of the view is not a readable Parquet file or lies outside
  a ``source=<name>`` folder (``read_index`` skips invalid parts silently, so their rows are
  missing from every other check), or the index as a whole cannot be read (nothing else is
  checked); the part of a view without excerpts (``index/part-empty.parquet``) must hold no row;
* ``duplicate_id``: an ``excerpt_id`` appears on more than one row;
* ``unknown_source``: a row's ``source`` is not one of ``pipeline.sources.SOURCES``;
* ``bad_audio_path``: ``audio_path`` is absolute, leaves the data root, or is not under the
  store's ``audio/`` folder;
* ``missing_audio``: a row's excerpt file does not exist, or a file that a listed shard's marker
  names is not in the store;
* ``audio_checksum``: the excerpt file's SHA-256 differs from ``audio_checksum``;
* ``audio_header``: the excerpt cannot be opened, or its rate, channels or length (samples) differ
  from ``sample_rate``, ``channels`` and ``end_sample - start_sample``;
* ``missing_catalog``: the catalog file an excerpt was cut from no longer exists;
* ``catalog_checksum``: the catalog file's SHA-256 differs from ``catalog_checksum`` (each distinct
  catalog file is hashed once), or the index records two checksums for one file;
* ``orphan_audio``: a file in the store's ``audio/`` that no shard marker of the store names, or
  one that a listed shard names while its index parts have no row for it;
* ``missing_manifest``: the view has no ``manifest.json`` (it was not gathered);
* ``missing_store``: the manifest names no shard store, or the store folder does not exist;
* ``manifest_count``: a count in the manifest (``shards``, ``excerpts``, ``excerpts_<source>``,
  ``rejects``) is missing or differs from the shards listed, the index or the rejects table;
* ``missing_marker``: a shard the view lists has no readable marker (with its file list) in the
  store: it is not finished, or its marker was removed;
* ``missing_index_part`` / ``missing_rejects_part``: a part that a listed shard's marker names is
  missing from the view (its rows are not in the D_i) or from the store;
* ``part_differs``: a part of the view is neither the store's file nor a copy of it;
* ``unexpected_part``: a part in the view that no listed shard names (its rows would be read as
  part of the D_i), or the empty view's part beside other parts;
* ``marker_count``: a count in a shard's marker (``excerpts``, ``excerpts_<source>``,
  ``rejects``) differs from the rows of its parts or the audio files it names.

Checks of other stages' outputs (:func:`check_feature_shard`, :func:`check_checkpoint`,
:func:`check_scan`):

* ``scan_checksum``: a file of the catalog scan whose SHA-256 differs from the one the scan
  recorded (a rescan reuses the checksum of a file whose size and mtime are unchanged, so a
  file rewritten with both restored is found only by reading it), or that no longer exists;

* ``feature_shard``: a feature shard's ``.npy`` or its index is missing or unreadable, their frame
  counts disagree, or its marker counts other tracks than its index holds;
* ``checkpoint``: a checkpoint does not load with ``torch.load(weights_only=True)``.

Temporary files of interrupted writers (names starting with ``.`` that contain ``.tmp-``, see
``pipeline.storage.outputs``) and anything inside a temporary folder are ignored.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

import pandas as pd
import soundfile as sf

from pipeline.audio.io import file_checksum
from pipeline.mining.datasets import (
    AUDIO_DIR,
    EMPTY_INDEX_PART,
    INDEX_DIR,
    REJECTS_DIR,
    SCAN_REJECTS,
    DatasetRun,
    ShardStore,
    marker_files,
    normal_relative_path,
)
from pipeline.sources import SOURCES
from pipeline.storage.outputs import MANIFEST, is_temporary_name


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a D_i or another stage's output.

    ``kind``: one of the kinds in the module docstring; ``subject``: the excerpt id, a shard key,
    or a path (relative to the view folder for its own files, to the data root for the store's,
    absolute for catalog files), or a count name; ``message``: what is wrong, for a person.
    """

    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.message}"


@dataclass
class _Stats:
    excerpts: int = 0
    seconds: float = 0.0
    audio_files: int = 0
    catalog_files: int = 0
    rejects: int = 0
    shards: int = 0
    per_source: dict[str, int] = field(default_factory=dict)


def list_audio_files(folder: str | os.PathLike) -> list[str]:
    """Posix paths, relative to ``folder``, of every file under ``folder/audio`` (sorted).

    Temporary files, and everything inside temporary folders, are skipped.
    """
    folder = Path(folder)
    found = []
    for here, dirs, files in os.walk(folder / AUDIO_DIR):
        dirs[:] = sorted(d for d in dirs if not is_temporary_name(d))
        for name in files:
            if not is_temporary_name(name):
                found.append((Path(here) / name).relative_to(folder).as_posix())
    return sorted(found)


def _check_index_parts(view: Path) -> tuple[list[Problem], dict[str, int]]:
    """Problems with the view's index part files themselves, and the rows of each readable one."""
    import pyarrow.parquet as pq

    problems, rows = [], {}
    index_dir = view / INDEX_DIR
    for part in sorted(index_dir.rglob("*.parquet")):
        rel = part.relative_to(view)
        if any(is_temporary_name(name) or name.startswith((".", "_")) for name in rel.parts):
            continue
        if rel.as_posix() == EMPTY_INDEX_PART:  # a view without excerpts: checked to hold no row
            rows[rel.as_posix()] = _rows(part) or 0
            if rows[rel.as_posix()]:
                problems.append(Problem("index_unreadable", rel.as_posix(), "the empty view's index part holds rows"))
            continue
        if not part.parent.name.startswith("source=") or part.parent.parent != index_dir:
            problems.append(Problem("index_unreadable", rel.as_posix(),
                                    "index part is not in an index/source=<name>/ folder"))
            continue
        try:
            rows[rel.as_posix()] = pq.ParquetFile(part).metadata.num_rows
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            problems.append(Problem("index_unreadable", rel.as_posix(), f"not a readable Parquet file ({err}); "
                                    "its rows are missing from the index"))
    if EMPTY_INDEX_PART in rows and len(rows) > 1:
        problems.append(Problem("unexpected_part", EMPTY_INDEX_PART, "the part of a view without excerpts beside "
                                "other parts (DuckDB's hive reading refuses the mix)"))
    return problems, rows


def _rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        return None


def _header_problem(path: Path, row: tuple) -> str | None:
    """Why the excerpt's header disagrees with its index row (a named tuple), or None."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        return f"cannot open the excerpt: {err}"
    expected = (int(row.sample_rate), int(row.channels), int(row.end_sample) - int(row.start_sample))
    found = (int(info.samplerate), int(info.channels), int(info.frames))
    if found != expected:
        return (f"file holds {found[2]} samples x {found[1]} channels at {found[0]} Hz, index says "
                f"{expected[2]} x {expected[1]} at {expected[0]} Hz")
    return None


def _check_excerpts(run: DatasetRun, index: pd.DataFrame, audio_prefix: str | None,
                    workers: int) -> tuple[list[Problem], int]:
    """Every row's excerpt file: where it is, that it exists, its checksum and header."""
    problems: list[Problem] = []
    present: list[tuple[tuple, Path, str]] = []  # (index row, excerpt file, path relative to the data root)
    for row in index.itertuples(index=False):
        rel = normal_relative_path(row.audio_path)
        if rel is None or (audio_prefix is not None and not rel.startswith(audio_prefix)):
            where = f"under the store's {audio_prefix}" if audio_prefix else "inside the data root"
            problems.append(Problem("bad_audio_path", row.excerpt_id,
                                    f"audio_path {row.audio_path!r} is not a relative path {where}"))
            continue
        path = run.data_root / rel
        if not path.is_file():
            problems.append(Problem("missing_audio", row.excerpt_id, f"excerpt file {rel} does not exist"))
            continue
        present.append((row, path, rel))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checksums = list(pool.map(file_checksum, [path for _, path, _ in present]))
    for (row, path, rel), checksum in zip(present, checksums):
        if checksum != row.audio_checksum:
            problems.append(Problem("audio_checksum", row.excerpt_id,
                                    f"{rel} has SHA-256 {checksum[:16]}..., index records "
                                    f"{str(row.audio_checksum)[:16]}..."))
            continue
        header = _header_problem(path, row)
        if header:
            problems.append(Problem("audio_header", row.excerpt_id, f"{rel}: {header}"))
    return problems, len(present)


def _check_catalog(index: pd.DataFrame, workers: int) -> tuple[list[Problem], int]:
    problems: list[Problem] = []
    to_hash: list[tuple[str, str, int]] = []
    for catalog_path, rows in index.groupby("catalog_path", sort=True):
        recorded = sorted(set(rows["catalog_checksum"].astype(str)))
        if len(recorded) > 1:
            problems.append(Problem("catalog_checksum", catalog_path,
                                    f"the index records {len(recorded)} different checksums for this file"))
            continue
        if not Path(catalog_path).is_file():
            problems.append(Problem("missing_catalog", catalog_path,
                                    f"catalog file no longer exists ({len(rows)} excerpts were cut from it)"))
            continue
        to_hash.append((catalog_path, recorded[0], len(rows)))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checksums = list(pool.map(file_checksum, [path for path, _, _ in to_hash]))
    for (catalog_path, recorded, n_rows), checksum in zip(to_hash, checksums):
        if checksum != recorded:
            problems.append(Problem("catalog_checksum", catalog_path,
                                    f"catalog file changed since extraction: SHA-256 {checksum[:16]}..., index "
                                    f"records {recorded[:16]}... ({n_rows} excerpts were cut from it)"))
    return problems, len(to_hash)


def _same_content(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or (a.stat().st_size == b.stat().st_size and file_checksum(a) == file_checksum(b))
    except OSError:
        return False


def _view_parts(view: Path) -> set[str]:
    parts = {p.relative_to(view).as_posix() for p in (view / INDEX_DIR).glob("source=*/*.parquet")}
    parts |= {p.relative_to(view).as_posix() for p in (view / REJECTS_DIR).glob("*.parquet")}
    return {p for p in parts if not any(n.startswith((".", "_")) for n in PurePosixPath(p).parts)}


def _check_part(view: Path, store: ShardStore, prefix: str, rel: str, key: str, what: str) -> list[Problem]:
    kind = "missing_index_part" if what == "index" else "missing_rejects_part"
    problems = []
    in_view, in_store = view / rel, store.folder / rel
    if not in_store.is_file():
        problems.append(Problem(kind, f"{prefix}/{rel}", f"shard {key}'s {what} part is missing from the store"))
    if not in_view.is_file():
        problems.append(Problem(kind, rel, f"shard {key}'s {what} part is missing from the view: "
                                           f"its rows are not in the D_i"))
    elif in_store.is_file() and not _same_content(in_view, in_store):
        problems.append(Problem("part_differs", rel, f"the view's {what} part of shard {key} differs from "
                                                     f"the store's {prefix}/{rel}"))
    return problems


def _check_shards(run: DatasetRun, store: ShardStore, prefix: str, index: pd.DataFrame,
                  part_rows: dict[str, int]) -> list[Problem]:
    """Every shard the view lists: marker, parts (view and store), counts, the audio it names;
    then the view's parts no shard names and the store's audio no marker names."""
    view = run.folder
    problems: list[Problem] = []
    indexed = {rel for rel in map(normal_relative_path, index["audio_path"]) if rel is not None}
    expected = {f"{REJECTS_DIR}/{SCAN_REJECTS}"}
    for key in run.shard_keys:
        expected.add(f"{REJECTS_DIR}/part-features-{key}.parquet")
        try:
            marker = store.read_marker(key)
        except (FileNotFoundError, ValueError) as err:
            problems.append(Problem("missing_marker", key, str(err)))
            continue
        if "files" not in marker:
            problems.append(Problem("missing_marker", key, f"the marker of shard {key} lists no files"))
            continue
        index_parts, audio, rejects_part = marker_files(marker)
        found: dict[str, int] = {"excerpts": 0}
        complete = True
        for rel in index_parts:
            expected.add(rel)
            part_problems = _check_part(view, store, prefix, rel, key, "index")
            complete = complete and not part_problems
            problems += part_problems
            rows = part_rows.get(rel) if (view / rel).is_file() else _rows(store.folder / rel)
            source = PurePosixPath(rel).parent.name.removeprefix("source=")
            found[f"excerpts_{source}"] = found.get(f"excerpts_{source}", 0) + (rows or 0)
            found["excerpts"] += rows or 0
        if rejects_part:
            expected.add(rejects_part)
            problems += _check_part(view, store, prefix, rejects_part, key, "rejects")
            source_part = view / rejects_part if (view / rejects_part).is_file() else store.folder / rejects_part
            found["rejects"] = _rows(source_part) or 0
        counts = marker.get("counts") or {}
        names = ["excerpts", *(f"excerpts_{s}" for s in SOURCES), "rejects"]
        for name in names:
            actual = found.get(name, 0)
            if name in counts and counts[name] != actual:
                problems.append(Problem("marker_count", key, f"the marker of shard {key} counts {name} = "
                                                             f"{counts[name]}, its files hold {actual}"))
        if len(audio) != found["excerpts"]:
            problems.append(Problem("marker_count", key, f"the marker of shard {key} names {len(audio)} audio "
                                                         f"files, its index parts hold {found['excerpts']} rows"))
        for rel in audio:
            claimed = f"{prefix}/{rel}"
            if claimed in indexed:
                continue  # checked with its row
            if not (store.folder / rel).is_file():
                problems.append(Problem("missing_audio", claimed, f"shard {key}'s excerpt file is missing"))
            elif complete:
                problems.append(Problem("orphan_audio", claimed, f"shard {key} names this file; no index row does"))
    for rel in sorted(_view_parts(view) - expected):
        problems.append(Problem("unexpected_part", rel, "no shard of the view names this part; its rows are "
                                                        "read as part of the D_i"))
    named = set()
    for key in store.shard_keys():
        try:
            named.update(marker_files(store.read_marker(key))[1])
        except (FileNotFoundError, ValueError):
            continue  # a listed shard's bad marker is reported above; others are not this view's
    for rel in list_audio_files(store.folder):
        if rel not in named:
            problems.append(Problem("orphan_audio", f"{prefix}/{rel}", "file in the shard store that no shard "
                                                                       "marker names"))
    return problems


def _check_manifest(run: DatasetRun, index: pd.DataFrame, rejects: pd.DataFrame) -> list[Problem]:
    counts = run.manifest.get("counts", {}) or {}
    expected = {"shards": (len(run.shard_keys), "shards listed"), "excerpts": (len(index), "index rows")}
    for source in SOURCES:
        expected[f"excerpts_{source}"] = (int((index["source"] == source).sum()), f"index rows of {source}")
    expected["rejects"] = (len(rejects), "rejects rows")
    problems = []
    for name, (actual, what) in expected.items():
        if name not in counts:
            problems.append(Problem("manifest_count", name, f"the manifest has no count {name!r} ({what}: {actual})"))
        elif counts[name] != actual:
            problems.append(Problem("manifest_count", name,
                                    f"the manifest counts {counts[name]}, there are {actual} {what}"))
    return problems


def _verify(run: DatasetRun | str | os.PathLike, check_catalog: bool, workers: int) -> tuple[list[Problem], _Stats]:
    run = DatasetRun.of(run)
    if not run.folder.is_dir():
        raise FileNotFoundError(f"D_i folder {run.folder} does not exist")
    stats = _Stats()
    problems, part_rows = _check_index_parts(run.folder)
    try:
        index = run.index()
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        return problems + [Problem("index_unreadable", INDEX_DIR, str(err))], stats
    rejects = run.rejects()
    stats.excerpts = len(index)
    stats.seconds = float(index["duration_s"].sum())
    stats.rejects = len(rejects)
    stats.per_source = {s: int(n) for s, n in index["source"].value_counts().sort_index().items()}

    duplicated = index["excerpt_id"].value_counts()
    for excerpt_id, n in duplicated[duplicated > 1].sort_index().items():
        problems.append(Problem("duplicate_id", str(excerpt_id), f"excerpt id appears on {n} index rows"))
    for row in index[~index["source"].isin(SOURCES)].itertuples(index=False):
        problems.append(Problem("unknown_source", row.excerpt_id,
                                f"source {row.source!r} is not one of {list(SOURCES)}"))

    store, prefix = None, None
    if not run.complete:
        problems.append(Problem("missing_manifest", MANIFEST, "no manifest: the D_i was not gathered here"))
    else:
        try:
            store = run.store
            prefix = store.relative_to(run.data_root)
            if not store.folder.is_dir():
                problems.append(Problem("missing_store", prefix, "the shard store the manifest names does not exist"))
                store = None
        except ValueError as err:
            problems.append(Problem("missing_store", MANIFEST, str(err)))

    excerpt_problems, stats.audio_files = _check_excerpts(
        run, index, f"{prefix}/{AUDIO_DIR}/" if store is not None else None, workers)
    problems += excerpt_problems
    if check_catalog:
        catalog_problems, stats.catalog_files = _check_catalog(index, workers)
        problems += catalog_problems
    if store is not None:
        stats.shards = len(run.shard_keys)
        problems += _check_shards(run, store, prefix, index, part_rows)
    if run.complete:
        problems += _check_manifest(run, index, rejects)
    return problems, stats


def verify_run(run: DatasetRun | str | os.PathLike, check_catalog: bool = True, workers: int = 4) -> list[Problem]:
    """Every problem found in a D_i (a :class:`DatasetRun` or its view folder); empty when all is well.

    ``check_catalog`` re-hashes the catalog files the excerpts were cut from (each once);
    ``workers`` threads compute checksums.  Raises ``FileNotFoundError`` if the folder does not
    exist.
    """
    return _verify(run, check_catalog, workers)[0]


def check_scan(tracks_file: str | os.PathLike, workers: int = 4) -> tuple[list[Problem], int]:
    """Re-hash every file of a catalog scan (its ``tracks.parquet``) against the checksum the scan
    recorded, reused ones included; return the ``scan_checksum`` problems and the files read."""
    tracks = pd.read_parquet(tracks_file, columns=["path", "checksum"])
    present = [(path, recorded) for path, recorded in zip(tracks["path"], tracks["checksum"]) if Path(path).is_file()]
    problems = [Problem("scan_checksum", path, "catalog file of the scan no longer exists")
                for path in sorted(set(tracks["path"]) - {path for path, _ in present})]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checksums = pool.map(file_checksum, [path for path, _ in present])
        for (path, recorded), checksum in zip(present, checksums):
            if checksum != recorded:
                problems.append(Problem("scan_checksum", path, f"SHA-256 {checksum[:16]}..., the scan records "
                                        f"{recorded[:16]}...: the file changed since it was hashed"))
    return problems, len(present)


def scan_tracks_file(run: DatasetRun | str | os.PathLike) -> Path:
    """The ``tracks.parquet`` of the catalog scan a D_i was gathered for (its manifest's ``scan``)."""
    from pipeline.corpora.catalog import STAGE

    run = DatasetRun.of(run)
    key = run.manifest.get("scan") if run.complete else None
    if not key:
        raise FileNotFoundError(f"{run.folder} names no catalog scan (no manifest, or an old one)")
    return run.data_root / STAGE / key / "tracks.parquet"


def check_feature_shard(npy_path: str | os.PathLike, tracks: int | None = None) -> list[Problem]:
    """Problems of one feature shard (``.npy`` and its index, :mod:`pipeline.features.store`):
    missing, unreadable, frame counts that disagree, or not ``tracks`` tracks (its marker's count)."""
    from pipeline.features.store import FeatureShard, index_path_for

    npy_path = Path(npy_path)
    for path in (npy_path, index_path_for(npy_path)):
        if not path.is_file():
            return [Problem("feature_shard", str(path), "file of a finished feature shard is missing")]
    try:
        shard = FeatureShard(npy_path)
    except (OSError, ValueError, KeyError) as err:
        return [Problem("feature_shard", str(npy_path), f"unreadable: {err}")]
    if tracks is not None and len(shard) != tracks:
        return [Problem("feature_shard", str(npy_path),
                        f"its marker counts {tracks} tracks, its index holds {len(shard)}")]
    return []


def check_checkpoint(path: str | os.PathLike) -> list[Problem]:
    """A problem when the checkpoint at ``path`` is missing or does not load with
    ``torch.load(weights_only=True)``."""
    import torch

    path = Path(path)
    if not path.is_file():
        return [Problem("checkpoint", str(path), "checkpoint of a finished stage is missing")]
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any failure to load is the finding
        return [
            Problem(
                "checkpoint",
                str(path),
                f"does not load with torch.load(weights_only=True): {type(err).__name__}: {str(err)[:200]}",
            )
        ]
    return []


def verify_cli(
    run: DatasetRun | str | os.PathLike,
    check_catalog: bool = True,
    others: Iterable[Problem] = (),
    checked: Iterable[str] = (),
    rehash_scan: bool = False,
) -> int:
    """Print each problem on its own line (the D_i's, then ``others``: other stages'), then
    ``verify: N problems`` or ``verify: OK (...)``; ``checked`` names the other outputs checked.
    ``rehash_scan``: also :func:`check_scan` every file of the D_i's catalog scan.

    Returns the exit status: 1 when any problem was found, 0 otherwise.
    """
    run = DatasetRun.of(run)
    problems, stats = _verify(run, check_catalog, workers=4)
    problems += list(others)
    checked = list(checked)
    if rehash_scan:
        scan_problems, files = check_scan(scan_tracks_file(run))
        problems += scan_problems
        checked.append(f"{files} files of the catalog scan re-hashed")
    for problem in problems:
        print(problem)
    if problems:
        print(f"verify: {len(problems)} problem{'s' if len(problems) != 1 else ''} in {run.folder}")
        return 1
    per_source = ", ".join(f"{s}={n}" for s, n in stats.per_source.items()) or "none"
    catalog = f"{stats.catalog_files} catalog files re-hashed" if check_catalog else "catalog not checked"
    also = list(checked)
    print(
        f"verify: OK ({stats.excerpts} excerpts [{per_source}] of {stats.shards} shards, "
        f"{stats.seconds / 3600:.3f} h of audio, {stats.audio_files} audio files, {catalog}, {stats.rejects} rejects"
        + (f"; also {', '.join(also)}" if also else "")
        + ")"
    )
    return 0
