"""All: every final output of the pipeline (what `silentmine run` and `make demo` build)."""

from pathlib import Path

import luigi

from tasks.audit import Audit
from tasks.detector import DetectorReport
from tasks.extract import Extract
from tasks.measure import MeasureExtraction
from tasks.separator import Evaluate


class All(luigi.WrapperTask):
    """Every final output: the detector report, the calibration, the D_i, the measurement (when
    the truth table exists), the audit report and the separators' evaluation."""

    def requires(self):
        final = {"detector": DetectorReport(), "calibration": Extract().calibration_task(),
                 "datasets": Extract()}
        truth = MeasureExtraction()
        if Path(truth.truth).exists():
            final["measure"] = truth
        final["audit"] = Audit()
        final["evaluation"] = Evaluate()
        return final
