"""Calibrate: per-source thresholds p_i so that 95 % of positives are at or below -20 dB."""

import luigi

from pipeline.mining.calibration import EXCERPT_GRID, RULES, build_calibration
from tasks.base import RunRuleParameter, Stage, run_rule_key
from tasks.detector import DetectStems
from tasks.labels import Labels


class Calibrate(Stage):
    """Thresholds from labelled tracks the detector was not trained on (``splits``).

    ``rule``: ``windows`` (the paper's: 95 % of the selected windows) or ``excerpts`` (95 % of
    the windows of the excerpts extraction would cut there, the most audio).  ``run_rule`` is
    extraction's; Extract passes its own, so that the excerpts rule (and both rules' held-out
    yields) sees the rule extraction applies.
    """

    stage_name = "calibration"
    target_db = luigi.FloatParameter(default=-20.0, description="a window counts as silent at V_i <= target_db, dB")
    target_fraction = luigi.FloatParameter(default=0.95,
                                           description="share of selected windows that must be silent (0..1)")
    min_windows = luigi.IntParameter(default=100, description="fewest windows a threshold may select")
    splits = luigi.TupleParameter(default=("test",), description="held-out stem-set splits the thresholds come from")
    rule = luigi.ChoiceParameter(default="windows", choices=RULES, description="windows (the paper's) or excerpts")
    run_rule = RunRuleParameter(description="extraction's run rule (set by Extract)")

    def key_params(self):
        """With ``rule = excerpts``, its candidate grid too (``EXCERPT_GRID``), so that thresholds
        chosen on an earlier grid are not reused; the windows rule keeps its keys."""
        params = super().key_params()
        params.pop("run_rule")
        params.update(run_rule_key(self.run_rule, keep_no_gap=True))
        if self.rule == "excerpts":
            params["excerpt_grid"] = EXCERPT_GRID
        return params

    def requires(self):
        return {"labels": Labels(), **{f"detect_{s}": DetectStems(split=s) for s in self.splits}}

    def build(self, folder):
        files = [self.requires()[f"detect_{s}"].probabilities for s in self.splits]
        return build_calibration(files, self.input_folder("labels") / "labels.parquet", folder,
                                 self.target_db, self.target_fraction, self.min_windows, self.rule, self.run_rule)

    @property
    def thresholds(self):
        return self.folder / "thresholds.parquet"
