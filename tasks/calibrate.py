"""Calibrate: per-source thresholds p_i so that 95 % of what they extract is at or below -20 dB."""

import luigi

from pipeline.corpora import stemset
from pipeline.corpora.catalog import scan_shards
from pipeline.mining.calibration import CATALOG_RULES, EXCERPT_GRID, RULES, build_calibration
from pipeline.mining.purity import CONFIDENCE, RESAMPLES
from tasks.base import RunRuleParameter, Stage, config, run_rule_key
from tasks.catalog import ScanCatalog
from tasks.detector import DetectCatalog, DetectStems, UsesDetector
from tasks.labels import Labels


class Calibrate(UsesDetector, Stage):
    """Thresholds from labelled songs that neither train the detector nor are scored by Evaluate
    (``splits``: the ``calibration`` split; a configuration that shares songs is refused).

    ``rule``: ``windows`` (the paper's: 95 % of the selected windows), ``excerpts`` (95 % of
    the windows of the excerpts extraction would cut there, the most audio), ``bound`` (the
    same, with a song-level lower confidence bound at ``confidence`` in place of the point
    estimate) or ``catalog`` (the catalog's own excerpts, their purity estimated from the
    calibration songs; it reads the whole catalog's detection, so its thresholds belong to
    one catalog scan).  ``run_rule`` is extraction's; Extract passes its own, so that the
    excerpt rules (and every rule's held-out yield) see the rule extraction applies.
    """

    stage_name = "calibration"
    target_db = luigi.FloatParameter(default=-20.0, description="a window counts as silent at V_i <= target_db, dB")
    target_fraction = luigi.FloatParameter(default=0.95,
                                           description="share of selected windows that must be silent (0..1)")
    min_windows = luigi.IntParameter(default=100, description="fewest windows a threshold may select")
    splits = luigi.TupleParameter(default=(stemset.CALIBRATION,),
                                  description="stem-set splits the thresholds come from (neither train nor "
                                              "Evaluate's split)")
    rule = luigi.ChoiceParameter(default="windows", choices=RULES,
                                 description="windows (the paper's), excerpts, bound or catalog")
    run_rule = RunRuleParameter(description="extraction's run rule (set by Extract)")
    confidence = luigi.FloatParameter(default=CONFIDENCE, description="one-sided confidence of the purity bounds")
    resamples = luigi.IntParameter(default=RESAMPLES, description="song-level bootstrap resamples of the bounds")
    catalog_songs = luigi.IntParameter(default=0, description="rule catalog: catalog tracks read (0: all)")

    def key_params(self):
        """With an excerpt rule, its candidate grid too (``EXCERPT_GRID``), so that thresholds
        chosen on an earlier grid are not reused."""
        params = super().key_params()
        params.pop("run_rule")
        params.update(run_rule_key(self.run_rule, keep_no_gap=True))
        if self.rule != "windows":
            params["excerpt_grid"] = EXCERPT_GRID
        return params

    def reads_catalog(self) -> bool:
        return self.rule in CATALOG_RULES

    def calibration_songs(self, allow_empty: bool = False) -> list:
        """The calibration songs; ``ValueError`` when they could be songs the detector trains on or
        Evaluate scores (and, unless ``allow_empty``, when there are none)."""
        # Evaluate by name: tasks.separator imports this module (through Extract)
        evaluated = luigi.task_register.Register.get_task_cls("Evaluate")().split
        return stemset.calibration_tracks(config().stem_root, tuple(self.splits), evaluated=(evaluated,),
                                          allow_empty=allow_empty)

    def inputs(self):
        """The labels and each split's detection; with rule ``catalog`` the catalog scan too (its
        key is part of this stage's: the thresholds belong to one scan)."""
        self.calibration_songs(allow_empty=True)  # a configuration that shares songs is refused here
        needs = {"labels": Labels(),
                 **{f"detect_{s}": DetectStems(split=s, **self.detector_params()) for s in self.splits}}
        if self.reads_catalog():
            needs["scan"] = ScanCatalog()
        return needs

    def shard_jobs(self) -> list[DetectCatalog]:
        """Rule ``catalog``: the detection of every shard of the scan (other rules: none)."""
        if not self.reads_catalog():
            return []
        scan = self.inputs()["scan"]
        return [DetectCatalog(shard=number, shard_key=key, tracks_file=scan.tracks_file, **self.detector_params())
                for number, key in scan_shards(scan.tracks_file)]

    def requires(self):
        """``inputs()`` and, with rule ``catalog`` once the scan is complete, every shard's
        detection as ``"shards"``, so that all workers sharing a scheduler schedule them (the
        first answer of an input generation is kept: Luigi asks again right before ``run()``)."""
        needs = dict(self.inputs())
        if self.reads_catalog():
            needs["shards"] = self.remembered(
                "listed_shards", lambda: self.shard_jobs() if needs["scan"].complete() else [])
        return needs

    def run(self):
        jobs = self.shard_jobs()
        if jobs:
            yield jobs  # dynamic dependencies: the shards exist once the scan has run
        super().run()

    def build(self, folder):
        self.calibration_songs()
        files = [self.inputs()[f"detect_{s}"].probabilities for s in self.splits]
        catalog = [job.probabilities for job in self.shard_jobs()]
        return build_calibration(files, self.input_folder("labels") / "labels.parquet", folder,
                                 self.target_db, self.target_fraction, self.min_windows, self.rule, self.run_rule,
                                 self.confidence, self.resamples, config().seed, catalog, self.catalog_songs)

    @property
    def thresholds(self):
        return self.folder / "thresholds.parquet"
