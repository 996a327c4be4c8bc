"""MeasureExtraction: what extraction got right, against a catalog's known stems (the demo)."""

import luigi

from pipeline.mining.ground_truth import measure_stage
from tasks.base import CatalogStage, config
from tasks.extract import Extract
from tasks.inputs import resolved


class MeasureExtraction(CatalogStage):
    """Reads ``truth`` (never read by the pipeline itself) beside the D_i index."""

    stage_name = "measure"
    truth = luigi.Parameter(default="data/demo/catalog_truth.parquet")

    def requires(self):
        return {"datasets": Extract()}

    def key_params(self):
        return {"truth": resolved(self.truth), "catalog": resolved(config().catalog)}

    def build(self, folder):
        return measure_stage(self.input_folder("datasets"), self.truth, config().catalog, folder)
