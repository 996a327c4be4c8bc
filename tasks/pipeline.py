"""All: every final output of the pipeline (what `silentmine run` and `make demo` build)."""

import luigi

from tasks.audit import Audit
from tasks.detector import DetectorReport
from tasks.evaluate import Evaluate
from tasks.extract import Extract
from tasks.measure import MeasureExtraction, catalog_truth


class All(luigi.WrapperTask):
    """Every final output: the detector report, the calibration, the D_i, the measurement (when
    ``[silentmine] catalog_truth`` names the catalog's known volumes), the audit report and the
    separators' evaluation."""

    def requires(self):
        final = {"detector": DetectorReport(), "calibration": Extract().calibration_task(),
                 "datasets": Extract()}
        if catalog_truth():
            final["measure"] = MeasureExtraction()
        final["audit"] = Audit()
        final["evaluation"] = Evaluate()
        return final
