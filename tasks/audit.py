"""Audit: a self-contained HTML report of a run's D_i, to read and listen to."""

from pathlib import Path

import luigi

from pipeline.mining.audit import write_audit
from tasks.base import CatalogStage, config
from tasks.extract import Extract
from tasks.measure import MeasureExtraction


class Audit(CatalogStage):
    """``audit/<key>/report/index.html``: counts, distributions, calibration, rejects, provenance,
    and a page of excerpts per source (players, spectrograms, index rows)."""

    stage_name = "audit"
    per_source = luigi.IntParameter(default=50, description="excerpts with a player per source page")
    clip_seconds = luigi.FloatParameter(default=6.0)

    def requires(self):
        return {"datasets": Extract(), "calibration": Extract().requires()["calibration"]}

    def build(self, folder):
        truth = MeasureExtraction().truth
        known = Path(truth).exists()
        report = write_audit(self.input_folder("datasets"), self.input_folder("calibration"), folder / "report",
                             truth=truth if known else None, catalog_root=config().catalog if known else None,
                             per_source=self.per_source, clip_seconds=self.clip_seconds, seed=config().seed)
        return {"summary": [f"report: {report}"]}

    @property
    def report(self):
        return self.folder / "report" / "index.html"
