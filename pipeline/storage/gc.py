"""Garbage collection of a data root: the stage outputs that no configuration in use reaches.

Pure library (no Luigi).  What a configuration reaches is a :class:`Reach`, made from the
stage descriptions of its DAG (:class:`pipeline.storage.status.StageDescription`):

- a plain stage reaches its folder ``<data_root>/<stage>/<key>/`` as a whole;
- a shard stage reaches its folder, shared by all its shards, and in it only the shards
  that one of its shard tasks names: a shard's outputs are its marker ``shards/<K>.json``,
  the files beside it named ``<K>.*`` (``<K>.npy``, ``<K>.index.parquet``, ...) and the
  files its marker lists under ``"files"`` (paths relative to the stage folder), if any.

:func:`plan` lists what lies under the data root and is reached by none of the given
configurations: whole stage folders, and shard outputs inside reached shard folders.  Only
``<data_root>/<stage>/<key>/`` folders of known stage names are candidates, so the journal,
the demo corpus and anything else that is not a stage folder are never touched.  When it
cannot tell (a stage that gathers shards has not listed them yet because its catalog scan
has not run; a name that is not a key; an overlap with a configured input) it keeps the
thing and says why.  :func:`delete` removes what the plan marks for removal, completion
markers first, so an interrupted delete never leaves an output that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.storage.journal import JOURNAL_FOLDER
from pipeline.storage.outputs import KEY_LENGTH, MANIFEST
from pipeline.storage.status import SHARDS_DIR, StageDescription

STAGE_FOLDER, SHARD_OUTPUT = "stage folder", "shard output"
LISTED_FILES = "files"  # a shard marker's optional list (or object of lists) of its files, relative to the stage folder
KEY_NAME = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}")


@dataclass
class Reach:
    """What one configuration reaches: ``whole`` folders (plain stages), the markers of the
    shards it names per shard-stage folder (``shards``), whether a gathering stage's shards
    are still unknown (``pending``), and paths it reads that must never be touched."""

    label: str
    whole: set[Path] = field(default_factory=set)
    shards: dict[Path, set[Path]] = field(default_factory=dict)
    pending: bool = False
    protected: set[Path] = field(default_factory=set)


@dataclass
class Entry:
    """One output under the data root that no configuration is known to reach.

    ``path``: a stage folder, or a shard's marker (or first file, without marker);
    ``files``: what goes with it (a stage folder: the folder); ``size``: bytes;
    ``remove``: False when it is kept because reachability is unsure (``note`` says why).
    """

    path: Path
    kind: str
    files: list[Path]
    size: int
    remove: bool
    note: str = ""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).resolve()


def reach(label: str, descriptions: Iterable[StageDescription], protected: Iterable[str | os.PathLike] = ()) -> Reach:
    """The :class:`Reach` of one configuration's stage descriptions; ``protected``: its inputs
    (stem set, catalog, ...) and the journal, never to be touched whatever their place."""
    result = Reach(label, protected={_resolved(p) for p in protected})
    for d in descriptions:
        folder = _resolved(d.folder)
        if d.sharded:
            result.shards.setdefault(folder, set()).update(_resolved(m) for m in d.markers or ())
        else:
            result.whole.add(folder)
        result.whole.update(_resolved(p) for p in d.reads)
        result.pending |= d.shards_pending
    return result


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (or of ``path``), symbolic links not followed."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _overlaps(path: Path, others: Iterable[Path]) -> Path | None:
    for other in others:
        if path == other or path in other.parents or other in path.parents:
            return other
    return None


def _finished(folder: Path) -> str:
    """What a stage folder holds, in a few words: when it finished, or how many shards."""
    try:
        with open(folder / MANIFEST) as fh:
            return f"finished {json.load(fh).get('finished_at', '?')}"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        shards = sum(1 for n in os.listdir(folder / SHARDS_DIR) if n.endswith(".json") and not n.startswith("."))
        return f"{shards} finished shard{'s' if shards != 1 else ''}"
    except OSError:
        return f"no {MANIFEST}: never finished"


def _strings(value) -> Iterator[str]:
    """Every string in a JSON value (lists and objects walked)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _listed_files(marker: Path, folder: Path) -> list[Path]:
    """The existing files a shard marker lists under ``"files"`` (a list, or an object of lists
    and paths, relative to the stage ``folder``), only those inside ``folder``."""
    try:
        with open(marker) as fh:
            listed = json.load(fh).get(LISTED_FILES)
    except (OSError, ValueError, AttributeError):
        return []
    found = []
    for name in _strings(listed):
        path = (folder / name).resolve()
        if folder in path.parents and path.is_file():
            found.append(path)
    return found


def _shard_entries(folder: Path, reached: set[Path], unsure: str) -> list[Entry]:
    """Shard outputs in a reached shard-stage ``folder`` that none of the ``reached`` markers names."""
    entries = []
    reached_lists: set[Path] | None = None
    for marker_dir in sorted({m.parent for m in reached}):
        named = {m.name.split(".", 1)[0] for m in reached if m.parent == marker_dir}
        suffixes = {m.name[len(m.name.split(".", 1)[0]):] for m in reached if m.parent == marker_dir}
        groups: dict[str, list[Path]] = {}
        try:
            names = sorted(os.listdir(marker_dir))
        except OSError:
            continue
        for name in names:
            if not name.startswith("."):  # hidden: a writer's temporary, cleaned by that shard's run
                groups.setdefault(name.split(".", 1)[0], []).append(marker_dir / name)
        for prefix, files in groups.items():
            if prefix in named:
                continue
            markers = [f for f in files if f.name[len(prefix):] in suffixes]
            path = markers[0] if markers else files[0]
            size = sum(tree_size(f) for f in files)
            if not KEY_NAME.fullmatch(prefix):
                entries.append(Entry(path, SHARD_OUTPUT, files, size, False, "not named like a shard output"))
                continue
            if unsure:
                entries.append(Entry(path, SHARD_OUTPUT, files, size, False, unsure))
                continue
            listed = [f for m in markers for f in _listed_files(m, folder)]
            if listed:
                if reached_lists is None:  # files a reached shard lists are never another's to remove
                    reached_lists = {f for m in reached for f in _listed_files(m, folder)}
                listed = [f for f in listed if f not in reached_lists and f not in files]
            note = "" if markers else "no completion marker: an unfinished shard"
            entries.append(Entry(path, SHARD_OUTPUT, markers + [f for f in files if f not in markers] + listed,
                                 size + sum(tree_size(f) for f in listed), True, note))
    return entries


def plan(data_root: str | os.PathLike, reaches: list[Reach], stage_names: Iterable[str],
         shard_stage_names: Iterable[str] = ()) -> list[Entry]:
    """What under ``data_root`` none of ``reaches`` reaches: one :class:`Entry` per stage folder
    or shard output, to remove, or kept with a note where reachability is unsure.

    ``stage_names``: the stage folder names of the pipeline (only ``<data_root>/<name>/<key>/``
    are candidates); ``shard_stage_names``: those of shard stages, whose folders are kept while
    some configuration does not know its shards yet.
    """
    root = _resolved(data_root)
    whole = set().union(*(r.whole for r in reaches))
    shards: dict[Path, set[Path]] = {}
    for r in reaches:
        for folder, markers in r.shards.items():
            shards.setdefault(folder, set()).update(markers)
    pending = [r.label for r in reaches if r.pending]
    protected = set().union(*(r.protected for r in reaches)) | {root / JOURNAL_FOLDER}
    unsure = (f"unsure: {', '.join(pending)} does not know its catalog shards yet "
              "(its catalog scan has not run)") if pending else ""
    sharded_names = set(shard_stage_names)
    entries: list[Entry] = []
    for name in sorted(set(stage_names)):
        stage_dir = root / name
        if stage_dir.is_symlink():
            entries.append(Entry(stage_dir, STAGE_FOLDER, [stage_dir], 0, False, "a symbolic link"))
            continue
        if not stage_dir.is_dir():
            continue
        for child in sorted(stage_dir.iterdir()):
            folder = child.resolve()
            if child.is_symlink() or not child.is_dir() or not KEY_NAME.fullmatch(child.name):
                entries.append(Entry(child, STAGE_FOLDER, [child], 0, False, "not a keyed stage folder"))
                continue
            if folder in whole:
                continue
            clash = _overlaps(folder, protected)
            if clash is not None:
                entries.append(Entry(child, STAGE_FOLDER, [child], 0, False, f"overlaps the configured input {clash}"))
            elif folder in shards:
                entries += _shard_entries(folder, shards[folder], unsure if name in sharded_names else "")
            elif unsure and name in sharded_names and (child / SHARDS_DIR).is_dir():
                entries.append(Entry(child, STAGE_FOLDER, [child], tree_size(child), False, unsure))
            else:
                entries.append(Entry(child, STAGE_FOLDER, [child], tree_size(child), True, _finished(child)))
    return entries


def delete(entries: Iterable[Entry]) -> list[str]:
    """Remove every entry marked ``remove``: a stage folder's manifest and shard markers first, a
    shard's marker first, then the rest.  Returns one line per failure (empty when all went)."""
    errors = []
    for entry in entries:
        if not entry.remove:
            continue
        try:
            if entry.kind == STAGE_FOLDER:
                (entry.path / MANIFEST).unlink(missing_ok=True)
                for marker in (entry.path / SHARDS_DIR).glob("*.json"):
                    marker.unlink(missing_ok=True)
                shutil.rmtree(entry.path)
            else:
                for path in entry.files:
                    path.unlink(missing_ok=True)
        except OSError as err:
            errors.append(f"could not remove {entry.path}: {err}")
    return errors


def format_plan(entries: list[Entry], data_root: str | os.PathLike, deleted: bool) -> str:
    """The listing: what is (or was) removed, with sizes, what is kept and why, and the total."""
    removable = [e for e in entries if e.remove]
    kept = [e for e in entries if not e.remove]
    lines = []
    if removable:
        lines.append(f"{'removed' if deleted else 'unreachable (removed with --delete)'} under {data_root}:")
        width = max(len(human_size(e.size)) for e in removable)
        for e in removable:
            more = f" (+{len(e.files) - 1} file{'s' if len(e.files) > 2 else ''})" if e.kind == SHARD_OUTPUT \
                and len(e.files) > 1 else ""
            note = f"  {e.note}" if e.note else ""
            lines.append(f"  {human_size(e.size):>{width}}  {e.kind}  {e.path}{more}{note}")
    if kept:
        lines.append("kept:")
        lines += [f"  {e.path}  ({e.note})" for e in kept]
    total = sum(e.size for e in removable)
    verb = "removed" if deleted else "unreachable"
    lines.append(f"total {verb}: {human_size(total)} in {len(removable)} output{'s' if len(removable) != 1 else ''}"
                 + ("" if deleted or not removable else "; nothing removed (run with --delete to remove)"))
    return "\n".join(lines)
