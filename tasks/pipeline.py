"""All: every final output of the pipeline (what `silentmine run` and `make demo` build)."""

import luigi

from tasks.catalog import ScanCatalog
from tasks.labels import Labels


class All(luigi.WrapperTask):
    def requires(self):
        return {"labels": Labels(), "catalog": ScanCatalog()}
