"""Features: order-2 scattering (C=7, F=54, 16 ms frames) of stem-set mixtures and catalog shards."""

import luigi

from pipeline.features import scattering as features
from pipeline.features.featurize import build_features, build_features_shard
from pipeline.storage.outputs import stable_hash
from tasks.base import ShardStage, Stage, config
from tasks.inputs import stem_set_fingerprint

DEFINITION = stable_hash({"scattering": features.SCATTERING, "log_eps": features.LOG_EPS,
                          "layout": "C7xF54 order-2 by n2", "rate": 16000})


class StemFeatures(Stage):
    """Features of the mixtures of one stem-set split, in ``<split>.npy``."""

    stage_name = "features"
    decodes_audio = True
    split = luigi.Parameter(description="stem-set split: train, valid or test")

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, (self.split,)), "definition": DEFINITION}

    def build(self, folder):
        return build_features(config().stem_root, self.split, folder / f"{self.split}.npy",
                              num_threads=config().threads or None)

    @property
    def store(self):
        return self.folder / f"{self.split}.npy"


class CatalogFeatures(ShardStage):
    """Features of one catalog shard, in ``shards/<shard_key>.npy``."""

    stage_name = "features"
    decodes_audio = True

    def external_keys(self):
        return {"definition": DEFINITION}

    def build(self, folder):
        return build_features_shard(self.shard_tracks(), self.store, num_threads=config().threads or None,
                                    progress=self.progress_callback())

    @property
    def store(self):
        return self.folder / "shards" / f"{self.shard_key}.npy"
