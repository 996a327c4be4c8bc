"""Keyed, atomic stage outputs and their manifests.

Every stage writes into ``<data_root>/<stage>/<key>/`` where ``key`` hashes the stage's
significant parameters with its inputs' keys, so a change anywhere upstream gives a new
folder and nothing stale is ever reused.  Files are written under a hidden temporary name
(``.<name>.tmp-<pid>-<rand>``) and renamed into place; ``manifest.json`` is written last
and is the stage's completion marker, so a killed run never leaves a folder that looks
complete.  Readers skip names that start with ``.``.

Every stage's body is one library function, ``build_<stage>`` (``<stage>``: its folder name
under the data root), that writes the stage's files and returns a :class:`StageResult`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
TMP_MARK = ".tmp-"
KEY_LENGTH = 16  # hex characters of SHA-256 kept in folder names

# Packages whose versions change results; recorded in every manifest.
TRACKED_PACKAGES = ("numpy", "scipy", "torch", "kymatio", "soundfile", "soxr", "av",
                    "pandas", "pyarrow", "luigi", "museval")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, the input of every hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(obj: Any, length: int = KEY_LENGTH) -> str:
    """Hex SHA-256 prefix of ``canonical_json(obj)``: equal inputs give equal keys."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def stage_key(stage: str, params: dict[str, Any], input_keys: dict[str, str]) -> str:
    """The folder key of a stage from its significant parameters and its inputs' keys."""
    return stable_hash({"stage": stage, "params": params, "inputs": input_keys})


def tmp_name(final: Path) -> Path:
    """A hidden temporary sibling of ``final``, unique to this process."""
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def is_temporary(path: Path) -> bool:
    """True for names that readers must ignore (temporary or hidden)."""
    return path.name.startswith(".")


def is_temporary_name(name: str) -> bool:
    """True for the leftovers of writers (``.<name>.tmp-<pid>-<rand>``, see :func:`tmp_name`)."""
    return name.startswith(".") and TMP_MARK in name


def plain(value: Any) -> Any:
    """A JSON-ready copy of ``value``: mappings become dicts with string keys, tuples and lists
    become lists, numpy scalars numbers; anything else is returned as it is."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return str(value)
    return value


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``final``.

    Works for files and folders.  On any exception the temporary is removed and
    ``final`` is left untouched, so a partial output is never visible under its name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        yield tmp
        if tmp.is_dir() and final.is_dir():
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            _remove(tmp)


def link_or_copy(source: str | os.PathLike, final: str | os.PathLike) -> None:
    """Make ``final`` a hard link of ``source`` (a copy where linking fails), atomically; nothing
    to do when it already is one."""
    final = Path(final)
    if final.exists() and os.path.samefile(source, final):
        return
    with atomic_path(final) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_json_atomic(final: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def clean_temporaries(folder: str | os.PathLike) -> int:
    """Remove leftovers of killed writers (``*.tmp-*``) under ``folder``; return the count."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    removed = 0
    for path in sorted(folder.rglob(f"*{TMP_MARK}*"), key=lambda p: -len(p.parts)):
        if path.exists() and is_temporary_name(path.name):
            _remove(path)
            removed += 1
    return removed


def clean_temporaries_matching(folder: str | os.PathLike, patterns: list[str]) -> int:
    """Remove leftovers of killed writers under ``folder`` whose path matches one of the glob
    ``patterns`` (relative to ``folder``, e.g. ``"shards/.<key>.*"``); return the count.

    For folders shared by concurrent writers (the shards of one stage): each shard cleans only
    its own names, never a temporary that another worker may be writing.
    """
    folder = Path(folder)
    removed = 0
    for pattern in patterns:
        for path in sorted(folder.glob(pattern), key=lambda p: -len(p.parts)):
            if path.exists() and is_temporary_name(path.name):
                _remove(path)
                removed += 1
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the running code (with ``+dirty`` if modified), else the package version.

    Read once per process (two ``git`` calls), not once per shard marker."""
    from pipeline import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+{commit[:12]}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


@dataclass(frozen=True)
class StageResult:
    """What a stage body (``build_<stage>``) returns.

    ``counts``: plain JSON values (counts, figures, small tables as records) for the manifest
    (or a shard's marker) and the run journal; ``summary``: lines for people, in the manifest
    (and a shard's marker when there are any); ``files``: what a shard of a catalog-wide stage
    wrote, relative to the stage folder, listed in its marker (a list, or an object of lists;
    None: not listed).
    """

    counts: dict[str, Any] = field(default_factory=dict)
    summary: tuple[str, ...] = ()
    files: list[str] | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", dict(self.counts))
        object.__setattr__(self, "summary", tuple(self.summary))


def write_manifest(
    folder: str | os.PathLike,
    stage: str,
    key: str,
    params: dict[str, Any],
    inputs: dict[str, str],
    counts: dict[str, Any] | None = None,
    seed: int | None = None,
    started: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` into ``folder`` (last, atomically) and return it.

    It records what made the output: stage, key, parameters, input keys, code and package
    versions, the audio decoders (``decoders``: :func:`pipeline.audio.io.decoder_fingerprint`),
    seed, torch's thread count (:func:`pipeline.threads.torch_threads`), wall time in seconds,
    and the stage's own counts.
    """
    from pipeline.audio.io import decoder_fingerprint
    from pipeline.threads import torch_threads

    now = time.time()
    manifest = {
        "stage": stage,
        "key": key,
        "params": params,
        "inputs": inputs,
        "seed": seed,
        "threads": torch_threads(),
        "code_version": code_version(),
        "packages": package_versions(),
        "decoders": decoder_fingerprint(),
        "command": " ".join(sys.argv),
        "host": platform.node(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now if started is None else started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "wall_s": None if started is None else round(now - started, 3),
        "counts": counts or {},
    }
    if extra:
        manifest.update(extra)
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    with open(Path(folder) / MANIFEST) as fh:
        return json.load(fh)


def write_png_atomic(figure, final: str | os.PathLike, dpi: int = 100) -> None:
    """Save the matplotlib ``figure`` as a PNG file at ``final``, atomically."""
    with atomic_path(final) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)


def write_parquet_atomic(table, final: str | os.PathLike) -> None:
    """Write a pandas DataFrame or pyarrow Table to ``final`` as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp)


def completed_outputs(stage_dir: str | os.PathLike, **params: Any) -> list[tuple[Path, dict[str, Any]]]:
    """Completed folders of a stage whose manifest parameters include ``params``, oldest first."""
    found = []
    for manifest_path in Path(stage_dir).glob(f"*/{MANIFEST}"):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            manifest = json.loads(manifest_path.read_text())
            if all(manifest.get("params", {}).get(k) == v for k, v in params.items()):
                found.append((manifest_path.parent, manifest))
    return sorted(found, key=lambda item: item[1].get("finished_at", ""))
