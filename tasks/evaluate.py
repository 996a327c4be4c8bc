"""Evaluate: SDR and SI-SNR tables of any set of separator runs, the rungs of the mining value
ladder among them (``tasks.ladder``), with paired contrasts."""

import luigi

from pipeline.separation.comparison import INTERVAL_NAME
from pipeline.separation.evaluation import ORACLE_HOP_S, ORACLE_WINDOW_S, build_evaluate
from pipeline.storage.outputs import StageResult
from tasks.base import Stage, config
from tasks.inputs import stem_set_fingerprint
from tasks.ladder import ladder_task, missing_ground_truth


class Evaluate(Stage):
    """SDR (museval v4) and SI-SNR of a set of runs and the two reference rows (trivial: every
    source = mixture / 4; oracle: ideal ratio masks) side by side (the paper's table 1), with
    paired contrasts (median difference over tracks, a 95 % interval with the training noise
    between seeds in it, Wilcoxon p on per-track values) and box plots.

    ``runs`` maps a row label to the TrainSeparator parameters of that run (over luigi.cfg's
    ``[TrainSeparator]``), e.g. ``{"with remix": {"remix": true}, "tasnet": {"model": "tasnet"}}``;
    the mining value ladder's rungs add ``"d_i": "oracle"`` (remix on the oracle D_i) or
    ``"catalog_stems": true`` (the catalog's true stems as labelled data): :mod:`tasks.ladder`.
    ``seeds`` trains every run under each seed (its rows average the seeds per track and show
    their spread); ``contrasts`` lists ``[run, baseline]`` pairs (``run - baseline``).
    """

    stage_name = "evaluate"
    decodes_audio = True
    split = luigi.Parameter(default="test", description="stem-set split scored")
    max_tracks = luigi.IntParameter(default=0, description="0: every track of the split")
    runs = luigi.DictParameter(
        default={"with remix": {"remix": True}, "without remix": {"remix": False}},
        description="row label -> TrainSeparator parameters",
    )
    seeds = luigi.ListParameter(default=[], description="[]: each run once, at its seed ([silentmine] seed)")
    contrasts = luigi.ListParameter(default=[], description="[[run, baseline], ...]; []: every pair of runs")
    # Not "workers": as the root task's flag it would clash with Luigi's own --workers.
    score_workers = luigi.IntParameter(default=0, significant=False, description="scoring processes; 0: every core")

    def run_tasks(self) -> dict[str, dict]:
        """Row label -> {seed: TrainSeparator} (seed None: the run's own seed)."""
        if not self.runs:
            raise ValueError("Evaluate needs at least one run")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        seeds = [int(s) for s in self.seeds] or [None]
        left_out = self.left_out()
        return {
            label: {seed: ladder_task({**dict(params), **({} if seed is None else {"seed": seed})}) for seed in seeds}
            for label, params in self.runs.items() if label not in left_out
        }

    def left_out(self) -> dict[str, str]:
        """Row label -> why it is left out: a rung of the ladder whose ground truth
        (``[silentmine] catalog_truth`` or ``catalog_stems``) is not there (as MeasureExtraction
        runs only where the truth exists); its contrasts go with it, and the summary says so."""
        reasons = {label: missing_ground_truth(dict(params)) for label, params in self.runs.items()}
        return {label: reason for label, reason in reasons.items() if reason}

    def key_params(self):
        """The parameters, how the rows and intervals are computed (a new method, a new key), and
        the rows left out for want of ground truth, if any."""
        params = {**super().key_params(), "oracle_stft_s": [round(ORACLE_WINDOW_S, 6), round(ORACLE_HOP_S, 6)],
                  "interval": INTERVAL_NAME}
        if self.left_out():
            params["left_out"] = sorted(self.left_out())
        return params

    def requires(self):
        return {
            label if seed is None else f"{label} @ seed {seed}": task
            for label, tasks in self.run_tasks().items()
            for seed, task in tasks.items()
        }

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, (self.split,))}

    def build(self, folder):
        runs = {
            label: {task.run_seed: task.best for task in tasks.values()} for label, tasks in self.run_tasks().items()
        }
        left_out = self.left_out()
        contrasts = [tuple(pair) for pair in self.contrasts if not set(pair) & set(left_out)]
        if self.contrasts and not contrasts:
            raise ValueError(f"every contrast names a row left out: {left_out}")
        result = build_evaluate(
            runs,
            config().stem_root,
            folder,
            self.split,
            self.max_tracks or None,
            workers=self.score_workers,
            contrasts=contrasts or None,
        )
        return StageResult({**result.counts, "left_out": left_out},
                           (*result.summary, *(f"left out: {label}: {reason}" for label, reason in left_out.items())))
