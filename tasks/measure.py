"""MeasureExtraction: what extraction got right, against a catalog's known stems (the demo)."""

from pathlib import Path

from pipeline.mining.calibration import RULES
from pipeline.mining.ground_truth import build_measure
from tasks.base import Stage, config
from tasks.calibrate import Calibrate
from tasks.extract import Extract
from tasks.inputs import resolved


def catalog_truth() -> str:
    """``[silentmine] catalog_truth``: the configured catalog's known per-window volumes; empty:
    none.  ``FileNotFoundError`` when it names a file that is not there."""
    truth = config().catalog_truth
    if truth and not Path(truth).is_file():
        raise FileNotFoundError(f"[silentmine] catalog_truth = {truth}: no such file (leave it empty for a catalog "
                                "without known stems)")
    return truth


class MeasureExtraction(Stage):
    """Reads ``[silentmine] catalog_truth`` (never read by the pipeline itself) beside the D_i
    index; keyed by the D_i and the truth file's path.

    Measures the extracted D_i (``measure.csv``), and, from the catalog's detector
    probabilities, the excerpts each calibration rule's thresholds would cut (``rules.csv``)
    and the yield-against-purity curve as the threshold varies (``yield_curve.csv``/``.png``),
    all with extraction's run rule.  The catalog is the one the D_i's scan read.
    """

    stage_name = "measure"

    def requires(self):
        extract = Extract()
        return {"datasets": extract,
                **{f"calibration_{r}": Calibrate(rule=r, run_rule=extract.run_rule) for r in RULES}}

    def key_params(self):
        truth = catalog_truth()
        if not truth:
            raise ValueError("MeasureExtraction needs [silentmine] catalog_truth, the catalog's known volumes")
        return {"truth": resolved(truth), "catalog": self.requires()["datasets"].scan.catalog_path}

    def build(self, folder):
        extract = self.requires()["datasets"]
        return build_measure(extract.dataset, catalog_truth(), extract.scan.catalog_path, folder,
                             [job.probabilities for job in extract.shard_jobs()],
                             extract.scan.tracks_file,
                             {r: self.requires()[f"calibration_{r}"].thresholds for r in RULES},
                             extract.calibration_task().rule, extract.run_rule)
