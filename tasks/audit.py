"""Audit: a self-contained HTML report of a catalog's D_i, to read and listen to."""

import luigi

from pipeline.mining.audit import build_audit
from tasks.base import Stage, config
from tasks.extract import Extract
from tasks.inputs import resolved
from tasks.measure import MeasureExtraction, catalog_truth


class Audit(Stage):
    """``audit/<key>/report/index.html``: counts, distributions, calibration, rejects, provenance,
    and a page of excerpts per source (players, spectrograms, index rows).  Keyed by the D_i it
    reports on, and by the ground truth it reads when there is one (``[silentmine]
    catalog_truth``: the demo's), measured against the catalog the D_i's scan read."""

    stage_name = "audit"
    decodes_audio = True
    per_source = luigi.IntParameter(default=50, description="excerpts with a player per source page")
    clip_seconds = luigi.FloatParameter(default=6.0, description="length of each excerpt's preview clip, seconds")

    def requires(self):
        needs = {"datasets": Extract(), "calibration": Extract().calibration_task()}
        if catalog_truth():
            needs["measure"] = MeasureExtraction()  # the yield-against-purity curve
        return needs

    def key_params(self):
        truth = catalog_truth()
        return {**super().key_params(), "truth": resolved(truth) if truth else None}

    def build(self, folder):
        truth = catalog_truth()
        extract = self.requires()["datasets"]
        return build_audit(extract.dataset, self.input_folder("calibration"), folder / "report",
                           truth=truth or None, catalog_root=extract.scan.catalog_path if truth else None,
                           per_source=self.per_source, clip_seconds=self.clip_seconds, seed=config().seed,
                           measure_dir=self.input_folder("measure") if truth else None)

    @property
    def report(self):
        return self.folder / "report" / "index.html"
