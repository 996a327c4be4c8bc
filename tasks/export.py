"""Export: the configured catalog's D_i in a format training code reads (docs/exports.md)."""

import luigi

from pipeline.corpora.stemset import TRAINING_SPLITS
from pipeline.exports import FORMATS, build_exports
from pipeline.exports.hf import HF_LAYOUT
from pipeline.exports.musdb import CHANNELS, SAMPLE_RATE
from pipeline.exports.nemo import NEMO_REFERENCES
from pipeline.exports.records import SHARD_SIZE
from pipeline.exports.remix_pairs import PAIR_SECONDS, PAIRS, VALID_PAIRS
from pipeline.exports.trackfolders import VALID_FRACTION
from pipeline.sources import INAUDIBLE_DB
from tasks.base import Stage, config
from tasks.extract import Extract
from tasks.inputs import stem_set_fingerprint

# The options each format reads; the others leave its key alone.
FORMAT_OPTIONS = {
    "webdataset": ("shard_size",),
    "hf": ("shard_size",),
    "nemo": ("nemo_reference",),
    "musdb": ("sample_rate", "channels", "valid_fraction", "seed"),
    "remix-pairs": ("pairs", "valid_pairs", "pair_seconds", "sample_rate", "channels", "valid_fraction",
                    "min_target_db", "seed"),
}


class Export(Stage):
    """``exports/<key>/``: the D_i of ``Extract`` in one format (:mod:`pipeline.exports`), with
    ``export.json`` and the manifest.  Keyed by the format, its own options and the D_i's key
    (and, for ``remix-pairs``, the stem set's fingerprint)."""

    stage_name = "exports"
    format = luigi.ChoiceParameter(choices=FORMATS, var_type=str, default="csv", description="the export's format")
    shard_size = luigi.IntParameter(default=SHARD_SIZE, description="excerpts per file (webdataset tars, hf parquet)")
    nemo_reference = luigi.ChoiceParameter(choices=NEMO_REFERENCES, var_type=str, default="excerpt",
                                           description="nemo: point at the excerpt files, or into the catalog "
                                                       "files with an offset")
    pairs = luigi.IntParameter(default=PAIRS, description="remix-pairs: train pairs per source (train split's stems)")
    valid_pairs = luigi.IntParameter(default=VALID_PAIRS, description="remix-pairs: valid pairs per source")
    pair_seconds = luigi.FloatParameter(default=PAIR_SECONDS, description="remix-pairs: seconds per pair")
    sample_rate = luigi.IntParameter(default=SAMPLE_RATE, description="musdb, remix-pairs: Hz of the tracks")
    channels = luigi.IntParameter(default=CHANNELS, description="musdb, remix-pairs: channels of the tracks")
    valid_fraction = luigi.FloatParameter(default=VALID_FRACTION,
                                          description="musdb, remix-pairs: share of catalog files in the valid split")
    min_target_db = luigi.FloatParameter(default=INAUDIBLE_DB,
                                         description="remix-pairs: skip a pair whose stem is at most this loud (dB)")
    seed = luigi.OptionalIntParameter(default=None, description="musdb, remix-pairs; None: [silentmine] seed")

    def requires(self):
        return {"dataset": Extract()}

    def external_keys(self):
        if self.format != "remix-pairs":
            return {}
        return {"stem_set": stem_set_fingerprint(config().stem_root, TRAINING_SPLITS)}

    @property
    def run_seed(self) -> int:
        return config().seed if self.seed is None else self.seed

    def key_params(self):
        params = {**super().key_params(), "seed": self.run_seed}
        mine = FORMAT_OPTIONS.get(self.format, ())
        params = {k: v for k, v in params.items() if k == "format" or k in mine}
        if self.format == "hf":
            params["hf_layout"] = HF_LAYOUT
        return params

    def build(self, folder):
        options = {name: getattr(self, name) for name in FORMAT_OPTIONS.get(self.format, ())}
        if "seed" in options:
            options["seed"] = self.run_seed
        if self.format == "remix-pairs":
            options["stem_root"] = config().stem_root
            options["pairs"] = {"train": options.pop("pairs"), "valid": options.pop("valid_pairs")}
        unit = {"musdb": "excerpts", "remix-pairs": "pairs"}.get(self.format, "excerpts")
        return build_exports(self.requires()["dataset"].dataset, self.format, folder,
                             progress=self.progress_callback(unit=unit), **options)
