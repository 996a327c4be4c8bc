"""The configured DAG as plain stage descriptions, for ``silentmine status`` and ``silentmine gc``.

:func:`walk` follows the task graph from a root task (``tasks.All``) through ``requires()``,
which for a stage that gathers catalog shards lists its shard tasks once the catalog scan is
complete.  :func:`describe` turns the stages it meets into
:class:`pipeline.storage.status.StageDescription` values (the shards of one stage family in
one folder become one description with a marker per shard).  Building the graph reads the
stem set's and the catalog's listings (their fingerprints are input keys), manifests, and
the scan's ``tracks.parquet`` once per gathering stage; never audio, never per-shard tables.

:func:`overlaid` evaluates the graph under another luigi.cfg: the current configuration
with that file's options on top (what ``LUIGI_CONFIG_PATH=CFG`` adds to ``luigi.cfg``).
"""

from __future__ import annotations

import configparser
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import luigi
import luigi.configuration

from pipeline.storage import gc, status
from pipeline.storage.outputs import canonical_json
from tasks.base import CatalogStage, ShardStage, Stage, config
from tasks.inputs import forget_inputs


def walk(root: luigi.Task) -> list[luigi.Task]:
    """Every task ``root`` depends on, and ``root``, each once, dependencies first."""
    order: list[luigi.Task] = []
    seen: set[str] = set()
    stack: list[tuple[luigi.Task, bool]] = [(root, False)]
    while stack:
        task, expanded = stack.pop()
        if expanded:
            order.append(task)
            continue
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        stack.append((task, True))
        stack.extend((dep, False) for dep in reversed(luigi.task.flatten(task.requires())) if dep.task_id not in seen)
    return order


def _gathers_shards(task: Stage) -> bool:
    return isinstance(task, CatalogStage) and type(task).shard_jobs is not CatalogStage.shard_jobs


def _input_families(task: Stage) -> dict[str, str]:
    return {name: dep.task_family for name, dep in task.inputs().items() if isinstance(dep, Stage)}


def _reads(task: Stage) -> tuple[Path, ...]:
    """Earlier outputs a stage that has not run will read (``reused_outputs()``, where it has one)."""
    reused = getattr(task, "reused_outputs", None)
    return tuple(reused()) if callable(reused) and not task.complete() else ()


def _shown(value) -> str:
    return value if isinstance(value, str) else canonical_json(value)


def _labels(stages: list[Stage]) -> dict[str, str]:
    """Task id -> label: the family, with the parameters that differ among its instances."""
    by_family: dict[str, list[Stage]] = {}
    for task in stages:
        by_family.setdefault(task.task_family, []).append(task)
    labels = {}
    for family, group in by_family.items():
        names = sorted({n for t in group for n in t.key_params()})
        varying = [n for n in names if len({canonical_json(t.key_params().get(n)) for t in group}) > 1]
        for task in group:
            shown = ", ".join(f"{n}={_shown(task.key_params().get(n))}" for n in varying)
            labels[task.task_id] = f"{family}({shown})" if shown else family
    return labels


def describe(tasks: list[luigi.Task]) -> list[status.StageDescription]:
    """One description per plain stage, one per (shard family, folder); in the order given."""
    plain = [t for t in tasks if isinstance(t, Stage) and not isinstance(t, ShardStage)]
    shard_groups: dict[tuple[str, Path], list[ShardStage]] = {}
    for task in tasks:
        if isinstance(task, ShardStage):
            shard_groups.setdefault((task.task_family, task.folder), []).append(task)
    labels = _labels(plain + [group[0] for group in shard_groups.values()])
    described, done_groups = [], set()
    for task in tasks:
        if isinstance(task, ShardStage):
            group_key = (task.task_family, task.folder)
            if group_key in done_groups:
                continue
            done_groups.add(group_key)
            group = shard_groups[group_key]
            described.append(status.StageDescription(
                family=task.task_family, task=labels[task.task_id], stage=task.stage_name, key=task.key,
                folder=task.folder, params=task.key_params(), inputs=task.input_keys(),
                input_families=_input_families(task), markers=tuple(t.marker for t in group)))
        elif isinstance(task, Stage):
            gathers = _gathers_shards(task)
            described.append(status.StageDescription(
                family=task.task_family, task=labels[task.task_id], stage=task.stage_name, key=task.key,
                folder=task.folder, params=task.key_params(), inputs=task.input_keys(),
                input_families=_input_families(task), complete=task.complete(),
                shards_pending=gathers and not task.scan_task().complete(), task_ids=(task.task_id,),
                reads=_reads(task)))
    return described


def descriptions(root: luigi.Task | None = None) -> list[status.StageDescription]:
    """The stage descriptions of the DAG of ``root`` (default ``tasks.All``) as configured now."""
    import tasks

    forget_inputs()  # the inputs as they are now, the options as they are now
    return describe(walk(root if root is not None else tasks.All()))


def pipeline_status(root: luigi.Task | None = None) -> list[status.StageStatus]:
    """Where every stage of the configured DAG stands (see :mod:`pipeline.storage.status`)."""
    return status.pipeline_status(descriptions(root), config().data_root)


def stage_names() -> tuple[set[str], set[str]]:
    """The stage folder names of every stage class, and those of the shard stages."""
    import tasks  # noqa: F401  (registers every stage class)

    found, stack = [], [Stage]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    names = {c.stage_name for c in found if c.stage_name}
    return names, {c.stage_name for c in found if issubclass(c, ShardStage) and c.stage_name}


@contextlib.contextmanager
def kept_config() -> Iterator[configparser.ConfigParser]:
    """Inside: the live Luigi configuration, to change at will; as it was again after."""
    live = luigi.configuration.get_config()
    saved = {section: dict(live.items(section, raw=True)) for section in live.sections()}
    try:
        yield live
    finally:
        for section in live.sections():
            live.remove_section(section)
        for section, items in saved.items():
            live.add_section(section)
            for option, value in items.items():
                live.set(section, option, value)


@contextlib.contextmanager
def overlaid(path: str | os.PathLike) -> Iterator[None]:
    """Inside: the Luigi configuration with the options of the file ``path`` on top; restored after."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such configuration file: {path}")
    extra = configparser.ConfigParser(interpolation=None)
    try:
        extra.read(path)
    except configparser.Error as err:
        raise ValueError(f"{path} is not a readable luigi.cfg: {err}") from err
    with kept_config() as live:
        try:
            for section in extra.sections():
                if not live.has_section(section):
                    live.add_section(section)
                for option, value in extra.items(section, raw=True):
                    live.set(section, option, value)
            forget_inputs()
            yield
        finally:
            forget_inputs()


def _protected(described: list[status.StageDescription]) -> set[Path]:
    """What a configuration reads and gc must never touch: stem set, catalog, the catalog's truth
    table, and every stage parameter that names an existing file or folder."""
    settings = config()
    paths = {Path(settings.stem_root), Path(settings.catalog)}
    if settings.catalog_truth:
        paths.add(Path(settings.catalog_truth))
    for d in described:
        for value in d.params.values():
            if isinstance(value, str) and value and os.path.exists(value):
                paths.add(Path(value))
    return paths


def reach(label: str) -> tuple[gc.Reach, Path]:
    """What the configuration in force reaches, and its data root."""
    described = descriptions()
    return gc.reach(label, described, _protected(described)), Path(config().data_root).resolve()


def gc_plan(keep: list[str] | tuple[str, ...] = ()) -> tuple[list[gc.Entry], Path, list[str]]:
    """The gc listing of the current data root, keeping what the current configuration and each
    configuration file of ``keep`` reach; also notes (a kept file with another data root)."""
    current, root = reach("the current configuration")
    reaches, notes = [current], []
    for path in keep:
        with overlaid(path):
            kept, kept_root = reach(str(path))
        if kept_root != root:
            notes.append(f"note: {path} uses the data root {kept_root}, not {root}: it keeps nothing here")
        reaches.append(kept)
    names, shard_names = stage_names()
    return gc.plan(root, reaches, names, shard_names), root, notes
