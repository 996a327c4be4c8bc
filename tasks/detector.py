"""The silent-source detector: TrainDetector, DetectStems, DetectCatalog, DetectorReport."""

import luigi

from classifiers import runs
from classifiers.remix import RemixConfig
from classifiers.training import PAPER_BATCH_SIZE, PAPER_CROP_STRIDE_S, PAPER_LR
from pipeline.sources import LABEL_SILENT_DB
from tasks.base import ShardStage, Stage, UsesGpu, config
from tasks.features import CatalogFeatures, StemFeatures
from tasks.labels import Labels


class DetectorSeedParameter(luigi.OptionalIntParameter):
    """The seed a detector trains under: None, and ``[silentmine] seed`` itself, normalise to None,
    so that the default detector has one task id however it is asked for."""

    def normalize(self, x):
        x = super().normalize(x)
        return None if x is None or x == config().seed else x


class UsesDetector:
    """A stage that reads a detector's output: ``detector_seed`` picks the detector (None:
    ``[silentmine] seed``'s).  The parameter is left out of the key, which holds the detector's
    key through the inputs.  ``Evaluate(repeat_mining=True)`` gives every seed's remix runs the
    D_i of the detector trained under that seed."""

    detector_seed = DetectorSeedParameter(default=None, description="seed of the detector read (None: "
                                          "[silentmine] seed; its key holds the number)")

    def detector_params(self) -> dict:
        """This stage's detector choice, to pass on to what it requires."""
        return {"detector_seed": self.detector_seed}

    def key_params(self):
        params = dict(super().key_params())  # type: ignore[misc]
        params.pop("detector_seed", None)
        return params


class TrainDetector(UsesGpu, Stage):
    """Trains on the train split with -13 dB labels; early stopping on the valid split.  With
    ``remix_songs`` > 0 each epoch also trains on remixes of the train split's stems
    (:mod:`classifiers.remix`): ``remix_songs`` of ``remix_seconds`` each, a new set every
    ``remix_every`` epochs.  ``detector_seed`` trains under another seed than ``[silentmine] seed``
    (the key holds the seed used)."""

    stage_name = "detector"
    detector_seed = DetectorSeedParameter(default=None, description="seed of this training (None: [silentmine] seed)")
    width = luigi.FloatParameter(default=1.0, description="channel multiplier; 1.0 = the paper's widths")
    epochs = luigi.IntParameter(default=40, description="most training epochs (early stopping may end sooner)")
    patience = luigi.IntParameter(default=5, description="epochs without a better valid loss before stopping")
    crop_seconds = luigi.FloatParameter(default=5.0, description="length of a training crop, seconds (the paper's 5)")
    gain_db = luigi.FloatParameter(default=0.0, description="random gain augmentation range, dB (0: off, the paper)")
    shift_rows = luigi.IntParameter(default=0, description="random pitch shift, order-1 rows of 1/8 octave (0: off)")
    lr = luigi.FloatParameter(default=PAPER_LR, description="Adam learning rate (the paper's 5e-4)")
    batch_size = luigi.IntParameter(default=PAPER_BATCH_SIZE, description="crops per step (the paper's 64)")
    silent_db = luigi.FloatParameter(default=LABEL_SILENT_DB,
                                     description="training label: silent when V_i <= silent_db (the paper's -13 dB)")
    crop_stride_seconds = luigi.FloatParameter(default=PAPER_CROP_STRIDE_S,
                                               description="seconds between an epoch's crops (the paper's 0.5)")
    remix_songs = luigi.IntParameter(default=0, description="remixes of the train stems per set (0: no remixes)")
    remix_seconds = luigi.FloatParameter(default=RemixConfig.seconds, description="length of a remix, s")
    remix_every = luigi.IntParameter(default=RemixConfig.every, description="epochs per remix set (0: one set)")
    remix_gain_db = luigi.FloatParameter(default=RemixConfig.gain_db, description="each remixed stem's gain range, dB")
    remix_silence_prob = luigi.FloatParameter(default=RemixConfig.silence_prob,
                                              description="probability that a remixed stem gets silent sections")

    def requires(self):
        return {"labels": Labels(), "train": StemFeatures(split="train"), "valid": StemFeatures(split="valid")}

    def key_params(self):
        """With the paper's ``lr``, ``batch_size``, ``silent_db`` and ``crop_stride_seconds``
        these are left out, and without remixes the remix parameters: detectors trained before
        they were parameters keep their keys."""
        params = {**super().key_params(), "seed": self.seed}
        params.pop("detector_seed")
        paper = {"lr": PAPER_LR, "batch_size": PAPER_BATCH_SIZE, "silent_db": LABEL_SILENT_DB,
                 "crop_stride_seconds": PAPER_CROP_STRIDE_S}
        if not self.remix_songs:
            params = {name: value for name, value in params.items() if not name.startswith("remix_")}
        return {name: value for name, value in params.items() if name not in paper or value != paper[name]}

    @property
    def seed(self) -> int:
        """The seed this detector trains under."""
        return config().seed if self.detector_seed is None else self.detector_seed

    def remix_config(self) -> RemixConfig | None:
        if not self.remix_songs:
            return None
        return RemixConfig(songs=self.remix_songs, seconds=self.remix_seconds, every=self.remix_every,
                           gain_db=self.remix_gain_db, silence_prob=self.remix_silence_prob)

    def build(self, folder):
        settings = runs.train_config(self.width, self.epochs, self.patience, self.crop_seconds, self.gain_db,
                                     self.shift_rows, config().threads or None, lr=self.lr,
                                     batch_size=self.batch_size, silent_db=self.silent_db,
                                     crop_stride_seconds=self.crop_stride_seconds)
        return runs.build_detector(self.requires()["train"].store, self.requires()["valid"].store,
                                   self.input_folder("labels") / "labels.parquet", settings, self.seed, folder,
                                   self.remix_config(), config().stem_root)

    @property
    def checkpoint(self):
        return self.folder / "detector.pt"


class DetectStems(UsesDetector, UsesGpu, Stage):
    """Per-frame probabilities on a held-out stem-set split (for calibration and the report)."""

    stage_name = "detect"
    split = luigi.Parameter(default="test", description="stem-set split scored")

    def requires(self):
        return {"detector": TrainDetector(**self.detector_params()), "features": StemFeatures(split=self.split)}

    def build(self, folder):
        return runs.build_detect(self.requires()["detector"].checkpoint, self.requires()["features"].store,
                                 self.probabilities, config().threads or None)

    @property
    def probabilities(self):
        return self.folder / f"{self.split}.parquet"


class DetectCatalog(UsesDetector, UsesGpu, ShardStage):
    """Per-frame probabilities of one catalog shard, in ``shards/<shard_key>.parquet``."""

    stage_name = "detect"

    def requires(self):
        return {"detector": TrainDetector(**self.detector_params()),
                "features": CatalogFeatures(shard=self.shard, shard_key=self.shard_key, tracks_file=self.tracks_file)}

    def build(self, folder):
        tracks = self.shard_tracks()
        names = dict(zip(tracks["track_id"].astype(str), tracks["path"].astype(str)))
        return runs.build_detect(self.requires()["detector"].checkpoint, self.requires()["features"].store,
                                 self.probabilities, config().threads or None, progress=self.progress_callback(names))

    @property
    def probabilities(self):
        return self.folder / "shards" / f"{self.shard_key}.parquet"

    @property
    def feature_store(self):
        """The features this shard's probabilities were computed from (their rejects too)."""
        return self.requires()["features"].store


class DetectorReport(UsesDetector, Stage):
    """ROC AUC / AP against -13 and -20 dB labels and V_i against P_i on held-out tracks."""

    stage_name = "detector_report"
    split = luigi.Parameter(default="test", description="stem-set split scored")

    def requires(self):
        return {"detector": TrainDetector(**self.detector_params()), "features": StemFeatures(split=self.split),
                "labels": Labels()}

    def build(self, folder):
        return runs.build_detector_report(self.requires()["detector"].checkpoint, self.requires()["features"].store,
                                          self.input_folder("labels") / "labels.parquet", folder)
