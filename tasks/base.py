"""The two kinds of pipeline stage: a keyed ``Stage`` and a per-shard ``ShardStage``.

A ``Stage`` writes into ``<data_root>/<stage>/<key>/`` with ``manifest.json`` last; the key
hashes its significant parameters, the fingerprints of external inputs (stem set,
catalog listing) and the keys of the stages it requires.  A ``ShardStage`` is one shard of
a catalog-wide stage: all shards of a stage share the stage folder (keyed without the
catalog's contents), and each shard's completion marker is ``shards/<shard_key>.json``,
so adding tracks to a catalog runs only the new shards.

Every run of a ``Stage`` or ``ShardStage`` appends one line to the run journal
(:mod:`pipeline.storage.journal`): ``<data_root>/journal/<host>-<pid>-<start>.jsonl``, one file per
process, with the stage, task family, key, shard, host, pid, start and end times, the time
spent inside ``build()`` and the stage's counts (failed runs too, with ``status = failed``).
``pipeline.storage.journal.read_journal(data_root)`` loads all of it into a DataFrame.

A ``CatalogStage`` gathers the shard tasks of one catalog scan (one of its ``inputs()`` is the
scan, so its key changes with the scan).  Once the scan is complete its ``requires()`` lists the
shard tasks besides its inputs, so every worker that schedules it, on this machine or another
one attached to the same ``luigid``, sees every shard and the scheduler hands them out one at a
time; before the scan exists they come as dynamic dependencies from ``run()``.  A task that finds
its output already complete when it starts does nothing (another worker finished it first).

A stage's key hashes its ``inputs()`` (named stages; ``requires()`` for a plain stage), never
what Luigi schedules besides them.  What an instance learns about its inputs (its key, the shards
it lists) is remembered for the current input generation (:mod:`tasks.inputs`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import luigi

from pipeline.audio.io import decoder_fingerprint
from pipeline.mining.extraction import PAPER_RUN_RULE, RunRule
from pipeline.storage import journal
from pipeline.storage import outputs as storage
from pipeline.storage.outputs import StageResult
from pipeline.threads import torch_threads
from tasks import inputs

T = TypeVar("T")


class silentmine(luigi.Config):
    """The ``[silentmine]`` section of luigi.cfg: where data lives, the global seed, and the
    catalog's ground truth where there is one."""

    data_root = luigi.Parameter(default="data", description="folder every stage writes under")
    stem_root = luigi.Parameter(default="data/demo/stems",
                                description="labelled stem set: MUSDB18-HQ layout or a MUSDB18 .stem.mp4 folder")
    catalog = luigi.Parameter(default="data/demo/catalog",
                              description="unlabelled catalog: a folder tree, or a text file of paths one a line")
    seed = luigi.IntParameter(default=0, description="seed of every random choice in the pipeline")
    threads = luigi.IntParameter(default=0, description="torch/BLAS threads per worker process; 0 = cores / workers")
    catalog_truth = luigi.Parameter(default="", description="the catalog's known per-window volumes (file, window, "
                                    "start_s, V_<source>; the demo's catalog_truth.parquet), read by "
                                    "MeasureExtraction, Audit and the ladder's oracle D_i; empty: none")
    catalog_stems = luigi.Parameter(default="", description="the catalog's true stems: a stem set whose train split "
                                    "holds the catalog (the demo's catalog_stems), read by the ladder's supervised + "
                                    "catalog stems rung; empty: none")


def config() -> silentmine:
    return silentmine()


class RunRuleParameter(luigi.Parameter):
    """Extraction's run rule (:class:`pipeline.mining.extraction.RunRule`) as one parameter:
    ``{"min_seconds": 5.0, "max_gap": 0}`` in luigi.cfg and on the command line."""

    def __init__(self, default: RunRule = PAPER_RUN_RULE, **kwargs) -> None:
        super().__init__(default=default, **kwargs)

    def normalize(self, value) -> RunRule:
        """A RunRule of a float ``min_seconds`` and an int ``max_gap`` (one task id, one key per rule)."""
        fields = dataclasses.asdict(value) if isinstance(value, RunRule) else dict(value)
        unknown = set(fields) - {"min_seconds", "max_gap"}
        if unknown:
            raise ValueError(f"a run rule has min_seconds and max_gap, not {sorted(unknown)}")
        rule = RunRule(**fields)  # checks the values
        return RunRule(float(rule.min_seconds), int(rule.max_gap))

    def parse(self, text: str) -> RunRule:
        return self.normalize(json.loads(text))

    def serialize(self, value: RunRule) -> str:
        return json.dumps(dataclasses.asdict(self.normalize(value)), sort_keys=True)


def run_rule_key(rule: RunRule, keep_no_gap: bool = False) -> dict[str, Any]:
    """A run rule's entries of a stage key: ``min_seconds``, and ``max_gap`` unless it is 0 (the
    paper's rule kept the keys it had before dips could be bridged) or ``keep_no_gap``."""
    return {"min_seconds": rule.min_seconds, **({"max_gap": rule.max_gap} if rule.max_gap or keep_no_gap else {})}


class UsesGpu:
    """Mixin of the stages that run on a GPU when the worker has one (training, detection).  Such
    a task claims one unit of ``[resources] gpu`` only in a worker process with a CUDA device: on a
    CPU the claim would only make the workers run these stages one at a time, each on a share of
    the cores."""

    @property
    def resources(self) -> dict[str, int]:
        from pipeline.separation.distributed import default_device

        return {"gpu": 1} if default_device() == "cuda" else {}


class Stage(luigi.Task):
    """A pipeline stage with a content-keyed output folder and a manifest written last.

    Subclasses set ``stage_name``, declare parameters and ``requires()``, and define
    ``build(folder) -> StageResult``: one call into the library's ``build_<stage_name>``, which
    writes the stage's files (:class:`pipeline.storage.outputs.StageResult`).
    """

    stage_name: ClassVar[str] = ""
    # A failed stage is not retried by the scheduler but disabled, so that the workers waiting on
    # it (``[worker] keep_alive``, set by ``silentmine run``) leave once nothing else can run.
    retry_count = 1
    # True for stages that decode audio files: their key then holds the decoders' versions
    # (pipeline.audio.io.decoder_fingerprint), so a new decoder gives new outputs.
    decodes_audio: ClassVar[bool] = False

    def requires(self) -> dict[str, luigi.Task]:
        return {}

    def inputs(self) -> dict[str, "Stage"]:
        """The stages this one reads, by name: their keys enter this stage's key.  A plain
        stage's inputs are its ``requires()``."""
        return self.requires()

    def external_keys(self) -> dict[str, str]:
        """Fingerprints of inputs that are not stages (stem set, catalog listing)."""
        return {}

    def key_params(self) -> dict[str, Any]:
        """The significant parameters, as plain JSON values (tuples become lists)."""
        return {name: storage.plain(self.param_kwargs[name]) for name, param in self.get_params() if param.significant}

    def input_keys(self) -> dict[str, str]:
        keys = {name: task.key for name, task in self.inputs().items()}
        keys.update(self.external_keys())
        if self.decodes_audio:
            keys["decoders"] = storage.stable_hash(decoder_fingerprint())
        return keys

    def remembered(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()``, called once per input generation (:func:`tasks.inputs.forget_inputs`
        starts a new one) for this instance, which Luigi keeps for the process."""
        if getattr(self, "_remembered_generation", None) != inputs.generation():
            self._remembered_generation, self._remembered = inputs.generation(), {}
        if name not in self._remembered:
            self._remembered[name] = compute()
        return self._remembered[name]

    @property
    def key(self) -> str:
        return self.remembered("key", lambda: storage.stage_key(self.stage_name, self.key_params(), self.input_keys()))

    @property
    def folder(self) -> Path:
        return Path(config().data_root) / self.stage_name / self.key

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.folder / storage.MANIFEST))

    def input_folder(self, name: str) -> Path:
        return self.inputs()[name].folder

    def run(self) -> None:
        if self.complete():  # another worker finished it between scheduling and now
            return
        started = time.time()
        fields = dict(stage=self.stage_name, family=self.task_family, key=self.key, **self.journal_fields())
        body_s, result = 0.0, StageResult()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.clean_temporaries()
            body_started = time.perf_counter()
            try:
                result = self.build(self.folder) or StageResult()
            finally:
                body_s = time.perf_counter() - body_started
            if not isinstance(result, StageResult):
                raise TypeError(f"{self.task_family}.build() returned {type(result).__name__}, not a StageResult")
            self.write_completion(result, started)
        except BaseException as err:
            counts = result.counts if isinstance(result, StageResult) else {}
            journal.record(config().data_root, started=started, finished=time.time(), body_s=body_s,
                           counts=counts, status="failed", error=f"{type(err).__name__}: {err}"[:2000], **fields)
            raise
        journal.record(config().data_root, started=started, finished=time.time(), body_s=body_s,
                       counts=result.counts, **fields)

    def clean_temporaries(self) -> None:
        """Remove what killed writers left in the folder (a keyed stage owns its whole folder)."""
        storage.clean_temporaries(self.folder)

    def write_completion(self, result: StageResult, started: float) -> None:
        """Write the completion marker, last: ``manifest.json``."""
        storage.write_manifest(self.folder, self.stage_name, self.key, self.key_params(), self.input_keys(),
                               counts=result.counts, seed=config().seed, started=started,
                               extra={"summary": list(result.summary), **self.manifest_extra()})

    def journal_fields(self) -> dict[str, Any]:
        """What identifies this run in the journal besides stage, family and key."""
        return {}

    def progress_callback(self, names: Mapping[str, str] | None = None,
                          unit: str = "tracks") -> Callable[[int, int, str], None]:
        """A plain callable for a long stage body (:data:`pipeline.storage.journal.Progress`):
        ``(done, total, current)`` becomes the task's progress percentage and status message in
        the scheduler (luigid's UI and API: ``task_list`` shows ``progress_percentage`` and
        ``status_message``).  ``names`` maps ``current`` to what is shown (a track id to its file);
        ``unit``: what is counted.
        Outside a worker (no scheduler to tell) it does nothing."""
        label = self.stage_name + (f" shard {self.shard}" if isinstance(self, ShardStage) else "")

        def report(done: int, total: int, current: str) -> None:
            if callable(self.set_progress_percentage):
                self.set_progress_percentage(round(100.0 * done / total, 1) if total else 100.0)
            if callable(self.set_status_message):
                shown = (names or {}).get(current, current)
                self.set_status_message(f"{label}: {done}/{total} {unit}" + (f"; now {shown}" if shown else ""))

        return report

    def manifest_extra(self) -> dict[str, Any]:
        """Further fields for the manifest (for example which catalog scan it covers)."""
        return {}

    @property
    def manifest(self) -> dict[str, Any]:
        return storage.read_manifest(self.folder)


class ShardStage(Stage):
    """One shard of a catalog-wide stage; its marker is ``shards/<shard_key>.json``."""

    shard = luigi.IntParameter(description="shard number in the catalog scan")
    shard_key = luigi.Parameter(description="hash of the shard's tracks (from the scan)")
    tracks_file = luigi.Parameter(significant=False, description="the scan's tracks.parquet")

    def key_params(self) -> dict[str, Any]:
        params = super().key_params()
        params.pop("shard")
        params.pop("shard_key")
        return params

    def shard_tracks(self):
        """The shard's rows of the catalog scan: ``path, size, mtime_ns, checksum, track_id, shard``."""
        from pipeline.corpora.catalog import read_shard

        return read_shard(self.tracks_file, self.shard)

    @property
    def marker(self) -> Path:
        return self.folder / "shards" / f"{self.shard_key}.json"

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.marker))

    def temporary_patterns(self) -> list[str]:
        """Globs (relative to the stage folder) of the temporaries this shard's writers leave
        when killed; removed before the shard runs again.  Other shards' are left alone."""
        return [f"shards/.{self.shard_key}.*"]

    def journal_fields(self) -> dict[str, Any]:
        return {"shard": self.shard, "shard_key": self.shard_key}

    def clean_temporaries(self) -> None:
        storage.clean_temporaries_matching(self.folder, self.temporary_patterns())

    def write_completion(self, result: StageResult, started: float) -> None:
        """The marker, last: what made the shard, its counts and (when the build lists them,
        ``result.files``) the files it wrote, relative to the stage folder."""
        marker = {
            "stage": self.stage_name,
            "key": self.key,
            "shard": self.shard,
            "shard_key": self.shard_key,
            "params": self.key_params(),
            "inputs": self.input_keys(),
            "counts": result.counts,
            "code_version": storage.code_version(),
            "threads": torch_threads(),
            "wall_s": round(time.time() - started, 3),
        }
        if result.files is not None:
            marker["files"] = result.files
        if result.summary:
            marker["summary"] = list(result.summary)
        storage.write_json_atomic(self.marker, marker)


class CatalogStage(Stage):
    """A stage that gathers the shards of one catalog scan; ``inputs()`` must hold the scan as
    ``"scan"``, so the stage's key (and folder) is the scan's own: each catalog, and each
    version of one, gets its own output, and the shards' outputs are shared between them."""

    def inputs(self) -> dict[str, Stage]:
        raise NotImplementedError(f"{type(self).__name__} must name its inputs, the scan among them")

    def scan_task(self) -> Stage:
        return self.inputs()["scan"]

    def shard_jobs(self) -> list[ShardStage]:
        """The per-shard tasks of the current scan that this stage gathers (none by default)."""
        return []

    def requires(self) -> dict[str, Any]:
        """``inputs()`` and, as ``"shards"``, :meth:`listed_shards`: so that all workers sharing
        a scheduler schedule (and split) the shards, not only the one that runs this stage and
        meets them as dynamic dependencies."""
        return {**self.inputs(), "shards": self.listed_shards()}

    def listed_shards(self) -> list[ShardStage]:
        """Every shard task if the scan was complete when first asked in this input generation,
        else none (``run()`` yields them).  Luigi asks for the requirements when it schedules the
        task and again right before ``run()``; the scan may finish in between, and the answer
        must not change."""

        def listed() -> list[ShardStage]:
            if not self.scan_task().complete():
                return []
            self.shards_finished_before()
            return self.shard_jobs()

        return self.remembered("listed_shards", listed)

    def shards_finished_before(self) -> set[str]:
        """Keys of the shards that were finished when this run first listed them."""
        return self.remembered("finished_before",
                               lambda: {job.shard_key for job in self.shard_jobs() if job.complete()})

    def run(self):
        self.shards_finished_before()
        yield self.shard_jobs()  # dynamic dependencies: the shards exist once the scan has run
        super().run()
