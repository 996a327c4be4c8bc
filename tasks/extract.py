"""Extract: the D_i datasets; one Luigi task per catalog shard into the shard store, then a view per scan."""

from pathlib import Path

import luigi

from pipeline.corpora.catalog import read_scan_rejects, scan_shards
from pipeline.features.featurize import read_feature_rejects
from pipeline.mining.calibration import read_thresholds
from pipeline.mining.datasets import DatasetRun, ShardStore, build_datasets, view_manifest_fields
from pipeline.mining.extraction import PAPER_RUN_RULE, RunRule, SecondOpinion, build_excerpts
from pipeline.mining.schema import INDEX_PART_FORMAT
from pipeline.separation.evaluation import SeparatorScorer
from pipeline.separation.registry import load_model
from tasks.base import CatalogStage, RunRuleParameter, ShardStage, config, run_rule_key
from tasks.calibrate import Calibrate
from tasks.catalog import ScanCatalog
from tasks.detector import DetectCatalog, TrainDetector, UsesDetector

STORE_TEMPLATE_SHARD = -1  # shard number of the template task that names the store (see Extract.store_task)
# Luigi runs the ready task of highest priority first and raises a task's dependencies to its
# priority.  The D_i are a whole run's critical path: the remix runs, Audit and Export wait on
# them, the plain runs on nothing.  So the mining chain (scan, features, detector, calibration,
# detection, extraction) takes the workers before training runs that do not need it, and the
# runs that do need it do not start last, alone on one worker.
MINING_PRIORITY = 10


def separator_task(params):
    """The TrainSeparator of Extract's ``separator`` parameters (over ``[TrainSeparator]``); it
    must not read the D_i (no remix step), or the DAG would be a cycle.

    The class is Luigi's task of that name: ``tasks.separator`` depends on this module (its
    remix scheme reads the D_i), so this one names the separator's task without importing it.
    """
    task = luigi.task_register.Register.get_task_cls("TrainSeparator")(**dict(params))
    if task.reads_datasets:
        raise ValueError(f"Extract's separator {dict(params)} trains on the D_i (remix): give a run without "
                         "remix, e.g. {\"remix\": false}")
    return task


class SecondOpinionParameters:
    """The parameters of extraction's second opinion, shared by ExtractShard and Extract (which
    passes its own to its shards)."""

    separator = luigi.DictParameter(default={}, description="TrainSeparator parameters of the second opinion "
                                    "(a run without remix; {}: none)")
    separator_max_db = luigi.OptionalFloatParameter(default=None, description="drop excerpts whose separator_db_mean "
                                                    "is above this, dB (None: score only)")

    def second_opinion_params(self) -> dict:
        """These parameters, to pass on."""
        return dict(separator=self.separator, separator_max_db=self.separator_max_db)

    def key_params(self) -> dict:
        """Without an empty ``separator``: extraction without a second opinion keeps the keys it
        had before the option existed."""
        params = dict(super().key_params())  # type: ignore[misc]
        if not params.get("separator"):
            params.pop("separator", None)
            params.pop("separator_max_db", None)
        return params


class ExtractShard(UsesDetector, SecondOpinionParameters, ShardStage):
    """Excerpts of one shard, written into the shard store ``excerpts/<key>/`` shared by every
    catalog: the key holds the detector, the calibration and the run rule (not the catalog),
    and nothing in the store is deleted by a run."""

    stage_name = "excerpts"
    decodes_audio = True
    priority = MINING_PRIORITY
    run_rule = RunRuleParameter(description="extraction's run rule (set by Extract)")

    def requires(self):
        shard = dict(shard=self.shard, shard_key=self.shard_key, tracks_file=self.tracks_file)
        needs = {"calibration": Calibrate(run_rule=self.run_rule, **self.detector_params()),
                 "detector": TrainDetector(**self.detector_params()),
                 "detect": DetectCatalog(**shard, **self.detector_params())}
        if self.separator:
            needs["separator"] = separator_task(self.separator)
        return needs

    @property
    def probabilities(self):
        """The detector's per-frame probabilities of this shard."""
        return self.requires()["detect"].probabilities

    @property
    def feature_store(self):
        return self.requires()["detect"].feature_store

    def key_params(self):
        """The run rule's, and the format of the index parts (``INDEX_PART_FORMAT``): a store
        never mixes parts that pandas cannot read as one dataset."""
        params = super().key_params()
        params.pop("run_rule")
        return {**params, **run_rule_key(self.run_rule), "index_part_format": INDEX_PART_FORMAT}

    def input_keys(self):
        keys = super().input_keys()
        keys.pop("detect")  # fixed by the detector's key: every shard shares the store
        return keys

    def temporary_patterns(self):
        tracks = [f"audio/*/{tid[:2]}/.{tid}-*" for tid in self.shard_tracks()["track_id"]]
        return [*super().temporary_patterns(), f"index/source=*/.part-{self.shard_key}.*",
                f"rejects/.part-{self.shard_key}.*", *tracks]

    def build(self, folder):
        calibration, detector = self.requires()["calibration"], self.requires()["detector"]
        thresholds = read_thresholds(calibration.thresholds)
        second_opinion = None
        if self.separator:
            second_opinion = SecondOpinion(SeparatorScorer(load_model(self.requires()["separator"].best)),
                                           self.separator_max_db)
        return build_excerpts(self.shard_tracks(), self.probabilities, thresholds=thresholds,
                              run_rule=self.run_rule, run_dir=folder, shard_key=self.shard_key,
                              detector_key=detector.key, calibration_key=calibration.key,
                              audio_base=config().data_root, second_opinion=second_opinion,
                              progress=self.progress_callback())


class Extract(UsesDetector, SecondOpinionParameters, CatalogStage):
    """A catalog scan's D_i: ``datasets/<key>/``, a view over the shard store.

    Keyed by the store's key and the scan's, so each catalog (and each version of one) has its
    own D_i folder; it links the index and rejects parts of exactly the scan's shards (see
    :mod:`pipeline.mining.datasets`).  A new scan runs only its new shards; finished shards are
    reused whichever catalog they were made for.  The counts (manifest and journal) say which
    shards were reused (``reused_shard_keys``: finished before this run) and which finished
    shards of the store the view does not list (``unlisted_shard_keys``).
    """

    stage_name = "datasets"
    priority = MINING_PRIORITY
    min_seconds = luigi.FloatParameter(default=PAPER_RUN_RULE.min_seconds,
                                       description="shortest excerpt, seconds (the paper's 5)")
    max_gap = luigi.IntParameter(default=PAPER_RUN_RULE.max_gap,
                                 description="longest dip below p_i inside a run, frames (0: the paper's rule)")

    @property
    def run_rule(self) -> RunRule:
        """Extraction's run rule, which the shards, the calibration and the measurement share."""
        return RunRule(self.min_seconds, self.max_gap)

    def calibration_task(self) -> Calibrate:
        """The Calibrate whose thresholds the shards extract with (it sees the same rule)."""
        return Calibrate(run_rule=self.run_rule, **self.detector_params())

    def key_params(self):
        params = super().key_params()
        params.pop("min_seconds")
        params.pop("max_gap")
        return {**params, **run_rule_key(self.run_rule)}

    def shard_params(self) -> dict:
        """What every shard task of this D_i is given."""
        return dict(run_rule=self.run_rule, **self.second_opinion_params(), **self.detector_params())

    def inputs(self):
        return {"calibration": self.calibration_task(), "detector": TrainDetector(**self.detector_params()),
                "scan": ScanCatalog()}

    @property
    def scan(self) -> ScanCatalog:
        """The catalog scan whose D_i this is."""
        return self.inputs()["scan"]

    def store_task(self) -> ExtractShard:
        """An ExtractShard that names the store (every shard's key and folder are the same)."""
        return ExtractShard(
            shard=STORE_TEMPLATE_SHARD,
            shard_key="store",
            tracks_file=self.scan.tracks_file,
            **self.shard_params(),
        )

    def input_keys(self):
        return {**super().input_keys(), "store": self.store_task().key}

    def shard_jobs(self):
        return [
            ExtractShard(shard=number, shard_key=key, tracks_file=self.scan.tracks_file, **self.shard_params())
            for number, key in scan_shards(self.scan.tracks_file)
        ]

    def build(self, folder):
        jobs = self.shard_jobs()
        feature_rejects = {
            job.shard_key: read_feature_rejects(job.feature_store) for job in jobs
        }
        return build_datasets(folder, self.store, [job.shard_key for job in jobs],
                              read_scan_rejects(self.scan.folder), feature_rejects,
                              finished_before=self.shards_finished_before())

    def manifest_extra(self):
        return view_manifest_fields(
            self.store,
            config().data_root,
            self.store_task().key,
            self.scan.key,
            [job.shard_key for job in self.shard_jobs()],
        )

    @property
    def store(self) -> ShardStore:
        return ShardStore(self.store_task().folder)

    @property
    def dataset(self) -> DatasetRun:
        """The D_i of this scan (the view folder and its readers)."""
        return DatasetRun(self.folder, Path(config().data_root))
