"""Export: the configured catalog's D_i in a format training code reads (lhotse, hf, webdataset, nemo, csv)."""

import luigi

from pipeline.mining.export import FORMATS, NEMO_REFERENCES, SHARD_SIZE, build_exports
from tasks.base import Stage
from tasks.extract import Extract


class Export(Stage):
    """``exports/<key>/``: the D_i of ``Extract`` in one format (:mod:`pipeline.mining.export`), with
    ``export.json`` and the manifest.  Keyed by the format, its own options and the D_i's key."""

    stage_name = "exports"
    format = luigi.ChoiceParameter(choices=FORMATS, var_type=str, default="csv")
    shard_size = luigi.IntParameter(default=SHARD_SIZE, description="excerpts per tar shard (webdataset)")
    nemo_reference = luigi.ChoiceParameter(choices=NEMO_REFERENCES, var_type=str, default="excerpt",
                                           description="nemo: point at the excerpt files, or into the catalog "
                                                       "files with an offset")

    def requires(self):
        return {"dataset": Extract()}

    def key_params(self):
        params = super().key_params()
        if self.format != "webdataset":
            params.pop("shard_size")  # options of another format do not change this export
        if self.format != "nemo":
            params.pop("nemo_reference")
        return params

    def build(self, folder):
        return build_exports(self.requires()["dataset"].dataset, self.format, folder, shard_size=self.shard_size,
                             nemo_reference=self.nemo_reference, progress=self.progress_callback(unit="excerpts"))
