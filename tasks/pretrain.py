"""PretrainEncoder: contrastive pretraining of a separator's encoder (DeepDeMix, sections 4.3-5.2),
whose ``encoder.pt`` initialises TrainSeparator's model in the ``contrastive`` schemes."""

import luigi

from pipeline.separation.contrastive import ENCODER, LR, MARGIN, PretrainConfig, build_pretrain
from pipeline.separation.registry import model_names
from tasks.base import Stage, UsesGpu, config
from tasks.inputs import stem_set_fingerprint


class PretrainEncoder(UsesGpu, Stage):
    """The encoder of ``model`` (config ``model_config``, over its defaults) trained on triplets of
    the stem set's train split (triplet margin loss, L2, ``margin``; Adam at ``lr``).  Keyed and
    resumable (``checkpoint.pt`` every epoch); ``losses.png`` is the loss curve."""

    stage_name = "pretrain"
    decodes_audio = True
    model = luigi.ChoiceParameter(default="demucs", choices=model_names(), description="registered separator")
    model_config = luigi.DictParameter(default={}, description="the model's config fields over its defaults")
    epochs = luigi.IntParameter(default=40, description="training epochs (the paper's 40)")
    batches_per_epoch = luigi.IntParameter(default=0, description="0: every non-overlapping window once")
    batch_size = luigi.IntParameter(default=16, description="triplets per step (the paper's 16)")
    window_s = luigi.FloatParameter(default=5.0, description="seconds per triplet window")
    lr = luigi.FloatParameter(default=LR, description="Adam learning rate (the paper's 1e-3)")
    margin = luigi.FloatParameter(default=MARGIN, description="triplet margin, L2 distance (the paper's 1.0)")
    seed = luigi.OptionalIntParameter(default=None, description="None: [silentmine] seed (the key holds the number)")

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, ("train",))}

    @property
    def run_seed(self) -> int:
        return config().seed if self.seed is None else self.seed

    def key_params(self):
        return {**super().key_params(), "seed": self.run_seed}

    def settings(self) -> PretrainConfig:
        return PretrainConfig(model_name=self.model, model=dict(self.model_config), epochs=self.epochs,
                              batches_per_epoch=self.batches_per_epoch or None, batch_size=self.batch_size,
                              window_s=self.window_s, lr=self.lr, margin=self.margin, seed=self.run_seed,
                              num_threads=config().threads or None)

    def build(self, folder):
        return build_pretrain(self.settings(), config().stem_root, folder)

    @property
    def encoder_file(self):
        return self.folder / ENCODER
