"""Where the configured DAG stands: per stage complete, partial or missing, and why not.

Pure library (no Luigi): it takes plain descriptions of the stages (:class:`StageDescription`,
built from the task graph by ``tasks/graph.py``) and reads only ``manifest.json`` files and
shard completion markers (``shards/<shard_key>.json``), never audio, features or the
per-shard tables, so it stays fast on a catalog of 100,000 tracks.

"Why" compares a stage that is not complete with the nearest earlier output of the same
stage under ``<data_root>/<stage>/*/``: the one whose recorded ``params`` and ``inputs``
differ from the stage's current ones in the fewest entries (the latest among equals; a
stage such as ``StemFeatures`` has one instance per split, so the latest output alone could
be another split's), and names what differs: a significant parameter, or an input key (and
the stage that provides it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.storage.outputs import MANIFEST, canonical_json

COMPLETE, PARTIAL, MISSING = "complete", "partial", "missing"
SHARDS_DIR = "shards"  # a shard stage's markers: <stage folder>/shards/<shard_key>.json
_ABSENT = object()


@dataclass(frozen=True)
class StageDescription:
    """One stage of the configured DAG, as plain values.

    ``family``: task class (``"Calibrate"``); ``task``: the label shown (family and the
    parameters that tell its instances apart, e.g. ``"StemFeatures(split=train)"``);
    ``stage``: the folder under the data root; ``key``/``folder``: its output;
    ``params``/``inputs``: significant parameters and input keys, as recorded in manifests;
    ``input_families``: input name -> family of the stage that provides it.

    A plain stage gives ``complete`` (its task's own answer).  A shard stage (all shards of one
    family in one folder) gives ``markers``: one completion marker per shard of the current scan.
    ``shards_pending``: a stage that gathers shards whose
    catalog scan has not run, so its shards (and their folders) are not known yet.
    ``reads``: earlier outputs the stage will read when it runs (a new catalog scan reads the
    previous scan of the same catalog), reached as well.
    """

    family: str
    task: str
    stage: str
    key: str
    folder: Path
    params: dict[str, Any]
    inputs: dict[str, str]
    input_families: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    markers: tuple[Path, ...] | None = None
    shards_pending: bool = False
    reads: tuple[Path, ...] = ()
    task_ids: tuple[str, ...] = ()

    @property
    def sharded(self) -> bool:
        return self.markers is not None


@dataclass(frozen=True)
class Earlier:
    """An output found on disk: a manifest, or one shard marker standing for its folder."""

    path: Path
    folder: Path
    params: dict[str, Any]
    inputs: dict[str, Any]
    fields: dict[str, Any]
    order: tuple[str, int]  # (finished_at, mtime_ns): sorts oldest first


@dataclass
class StageStatus:
    """The state of one stage: ``complete``, ``partial`` (some shards done) or ``missing``."""

    description: StageDescription
    state: str
    shards_done: int | None = None
    shards_total: int | None = None
    why: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = self.description
        return {
            "task": d.task,
            "family": d.family,
            "stage": d.stage,
            "key": d.key,
            "folder": str(d.folder),
            "state": self.state,
            "shards_done": self.shards_done,
            "shards_total": self.shards_total,
            "why": list(self.why),
            "task_ids": list(d.task_ids),
        }


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else json.dumps(value, default=str)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            value = json.load(fh)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


class EarlierOutputs:
    """The outputs under ``data_root``, read lazily once per stage folder name.

    ``manifests(stage)``: every ``<stage>/*/manifest.json``.  ``shard_folders(stage)``: per
    ``<stage>/*/shards/`` folder one marker (all markers of one folder share its params and
    inputs, which its key hashes), ordered by the folder's last change.
    """

    def __init__(self, data_root: str | os.PathLike):
        self.root = Path(data_root)
        self._manifests: dict[str, list[Earlier]] = {}
        self._shards: dict[str, list[Earlier]] = {}

    def _folders(self, stage: str) -> list[Path]:
        try:
            return sorted(p for p in (self.root / stage).iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []

    def manifests(self, stage: str) -> list[Earlier]:
        if stage not in self._manifests:
            found = []
            for folder in self._folders(stage):
                path = folder / MANIFEST
                manifest = _read_json(path)
                if manifest is not None:
                    found.append(_earlier(path, folder, manifest))
            self._manifests[stage] = sorted(found, key=lambda e: e.order)
        return self._manifests[stage]

    def shard_folders(self, stage: str) -> list[Earlier]:
        if stage not in self._shards:
            found = []
            for folder in self._folders(stage):
                shards = folder / SHARDS_DIR
                try:
                    names = sorted(n for n in os.listdir(shards) if n.endswith(".json") and not n.startswith("."))
                    changed = shards.stat().st_mtime_ns
                except OSError:
                    continue
                for name in names:  # the first readable marker stands for the folder
                    marker = _read_json(shards / name)
                    if marker is not None:
                        found.append(_earlier(shards / name, folder, marker, ("", changed)))
                        break
            self._shards[stage] = sorted(found, key=lambda e: e.order)
        return self._shards[stage]


def _earlier(path: Path, folder: Path, record: dict[str, Any], order: tuple[str, int] | None = None) -> Earlier:
    if order is None:
        try:
            order = (str(record.get("finished_at", "")), path.stat().st_mtime_ns)
        except OSError:
            order = (str(record.get("finished_at", "")), 0)
    params, inputs = record.get("params"), record.get("inputs")
    return Earlier(
        path,
        folder,
        params if isinstance(params, dict) else {},
        inputs if isinstance(inputs, dict) else {},
        record,
        order,
    )


def differences(description: StageDescription, earlier: Earlier) -> list[str]:
    """What differs between a stage's current parameters and input keys and an earlier output's,
    one line each: ``parameter target_db: -20.0 -> -25.0`` (earlier -> now)."""
    lines = []
    now_params, now_inputs = (json.loads(canonical_json(v)) for v in (description.params, description.inputs))
    for name in sorted(set(now_params) | set(earlier.params)):
        then, now = earlier.params.get(name, _ABSENT), now_params.get(name, _ABSENT)
        if then != now:
            lines.append(f"parameter {name}: {_show(then)} -> {_show(now)}")
    for name in sorted(set(now_inputs) | set(earlier.inputs)):
        then, now = earlier.inputs.get(name, _ABSENT), now_inputs.get(name, _ABSENT)
        if then != now:
            family = description.input_families.get(name)
            label = f"input {name} ({family})" if family else f"input {name}"
            lines.append(f"{label}: {_show(then)} -> {_show(now)}")
    return lines


def nearest(description: StageDescription, candidates: list[Earlier]) -> tuple[Earlier, list[str]] | None:
    """The candidate (another folder than the stage's own) with the fewest differences, the
    latest among equals, and those differences; None without candidates."""
    best = None
    for earlier in candidates:  # oldest first: a later equal one replaces an earlier
        if earlier.folder == description.folder:
            continue
        diff = differences(description, earlier)
        if best is None or len(diff) <= len(best[1]):
            best = (earlier, diff)
    return best


def _compare(description: StageDescription, candidates: list[Earlier], root: Path, what: str) -> list[str]:
    found = nearest(description, candidates)
    if found is None:
        return [f"no earlier {what} of this stage under {root / description.stage}"]
    earlier, diff = found
    when = earlier.fields.get("finished_at")
    head = f"differs from the earlier {what} {earlier.folder}" + (f" (finished {when})" if when else "")
    if not diff:
        return [head + ", with equal parameters and inputs (they differ in form only, e.g. 5 and 5.0)"]
    return [head + ":"] + [f"  {line}" for line in diff]


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def stage_status(description: StageDescription, earlier: EarlierOutputs) -> StageStatus:
    """The state of one stage, and (when it is not complete) why, from manifests and markers."""
    root = earlier.root
    if description.sharded:
        markers = description.markers or ()
        listed: dict[Path, set[str]] = {}
        done = 0
        for marker in markers:
            if marker.parent not in listed:
                listed[marker.parent] = _listing(marker.parent)
            done += marker.name in listed[marker.parent]
        total = len(markers)
        state = COMPLETE if done == total else PARTIAL if done else MISSING
        status = StageStatus(description, state, done, total)
        if state != COMPLETE:
            status.why.append(f"{total - done} of {total} shards not run")
            names = {m.name for m in markers}
            others = sum(
                1
                for names_here in listed.values()
                for n in names_here
                if n.endswith(".json") and not n.startswith(".") and n not in names
            )
            if others:
                status.why.append(f"its folder also holds {others} shard(s) that the current scan does not list")
            if not done:
                status.why += _compare(description, earlier.shard_folders(description.stage), root, "shard output")
        return status

    if description.complete:
        return StageStatus(description, COMPLETE)
    status = StageStatus(description, MISSING)
    if description.shards_pending:
        status.why.append(
            "the catalog scan has not run: its shards, and the stages that work per shard, are listed once it has"
        )
    if (description.folder / MANIFEST).is_file():
        status.why.append(f"its {MANIFEST} is there, but the task does not count it complete")
        return status
    if description.folder.is_dir():
        status.why.append(f"started but not finished: {description.folder} has no {MANIFEST}")
    status.why += _compare(description, earlier.manifests(description.stage), root, "output")
    return status


def pipeline_status(descriptions: list[StageDescription], data_root: str | os.PathLike) -> list[StageStatus]:
    """The state of every stage (in the given order, dependencies first), each not-complete one
    with its reasons; an input whose stage is not complete is named too."""
    earlier = EarlierOutputs(data_root)
    statuses = [stage_status(d, earlier) for d in descriptions]
    by_output = {(s.description.family, s.description.key): s for s in statuses}
    for status in statuses:
        if status.state == COMPLETE:
            continue
        waiting = []
        for name, family in sorted(status.description.input_families.items()):
            upstream = by_output.get((family, status.description.inputs.get(name)))
            if upstream is not None and upstream.state != COMPLETE:
                waiting.append(f"input {name} ({family}) is {upstream.state}")
        status.why[:0] = waiting
    return statuses


def format_status(statuses: list[StageStatus]) -> str:
    """A table, one line per stage (task, state, key, folder), each reason indented below."""
    rows = []
    for s in statuses:
        state = s.state if s.shards_total is None else f"{s.state} {s.shards_done}/{s.shards_total}"
        rows.append((s.description.task, state, s.description.key, str(s.description.folder), s.why))
    if not rows:
        return "no stages"
    wide = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{'task':<{wide[0]}}  {'state':<{wide[1]}}  {'key':<{wide[2]}}  folder"]
    for task, state, key, folder, why in rows:
        lines.append(f"{task:<{wide[0]}}  {state:<{wide[1]}}  {key:<{wide[2]}}  {folder}")
        lines += [f"    {line}" for line in why]
    done = sum(s.state == COMPLETE for s in statuses)
    lines.append(f"{done} of {len(statuses)} stages complete")
    return "\n".join(lines)
