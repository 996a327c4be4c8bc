"""Calibrate: per-source thresholds p_i so that 95 % of positives are at or below -20 dB."""

import luigi

from pipeline.mining.calibration import calibrate_stage
from tasks.base import Stage
from tasks.detector import DetectStems
from tasks.labels import Labels


class Calibrate(Stage):
    """Thresholds from labelled tracks the detector was not trained on (``splits``)."""

    stage_name = "calibration"
    target_db = luigi.FloatParameter(default=-20.0)
    target_fraction = luigi.FloatParameter(default=0.95)
    min_windows = luigi.IntParameter(default=100, description="fewest windows a threshold may select")
    splits = luigi.TupleParameter(default=("test",))

    def requires(self):
        return {"labels": Labels(), **{f"detect_{s}": DetectStems(split=s) for s in self.splits}}

    def build(self, folder):
        files = [self.requires()[f"detect_{s}"].probabilities for s in self.splits]
        return calibrate_stage(files, self.input_folder("labels") / "labels.parquet", folder,
                               self.target_db, self.target_fraction, self.min_windows)

    @property
    def thresholds(self):
        return self.folder / "thresholds.parquet"
