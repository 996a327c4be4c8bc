"""Labels: relative volumes V_i (dB) of every stem-set track on the 0.64 s / 64 ms grid."""

import luigi

from pipeline.corpora.labels import build_labels
from pipeline.corpora.stemset import SPLITS
from tasks.base import Stage, config
from tasks.inputs import stem_set_fingerprint


class Labels(Stage):
    """``labels/<key>/labels.parquet``: split, name, track_id, window, start_s and V_drums ..
    V_vocals (dB) of every window of every stem-set track of ``splits``."""

    stage_name = "labels"
    decodes_audio = True
    splits = luigi.TupleParameter(default=SPLITS, description="stem-set splits labelled")

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, tuple(self.splits))}

    def build(self, folder):
        return build_labels(config().stem_root, list(self.splits), folder / "labels.parquet")
