"""The separator: TrainSeparator (with or without the remix step) and Evaluate (SDR table)."""

import luigi

from pipeline.separation.demucs import DemucsConfig
from pipeline.separation.evaluation import evaluate_runs
from pipeline.separation.training import TrainConfig, train_separator
from tasks.base import Stage, config
from tasks.extract import Extract
from tasks.inputs import stem_set_fingerprint

SPLITS = ("train", "valid")


class TrainSeparator(Stage):
    """Demucs trained on the stem set's train split; with ``remix`` it also feeds on the D_i."""

    stage_name = "separator"
    resources = {"gpu": 1}
    remix = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING)
    epochs = luigi.IntParameter(default=400)
    batches_per_epoch = luigi.IntParameter(default=0, description="0: the paper's epoch (every 5 s window, 0.5 s stride)")
    batch_size = luigi.IntParameter(default=128)
    window_s = luigi.FloatParameter(default=5.0)
    lr_decay_every = luigi.IntParameter(default=160)
    channels = luigi.IntParameter(default=48, description="C_1; the paper's 48, the 2019 code's 100")
    depth = luigi.IntParameter(default=6)
    decoder = luigi.ChoiceParameter(default="paper", choices=["paper", "additive"])

    def requires(self):
        return {"datasets": Extract()} if self.remix else {}

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, SPLITS)}

    def key_params(self):
        return {**super().key_params(), "seed": config().seed}

    def build(self, folder):
        settings = TrainConfig(
            epochs=self.epochs, batches_per_epoch=self.batches_per_epoch or None, batch_size=self.batch_size,
            window_s=self.window_s, lr_decay_every=self.lr_decay_every, seed=config().seed,
            num_threads=config().threads or None,
            model=DemucsConfig(channels=self.channels, depth=self.depth, decoder=self.decoder))
        run_dir = self.input_folder("datasets") if self.remix else None
        history = train_separator(settings, config().stem_root, run_dir, folder, resume=True)
        return {"epochs": len(history), "remix_steps": int(sum(r.get("remix_steps", 0) for r in history)),
                "final_train_loss": history[-1].get("train_loss"), "final_valid_loss": history[-1].get("valid_loss")}

    @property
    def best(self):
        return self.folder / "best.pt"


class Evaluate(Stage):
    """SDR (museval v4) of the runs with and without remix, side by side (the paper's table 1)."""

    stage_name = "evaluate"
    split = luigi.Parameter(default="test")
    max_tracks = luigi.IntParameter(default=0, description="0: every track of the split")

    def requires(self):
        return {"with_remix": TrainSeparator(remix=True), "without_remix": TrainSeparator(remix=False)}

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, (self.split,))}

    def build(self, folder):
        runs = {"with remix": self.requires()["with_remix"].best, "without remix": self.requires()["without_remix"].best}
        return evaluate_runs(runs, config().stem_root, folder, self.split, self.max_tracks or None)
