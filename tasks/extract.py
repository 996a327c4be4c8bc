"""Extract: the D_i datasets, one Luigi task per catalog shard, gathered into one run."""

import luigi
import pandas as pd

from pipeline.mining.calibration import thresholds_from_table
from pipeline.corpora.catalog import shards
from pipeline.mining.datasets import finalize_run
from pipeline.features.featurize import read_feature_rejects
from pipeline.mining.extraction import extract_stage_shard
from tasks.base import CatalogStage, ShardStage
from tasks.calibrate import Calibrate
from tasks.catalog import ScanCatalog
from tasks.detector import DetectCatalog, TrainDetector
from tasks.features import CatalogFeatures


class ExtractShard(ShardStage):
    """Excerpts of one shard, written into the run folder shared by all shards."""

    stage_name = "datasets"
    min_seconds = luigi.FloatParameter(default=5.0)

    def requires(self):
        shard = dict(shard=self.shard, shard_key=self.shard_key, tracks_file=self.tracks_file)
        return {"calibration": Calibrate(), "detector": TrainDetector(), "detect": DetectCatalog(**shard)}

    def input_keys(self):
        keys = super().input_keys()
        keys.pop("detect")  # fixed by the detector's key: every shard shares Extract's run folder
        return keys

    def temporary_patterns(self):
        tracks = [f"audio/*/{tid[:2]}/.{tid}-*" for tid in self.shard_tracks()["track_id"]]
        return [*super().temporary_patterns(), f"index/source=*/.part-{self.shard_key}.*",
                f"rejects/.part-{self.shard_key}.*", *tracks]

    def build(self, folder):
        calibration, detector = self.requires()["calibration"], self.requires()["detector"]
        thresholds = thresholds_from_table(pd.read_parquet(calibration.thresholds))
        return extract_stage_shard(self.shard_tracks(), self.requires()["detect"].probabilities, thresholds,
                                   self.min_seconds, folder, self.shard_key, detector.key, calibration.key)


class Extract(CatalogStage):
    """Every shard of the current catalog scan, then the run's rejects and counts.

    The run folder is keyed by the detector, the calibration and ``min_seconds``, not by the
    catalog, so a grown catalog reuses every finished shard; the manifest records which
    scan it covers, and a new scan makes this task run again (only new shards do work).
    """

    stage_name = "datasets"
    min_seconds = luigi.FloatParameter(default=5.0)

    def requires(self):
        return {"calibration": Calibrate(), "detector": TrainDetector(), "scan": ScanCatalog()}

    def input_keys(self):
        keys = super().input_keys()
        keys.pop("scan")
        return keys

    def shard_jobs(self):
        scan = self.requires()["scan"]
        return [ExtractShard(shard=number, shard_key=key, tracks_file=scan.tracks_file, min_seconds=self.min_seconds)
                for number, key, _ in shards(pd.read_parquet(scan.tracks_file))]

    def run(self):
        yield self.shard_jobs()  # dynamic dependencies: the shards exist once the scan has run
        super().run()

    def build(self, folder):
        jobs = self.shard_jobs()
        feature_rejects = {job.shard_key: read_feature_rejects(job.requires()["detect"].requires()["features"].store)
                           for job in jobs}
        return finalize_run(folder, [job.shard_key for job in jobs],
                            pd.read_parquet(self.requires()["scan"].folder / "rejects.parquet"), feature_rejects)
