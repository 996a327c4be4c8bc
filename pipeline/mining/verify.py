"""Integrity check of an extraction run folder (the D_i index, its excerpts and its manifest).

A run folder holds ``index/source=<s>/part-*.parquet`` (``INDEX_SCHEMA``), the excerpts
``audio/<source>/<xx>/<excerpt_id>.flac``, ``rejects/part-*.parquet`` (``REJECTS_SCHEMA``) and
``manifest.json``.  :func:`verify_run` re-reads everything and returns one :class:`Problem` per
thing that is wrong; an empty list means the folder is exactly what the index says it is.

Problem kinds (``Problem.kind``):

* ``index_unreadable``: an index part is not a readable Parquet file or lies outside a
  ``source=<name>`` folder (``read_index`` skips invalid parts silently, so their rows are missing
  from every other check), or the index as a whole cannot be read (nothing else is checked);
* ``duplicate_id``: an ``excerpt_id`` appears on more than one row;
* ``unknown_source``: a row's ``source`` is not one of ``pipeline.sources.SOURCES``;
* ``bad_audio_path``: ``audio_path`` is absolute or leaves ``<run_dir>/audio``;
* ``missing_audio``: a row's excerpt file does not exist;
* ``audio_checksum``: the excerpt file's SHA-256 differs from ``audio_checksum``;
* ``audio_header``: the excerpt cannot be opened, or its rate, channels or length (samples) differ
  from ``sample_rate``, ``channels`` and ``end_sample - start_sample``;
* ``missing_catalog``: the catalog file an excerpt was cut from no longer exists;
* ``catalog_checksum``: the catalog file's SHA-256 differs from ``catalog_checksum`` (each distinct
  catalog file is hashed once), or the index records two checksums for one file;
* ``orphan_audio``: a file under ``<run_dir>/audio`` that no index row names;
* ``missing_manifest``: no ``manifest.json`` (the run did not finish);
* ``manifest_count``: a count in the manifest (``excerpts``, ``excerpts_<source>``, ``rejects``)
  is missing or differs from the index or the rejects table.

Temporary files of interrupted writers (names starting with ``.`` that contain ``.tmp-``, see
``pipeline.storage.outputs``) and anything inside a temporary folder are ignored.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
import soundfile as sf

from pipeline.audio.io import file_checksum
from pipeline.mining.schema import REJECTS_SCHEMA, read_index, read_rejects
from pipeline.sources import SOURCES
from pipeline.storage.outputs import MANIFEST, TMP_MARK, read_manifest

AUDIO_DIR = "audio"
INDEX_DIR = "index"
REJECTS_DIR = "rejects"


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a run folder.

    ``kind``: one of the kinds in the module docstring; ``subject``: the excerpt id, or a path
    (relative to the run folder for its own files, absolute for catalog files), or a count name;
    ``message``: what is wrong, for a person.
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
    per_source: dict[str, int] = field(default_factory=dict)


def is_temporary_name(name: str) -> bool:
    """True for the hidden temporaries of ``pipeline.storage.outputs`` (``.<name>.tmp-<pid>-<rand>``)."""
    return name.startswith(".") and TMP_MARK in name


def list_audio_files(run_dir: str | os.PathLike) -> list[str]:
    """Posix paths, relative to ``run_dir``, of every file under ``run_dir/audio`` (sorted).

    Temporary files, and everything inside temporary folders, are skipped.
    """
    run_dir = Path(run_dir)
    found = []
    for folder, dirs, files in os.walk(run_dir / AUDIO_DIR):
        dirs[:] = sorted(d for d in dirs if not is_temporary_name(d))
        for name in files:
            if not is_temporary_name(name):
                found.append((Path(folder) / name).relative_to(run_dir).as_posix())
    return sorted(found)


def _check_index_parts(run_dir: Path) -> list[Problem]:
    """Problems with the index's Parquet part files themselves."""
    import pyarrow.parquet as pq

    problems = []
    index_dir = run_dir / INDEX_DIR
    for part in sorted(index_dir.rglob("*.parquet")):
        rel = part.relative_to(run_dir)
        if any(is_temporary_name(name) or name.startswith((".", "_")) for name in rel.parts):
            continue
        if not part.parent.name.startswith("source=") or part.parent.parent != index_dir:
            problems.append(Problem("index_unreadable", rel.as_posix(),
                                    "index part is not in an index/source=<name>/ folder"))
            continue
        try:
            pq.ParquetFile(part).schema_arrow
        except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
            problems.append(Problem("index_unreadable", rel.as_posix(), f"not a readable Parquet file ({err}); "
                                    "its rows are missing from the index"))
    return problems


def normal_audio_path(audio_path: str) -> str | None:
    """``audio_path`` as a normalised posix path under ``audio/``, or None if it escapes."""
    path = PurePosixPath(str(audio_path).replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != AUDIO_DIR:
        return None
    return path.as_posix()


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


def _check_excerpts(run_dir: Path, index: pd.DataFrame, workers: int) -> list[Problem]:
    problems: list[Problem] = []
    present: list[tuple[tuple, Path]] = []  # (index row, excerpt file)
    for row in index.itertuples(index=False):
        rel = normal_audio_path(row.audio_path)
        if rel is None:
            problems.append(Problem("bad_audio_path", row.excerpt_id,
                                    f"audio_path {row.audio_path!r} is not a relative path under {AUDIO_DIR}/"))
            continue
        path = run_dir / rel
        if not path.is_file():
            problems.append(Problem("missing_audio", row.excerpt_id, f"excerpt file {rel} does not exist"))
            continue
        present.append((row, path))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checksums = list(pool.map(file_checksum, [path for _, path in present]))
    for (row, path), checksum in zip(present, checksums):
        rel = path.relative_to(run_dir).as_posix()
        if checksum != row.audio_checksum:
            problems.append(Problem("audio_checksum", row.excerpt_id,
                                    f"{rel} has SHA-256 {checksum[:16]}..., index records "
                                    f"{str(row.audio_checksum)[:16]}..."))
            continue
        header = _header_problem(path, row)
        if header:
            problems.append(Problem("audio_header", row.excerpt_id, f"{rel}: {header}"))
    return problems


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


def _check_manifest(run_dir: Path, index: pd.DataFrame, rejects: pd.DataFrame) -> list[Problem]:
    if not (run_dir / MANIFEST).is_file():
        return [Problem("missing_manifest", MANIFEST, "no manifest: the run did not finish (or was not written here)")]
    counts = read_manifest(run_dir).get("counts", {}) or {}
    expected = {"excerpts": (len(index), "index rows")}
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


def _verify(run_dir: str | os.PathLike, check_catalog: bool, workers: int) -> tuple[list[Problem], _Stats]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"extraction run folder {run_dir} does not exist")
    stats = _Stats()
    try:
        index = read_index(run_dir / INDEX_DIR)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        return [Problem("index_unreadable", INDEX_DIR, str(err))], stats
    rejects = read_rejects(run_dir)
    stats.excerpts = len(index)
    stats.seconds = float(index["duration_s"].sum())
    stats.rejects = len(rejects)
    stats.per_source = {s: int(n) for s, n in index["source"].value_counts().sort_index().items()}

    problems = _check_index_parts(run_dir)
    duplicated = index["excerpt_id"].value_counts()
    for excerpt_id, n in duplicated[duplicated > 1].sort_index().items():
        problems.append(Problem("duplicate_id", str(excerpt_id), f"excerpt id appears on {n} index rows"))
    for row in index[~index["source"].isin(SOURCES)].itertuples(index=False):
        problems.append(Problem("unknown_source", row.excerpt_id,
                                f"source {row.source!r} is not one of {list(SOURCES)}"))

    problems += _check_excerpts(run_dir, index, workers)
    if check_catalog:
        catalog_problems, stats.catalog_files = _check_catalog(index, workers)
        problems += catalog_problems

    on_disk = list_audio_files(run_dir)
    stats.audio_files = len(on_disk)
    indexed = {rel for rel in map(normal_audio_path, index["audio_path"]) if rel is not None}
    for rel in on_disk:
        if rel not in indexed:
            problems.append(Problem("orphan_audio", rel, "audio file has no index row"))

    problems += _check_manifest(run_dir, index, rejects)
    return problems, stats


def verify_run(run_dir: str | os.PathLike, check_catalog: bool = True, workers: int = 4) -> list[Problem]:
    """Every problem found in the extraction run folder ``run_dir``; empty when all is well.

    ``check_catalog`` re-hashes the catalog files the excerpts were cut from (each once);
    ``workers`` threads compute checksums.  Raises ``FileNotFoundError`` if ``run_dir`` is not
    a folder.
    """
    return _verify(run_dir, check_catalog, workers)[0]


def verify_cli(run_dir: str | os.PathLike, check_catalog: bool = True) -> int:
    """Print each problem on its own line, then ``verify: N problems`` or ``verify: OK (...)``.

    Returns the exit status: 1 when any problem was found, 0 otherwise.
    """
    problems, stats = _verify(run_dir, check_catalog, workers=4)
    for problem in problems:
        print(problem)
    if problems:
        print(f"verify: {len(problems)} problem{'s' if len(problems) != 1 else ''} in {run_dir}")
        return 1
    per_source = ", ".join(f"{s}={n}" for s, n in stats.per_source.items()) or "none"
    catalog = f"{stats.catalog_files} catalog files re-hashed" if check_catalog else "catalog not checked"
    print(f"verify: OK ({stats.excerpts} excerpts [{per_source}], {stats.seconds / 3600:.3f} h of audio, "
          f"{stats.audio_files} audio files, {catalog}, {stats.rejects} rejects)")
    return 0
