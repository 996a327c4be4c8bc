"""Unlabelled catalogs: listing, content checksums, stable track ids and shards.

A catalog is a folder tree of audio files or a text file listing one path per line.  Each
file gets ``checksum`` (SHA-256 of its bytes) and ``track_id`` (the checksum's first 16 hex
characters), so a track keeps its id when it is moved or renamed and two copies of the same
bytes are one track.  Tracks are grouped into shards of ``shard_size`` tracks; assignment is
append-only: tracks seen in a previous scan keep their shard, new or changed files fill new
shards, so adding tracks leaves every existing shard, and its outputs, untouched.

A rescan reads only new or changed files: a file whose path, size and modification time
(``mtime_ns``) equal the previous scan's keeps that scan's checksum without being read, unless
it was modified less than :data:`REUSE_MARGIN_NS` before the previous scan listed it (a write
within the same timestamp tick could then have gone unseen, as git's "racily clean" files).
The scan's counts say how many checksums were reused and how many computed; a file rewritten
with its size and time restored keeps a stale checksum, which ``silentmine verify --rehash``
(:func:`pipeline.mining.verify.check_scan`) finds by reading every file again.  Memory: the
listing and the previous scan's table (about a kilobyte per track), never a file's content
(hashed in 1 MiB blocks).
"""

from __future__ import annotations

import calendar
import functools
import os
import stat
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from pipeline import rejects as kinds
from pipeline.audio.io import file_checksum
from pipeline.storage.outputs import StageResult, stable_hash

# Extensions listed from a folder tree (lower case, without the dot).  Anything else in the
# tree (cover images, playlists, text) is not a candidate and is not listed.
AUDIO_EXTENSIONS = frozenset(
    "wav wave flac ogg oga opus mp3 mp2 m4a mp4 m4v aac aif aiff aifc wma wv ape caf au snd mka mkv webm".split()
)
TRACK_ID_LENGTH = 16

STAGE = "catalog"  # the scan's folder under the data root: <data_root>/catalog/<key>/
REJECT_STAGE = "scan"  # the stage named in the scan's rejects
REUSE_MARGIN_NS = 2_000_000_000  # see the module docstring; 2 s covers FAT's and SMB's mtime ticks
MISSING_SIZE = -1  # listing size of a file that cannot be stat'ed
BAD_NAME_SIZE = -2  # listing size of a file whose name is not valid UTF-8

LISTING_COLUMNS = ["path", "size", "mtime_ns"]
CATALOG_COLUMNS = ["path", "size", "mtime_ns", "checksum", "track_id", "shard"]


def list_files(catalog: str | os.PathLike) -> list[Path]:
    """Absolute paths of the catalog's candidate audio files, sorted.

    ``catalog`` is a folder (walked recursively, hidden entries skipped, audio extensions
    only) or a text file with one path per line (relative paths are taken relative to the
    list's folder; blank lines and lines starting with ``#`` are skipped).
    """
    return [Path(path) for path in candidate_files(catalog)]


def candidate_files(catalog: str | os.PathLike) -> Iterator[str]:
    """:func:`list_files` as strings, one at a time: a folder is walked in the order of sorted
    paths (each folder's entries by name), so it is never held whole."""
    catalog = Path(catalog).resolve()
    if catalog.is_file():
        paths = []
        for line in catalog.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line)
                paths.append(path if path.is_absolute() else catalog.parent / path)
        yield from (str(p) for p in sorted({p.absolute() for p in paths}))
        return
    if not catalog.is_dir():
        raise FileNotFoundError(f"catalog {catalog} is neither a folder nor a list of paths")
    yield from _walk_sorted(str(catalog))


def _walk_sorted(folder: str) -> Iterator[str]:
    """Audio files under ``folder`` in the order ``sorted(Path ...)`` gives: entries by name,
    a sub-folder's files at its name's place.  Hidden entries are skipped, symbolic links to
    folders are not followed, unreadable folders are passed over (as ``os.walk`` does)."""
    try:
        with os.scandir(folder) as entries:
            named = sorted(((e.name, e) for e in entries if not e.name.startswith(".")), key=lambda item: item[0])
    except OSError:
        return
    for name, entry in named:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if not entry.is_symlink():
                yield from _walk_sorted(entry.path)
        elif os.path.splitext(name)[1].lower().lstrip(".") in AUDIO_EXTENSIONS:
            yield entry.path


def path_text(path: str | os.PathLike) -> str | None:
    """``path`` as text that Parquet can store (valid UTF-8), or ``None`` when its name is not
    valid UTF-8 (bytes a Latin-1 or other legacy system wrote, decoded by Python as surrogates)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def escaped_path(path: str | os.PathLike) -> str:
    """A UTF-8 rendering of any path: undecodable bytes are shown as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def listing(catalog: str | os.PathLike) -> pd.DataFrame:
    """``path, size, mtime_ns`` of every candidate file, in path order.

    A file that cannot be stat'ed has size ``MISSING_SIZE`` (-1); a file whose name is not
    valid UTF-8 is listed by its :func:`escaped_path` with size ``BAD_NAME_SIZE`` (-2), so
    :func:`scan` rejects it with a reason instead of failing to store its name.
    """
    paths, sizes, mtimes = [], [], []
    for path in candidate_files(catalog):
        text = path_text(path)
        if text is None:
            paths.append(escaped_path(path))
            sizes.append(BAD_NAME_SIZE)
            mtimes.append(-1)
            continue
        try:
            info = os.stat(text)
            size, mtime = info.st_size, info.st_mtime_ns
        except OSError:
            size, mtime = MISSING_SIZE, -1
        paths.append(text)
        sizes.append(size)
        mtimes.append(mtime)
    return pd.DataFrame({"path": pd.Series(paths, dtype=str), "size": np.array(sizes, dtype=np.int64),
                         "mtime_ns": np.array(mtimes, dtype=np.int64)})


def listing_fingerprint(frame: pd.DataFrame) -> str:
    """A key that changes when a file is added, removed, resized or touched."""
    return stable_hash(frame[LISTING_COLUMNS].to_numpy().tolist())


def scan(
    files: pd.DataFrame,
    shard_size: int,
    previous: pd.DataFrame | None = None,
    previous_listed_ns: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Checksum ``files`` (a :func:`listing`) and assign shards; return ``(tracks, rejects, counts)``.

    Checksums of files whose ``(path, size, mtime_ns)`` match ``previous`` (an earlier scan's
    tracks) are reused, unless the file's ``mtime_ns`` is within :data:`REUSE_MARGIN_NS` of
    ``previous_listed_ns`` (when that scan listed the catalog, ns since the epoch) or later.
    Unreadable or empty files, names that are not valid UTF-8, anything but a regular file, and
    later copies of an already-listed content are returned as rejects (``path, track_id,
    stage, kind, reason``).  ``counts``: ``checksums_computed``, ``checksums_reused`` and
    ``bytes_hashed`` (the bytes read for the computed ones).
    """
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    files = files[LISTING_COLUMNS].reset_index(drop=True)
    checksums = np.full(len(files), None, dtype=object)
    if previous is not None and len(previous):
        row = _rows_of(files["path"], previous)
        seen = row >= 0
        reuse = seen.copy()
        for column in ("size", "mtime_ns"):
            reuse[seen] &= previous[column].to_numpy()[row[seen]] == files[column].to_numpy()[seen]
        if previous_listed_ns is not None:
            reuse &= files["mtime_ns"].to_numpy() < previous_listed_ns - REUSE_MARGIN_NS
        checksums[reuse] = previous["checksum"].to_numpy()[row[reuse]]
    missing = np.array([c is None for c in checksums], dtype=bool)
    counts = {"checksums_computed": 0, "checksums_reused": int((~missing).sum()), "bytes_hashed": 0}
    rejects = []  # (path, track_id, stage, kind, reason)
    paths, sizes = files["path"].to_numpy(), files["size"].to_numpy()
    for i in np.flatnonzero(missing):
        path, size = paths[i], int(sizes[i])
        problem = _unscannable(path, size)
        if problem:
            rejects.append((path, "", REJECT_STAGE, *problem))
            continue
        try:
            checksums[i] = file_checksum(path)
        except PermissionError:
            rejects.append((path, "", REJECT_STAGE, kinds.UNREADABLE, "file is not readable (permission denied)"))
            continue
        except OSError as err:
            rejects.append((path, "", REJECT_STAGE, kinds.UNREADABLE, f"file cannot be read ({err.strerror or err})"))
            continue
        counts["checksums_computed"] += 1
        counts["bytes_hashed"] += size
    tracks = files.assign(checksum=checksums)
    tracks = tracks[tracks["checksum"].notna()].reset_index(drop=True)
    tracks["track_id"] = tracks["checksum"].str[:TRACK_ID_LENGTH]
    duplicated = tracks["track_id"].duplicated(keep="first")
    first_path = tracks.drop_duplicates("track_id").set_index("track_id")["path"]
    for row in tracks[duplicated].itertuples():
        rejects.append((row.path, row.track_id, REJECT_STAGE, kinds.DUPLICATE,
                        f"same content as {first_path[row.track_id]}"))
    tracks = tracks[~duplicated].reset_index(drop=True)
    tracks["shard"] = _assign_shards(tracks, shard_size, previous)
    rejects_frame = pd.DataFrame(rejects, columns=["path", "track_id", "stage", "kind", "reason"])
    tracks = tracks[CATALOG_COLUMNS].sort_values(["shard", "path"]).reset_index(drop=True)
    return tracks, rejects_frame, counts


def _unscannable(path: str, size: int) -> tuple[str, str] | None:
    """``(kind, reason)`` why ``path`` (a listing row) cannot become a track before it is read, or ``None``.

    Empty files are rejected here, not as duplicates of each other (every empty file has the
    same checksum), and anything but a regular file (a named pipe, socket or device, where
    reading could block forever) is never opened.
    """
    if size == BAD_NAME_SIZE:
        return kinds.NOT_UTF8, "file name is not valid UTF-8 (shown with \\x escapes); rename the file to include it"
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        return kinds.UNREADABLE, "file is not readable (permission denied)"
    except OSError as err:
        return kinds.UNREADABLE, f"file cannot be read ({err.strerror or err})"
    if not stat.S_ISREG(mode):
        return kinds.NOT_REGULAR, "not a regular file (a named pipe, socket or device), so it is not read"
    if size == 0:
        return kinds.EMPTY, "file is empty (0 bytes)"
    return None


def _assign_shards(tracks: pd.DataFrame, shard_size: int, previous: pd.DataFrame | None) -> np.ndarray:
    """Shard numbers for ``tracks`` (in path order): a ``(path, checksum)`` of ``previous`` keeps
    its shard, the others fill new shards after the last one, in path order."""
    shards = np.full(len(tracks), -1, dtype=np.int64)
    start = 0
    if previous is not None and len(previous):
        row = _rows_of(tracks["path"], previous)
        kept = row >= 0
        kept[kept] = previous["checksum"].to_numpy()[row[kept]] == tracks["checksum"].to_numpy()[kept]
        shards[kept] = previous["shard"].to_numpy()[row[kept]]
        start = int(previous["shard"].max()) + 1
    new = np.flatnonzero(shards < 0)
    shards[new] = start + np.arange(len(new)) // shard_size
    return shards


def _rows_of(paths: pd.Series, previous: pd.DataFrame) -> np.ndarray:
    """For each of ``paths``, its row in ``previous`` (an earlier scan's tracks), or -1."""
    where = {path: i for i, path in enumerate(previous["path"])}
    return np.fromiter((where.get(path, -1) for path in paths), dtype=np.int64, count=len(paths))


def shard_key(shard_tracks: pd.DataFrame) -> str:
    """The key of one shard: its tracks' ids and paths (order-independent)."""
    return stable_hash(sorted(zip(shard_tracks["track_id"], shard_tracks["path"])))


def shards(tracks: pd.DataFrame) -> list[tuple[int, str, pd.DataFrame]]:
    """``(shard number, shard key, its tracks)`` for every shard of a scanned catalog."""
    return [
        (int(number), shard_key(group), group.reset_index(drop=True))
        for number, group in tracks.groupby("shard", sort=True)
    ]


def scan_shards(tracks_file: str | os.PathLike) -> list[tuple[int, str]]:
    """``(shard number, shard key)`` of every shard of a scan's ``tracks.parquet``, in shard order
    (:func:`shard_key` of each); read once per version of the file in a process (planning asks
    for them several times)."""
    info = os.stat(tracks_file)  # a new version is a new file (written aside, then renamed)
    return list(_scan_shards(os.fspath(tracks_file), info.st_ino, info.st_size, info.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _scan_shards(tracks_file: str, inode: int, size: int, mtime_ns: int) -> tuple[tuple[int, str], ...]:
    table = pd.read_parquet(tracks_file, columns=["shard", "track_id", "path"])
    order = np.argsort(table["shard"].to_numpy(), kind="stable")
    numbers = table["shard"].to_numpy()[order]
    ids, paths = table["track_id"].to_numpy()[order], table["path"].to_numpy()[order]
    bounds = np.flatnonzero(np.diff(numbers)) + 1
    return tuple((int(numbers[a]), stable_hash(sorted(zip(ids[a:b], paths[a:b]))))
                 for a, b in zip([0, *bounds], [*bounds, len(numbers)]) if b > a)


def read_scan_rejects(scan_folder: str | os.PathLike) -> pd.DataFrame:
    """The rejects of a ScanCatalog output (``rejects.parquet``: REJECTS_SCHEMA columns)."""
    return pd.read_parquet(Path(scan_folder) / "rejects.parquet")


def read_shard(tracks_file: str | os.PathLike, shard: int) -> pd.DataFrame:
    """One shard's rows of a scan's ``tracks.parquet``: ``path, size, mtime_ns, checksum, track_id, shard``.

    Filtered while reading: a scan of 100,000 tracks is read once per shard and stage."""
    return pd.read_parquet(tracks_file, filters=[("shard", "==", int(shard))]).reset_index(drop=True)


def build_catalog(
    catalog: str | os.PathLike, shard_size: int, out: Path, previous_tracks: str | os.PathLike | None = None
) -> StageResult:
    """The catalog stage: scan ``catalog`` into ``out/tracks.parquet`` and ``out/rejects.parquet``;
    counts ``tracks``, ``shards``, ``rejects``, ``bytes``, :func:`scan`'s checksum counts and
    ``listed_at_ns`` (when the listing began: the next scan's reuse rule reads it).

    ``previous_tracks`` is the ``tracks.parquet`` of the latest earlier scan of the same
    catalog and shard size (its folder's ``manifest.json`` says when it listed the catalog),
    whose checksums and shard assignment are reused.
    """
    from pipeline.storage.outputs import write_parquet_atomic

    previous, previous_listed_ns = None, None
    if previous_tracks:
        previous = _read_previous(previous_tracks)
        previous_listed_ns = listed_at_ns(Path(previous_tracks).parent)
    listed_ns = time.time_ns()
    tracks, rejects, counts = scan(listing(catalog), shard_size, previous, previous_listed_ns)
    write_parquet_atomic(tracks, Path(out) / "tracks.parquet")
    write_parquet_atomic(rejects, Path(out) / "rejects.parquet")
    reused = (f"{counts['checksums_reused']} reused (path, size and mtime as in {Path(previous_tracks).parent.name})"
              if previous_tracks else "none reused (no earlier scan)")
    return StageResult({
        "tracks": len(tracks),
        "shards": int(tracks["shard"].nunique()),
        "rejects": len(rejects),
        "bytes": int(tracks["size"].sum()),
        **counts,
        "listed_at_ns": listed_ns,
    }, summary=(f"checksums: {counts['checksums_computed']} computed ({counts['bytes_hashed']:,} bytes read), "
                f"{reused}; `silentmine verify --rehash` reads every file again",))


def _read_previous(tracks_file: str | os.PathLike) -> pd.DataFrame:
    """The columns of an earlier scan that a rescan reuses, with the Parquet reader's buffers
    handed back (they held about four times the table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(tracks_file, columns=[*LISTING_COLUMNS, "checksum", "shard"])
    frame = table.to_pandas(self_destruct=True)
    del table
    pa.default_memory_pool().release_unused()
    return frame


def listed_at_ns(scan_folder: str | os.PathLike) -> int | None:
    """When the scan in ``scan_folder`` listed its catalog, ns since the epoch: its manifest's
    ``counts.listed_at_ns``, or for a scan that did not record it the start of the stage
    (``started_at``, at second resolution: earlier, so the reuse rule is stricter); None
    without a readable manifest."""
    from pipeline.storage.outputs import read_manifest

    try:
        manifest = read_manifest(scan_folder)
    except (OSError, ValueError):
        return None
    recorded = (manifest.get("counts") or {}).get("listed_at_ns")
    if isinstance(recorded, int):
        return recorded
    started = manifest.get("started_at")
    try:
        return calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) * 1_000_000_000
    except (TypeError, ValueError):
        return None
