"""MeasureExtraction: what extraction got right, against a catalog's known stems (the demo)."""

import luigi

from pipeline.mining.calibration import RULES
from pipeline.mining.ground_truth import build_measure
from tasks.base import Stage, config
from tasks.calibrate import Calibrate
from tasks.extract import Extract
from tasks.inputs import resolved


class MeasureExtraction(Stage):
    """Reads ``truth`` (never read by the pipeline itself) beside the D_i index; keyed by the D_i.

    Measures the extracted D_i (``measure.csv``), and, from the catalog's detector
    probabilities, the excerpts each calibration rule's thresholds would cut (``rules.csv``)
    and the yield-against-purity curve as the threshold varies (``yield_curve.csv``/``.png``).
    """

    stage_name = "measure"
    truth = luigi.Parameter(default="data/demo/catalog_truth.parquet",
                            description="the catalog's true relative volumes per window (the demo writes one)")

    def requires(self):
        extract = Extract()
        rule = dict(min_seconds=extract.min_seconds, max_gap=extract.max_gap)
        return {"datasets": extract, **{f"calibration_{r}": Calibrate(rule=r, **rule) for r in RULES}}

    def key_params(self):
        return {"truth": resolved(self.truth), "catalog": resolved(config().catalog)}

    def build(self, folder):
        extract = self.requires()["datasets"]
        return build_measure(extract.dataset, self.truth, config().catalog, folder,
                             [job.probabilities for job in extract.shard_jobs()],
                             extract.scan.tracks_file,
                             {r: self.requires()[f"calibration_{r}"].thresholds for r in RULES},
                             extract.calibration_task().rule, extract.min_seconds, extract.max_gap)
