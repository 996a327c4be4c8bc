"""Evaluate: SDR and SI-SNR tables of any set of separator runs, the rungs of the mining value
ladder among them (``tasks.ladder``), with paired contrasts."""

import luigi

from pipeline.separation.comparison import INTERVAL_NAME
from pipeline.separation.evaluation import ORACLE_HOP_S, ORACLE_WINDOW_S, build_evaluate
from pipeline.storage.outputs import StageResult
from tasks.base import Stage, config
from tasks.inputs import stem_set_fingerprint
from tasks.ladder import ladder_task, missing_ground_truth
from tasks.separator import TrainSeparator


def reads_mined_d_i(task: TrainSeparator) -> bool:
    """Whether a run feeds on the mined D_i (a ladder rung on the oracle D_i or the catalog
    stems is a subclass, and reads none)."""
    return type(task) is TrainSeparator and task.reads_datasets


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
    ``repeat_mining``: each seed's runs on the mined D_i read the D_i of a detector trained under
    that seed (``TrainDetector(detector_seed=seed)``, its calibration and extraction), so their
    interval holds the detector's training noise too; off, every seed reads one detector's D_i.
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
    repeat_mining = luigi.BoolParameter(default=False, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                        description="each seed's runs on the mined D_i read the D_i of a detector "
                                                    "trained under that seed (its noise enters their intervals)")
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
            label: {seed: self.run_task(dict(params), seed) for seed in seeds}
            for label, params in self.runs.items() if label not in left_out
        }

    def run_task(self, params: dict, seed: int | None) -> TrainSeparator:
        """The training task of a row's ``params`` under ``seed`` (None: the run's own); with
        ``repeat_mining``, a run on the mined D_i reads those of the detector of that seed."""
        task = ladder_task({**params, **({} if seed is None else {"seed": seed})})
        if self.repeat_mining and reads_mined_d_i(task):
            task = TrainSeparator(**{**task.param_kwargs, "detector_seed": task.run_seed})
        return task

    def mining_line(self) -> str | None:
        """What the intervals of the rows on the mined D_i hold of the detector's training noise
        (None: no such row)."""
        mined = [label for label, tasks in self.run_tasks().items()
                 if any(reads_mined_d_i(t) for t in tasks.values())]
        if not mined:
            return None
        if self.repeat_mining:
            return (f"mining repeated per seed: each seed of {', '.join(mined)} reads the D_i of a detector trained "
                    "under that seed, so the detector's training noise is in its interval")
        return (f"mined D_i: every seed of {', '.join(mined)} reads one detector's D_i, so its interval holds the "
                "separator's training noise, not the detector's ([Evaluate] repeat_mining repeats the mining)")

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
        if not self.repeat_mining:  # the runs' keys say it anyway; Evaluates made before it keep their keys
            params.pop("repeat_mining")
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
        mining = self.mining_line()
        return StageResult({**result.counts, "left_out": left_out},
                           (*result.summary, *([mining] if mining else []),
                            *(f"left out: {label}: {reason}" for label, reason in left_out.items())))
