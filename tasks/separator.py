"""The separator: TrainSeparator (any registered model, with or without the remix step) and
Evaluate (SDR and SI-SNR tables of any set of runs)."""

from dataclasses import fields

import luigi

from pipeline.separation.comparison import INTERVAL_NAME
from pipeline.separation.evaluation import ORACLE_HOP_S, ORACLE_WINDOW_S, build_evaluate
from pipeline.separation.registry import get as registered_model
from pipeline.separation.registry import make_config, model_names
from pipeline.separation.training import SCHEMES, TrainConfig, build_separator, canonical_scheme, scheme_parts
from pipeline.storage.outputs import StageResult
from tasks.base import Stage, config
from tasks.catalog import ScanCatalog
from tasks.extract import Extract
from tasks.inputs import stem_set_fingerprint
from tasks.pretrain import PretrainEncoder

SPLITS = ("train", "valid")


class TrainSeparator(Stage):
    """A separator (``model``, a registered name, with ``model_config`` over its defaults) trained
    on the stem set's train split with its paper's recipe; with ``remix`` it also feeds on the D_i.

    ``channels``, ``depth`` and ``decoder`` are shorthands for the Demucs models' config fields
    (``model_config`` wins); they do not enter the key of a model without those fields.
    ``train_config`` overrides any other TrainConfig field (e.g. ``{"flip_channels": true}``).

    ``scheme`` (docs/separators.md, "Training schemes"): empty, the scheme ``remix`` names (``remix`` with
    the remix step, ``supervised`` without); else one of ``SCHEMES``, which then decides (``remix``
    is ignored): a ``remix`` part requires Extract (the D_i), ``adversarial`` the catalog scan
    (unlabelled mixtures), ``contrastive`` a PretrainEncoder of the same model, config and seed.
    The key holds ``remix`` for the first two schemes and ``scheme`` for the others.
    """

    stage_name = "separator"
    decodes_audio = True
    resources = {"gpu": 1}
    remix = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                description="with the remix step on the D_i (when `scheme` is empty)")
    scheme = luigi.Parameter(default="", description=f"'': remix or supervised, as `remix` says; else one of {SCHEMES}")
    epochs = luigi.IntParameter(default=400, description="most epochs (a budget may end sooner)")
    batches_per_epoch = luigi.IntParameter(
        default=0, description="0: the paper's epoch (every 5 s window, 0.5 s stride)"
    )
    batch_size = luigi.IntParameter(default=128, description="windows per step, over all ranks")
    window_s = luigi.FloatParameter(default=0.0, description="0: the model's recipe (Demucs 5 s, TasNet 20 s)")
    lr_decay_every = luigi.IntParameter(default=160, description="epochs, step schedule (Demucs)")
    model = luigi.ChoiceParameter(default="demucs", choices=model_names(), description="registered separator")
    model_config = luigi.DictParameter(default={}, description="the model's config fields over its defaults")
    train_config = luigi.DictParameter(default={}, description="further TrainConfig fields over the recipe")
    channels = luigi.IntParameter(default=48, description="C_1 (Demucs models); the paper's 48, the 2019 code's 100")
    depth = luigi.IntParameter(default=6, description="L (Demucs models)")
    decoder = luigi.ChoiceParameter(default="paper", choices=["paper", "additive"], description="demucs only")
    seed = luigi.OptionalIntParameter(default=None, description="None: [silentmine] seed (the key holds the number)")
    max_updates = luigi.IntParameter(default=0, description="budget: optimizer updates, main + remix; 0: none")
    max_examples = luigi.IntParameter(default=0, description="budget: training examples, main + remix; 0: none")

    SHORTHANDS = ("channels", "depth", "decoder")

    @property
    def effective_scheme(self) -> str:
        """The scheme this run trains (:data:`~pipeline.separation.training.SCHEMES`)."""
        if self.scheme:
            return canonical_scheme(self.scheme)
        return "remix" if self.remix else "supervised"

    @property
    def reads_datasets(self) -> bool:
        """Whether this run feeds on the D_i (its scheme has the remix step)."""
        return "remix" in scheme_parts(self.effective_scheme)

    def requires(self):
        parts = scheme_parts(self.effective_scheme)
        needs = {"datasets": Extract()} if "remix" in parts else {}
        if "adversarial" in parts:
            needs["catalog"] = ScanCatalog()
        if "contrastive" in parts:
            model_config = make_config(self.model, {**self._shorthands(), **dict(self.model_config)}).to_dict()
            needs["encoder"] = PretrainEncoder(model=self.model, model_config=model_config, seed=self.run_seed)
        return needs

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, SPLITS)}

    def _shorthands(self):
        """The shorthand parameters that are fields of this model's config."""
        names = {f.name for f in fields(registered_model(self.model).config_class)}
        return {k: getattr(self, k) for k in self.SHORTHANDS if k in names}

    def key_params(self):
        params = {**super().key_params(), "seed": self.run_seed}
        for name in set(self.SHORTHANDS) - set(self._shorthands()):
            params.pop(name)
        scheme = self.effective_scheme  # one key per run, however it was asked for
        if scheme in ("remix", "supervised"):
            params.pop("scheme")
            params["remix"] = scheme == "remix"
        else:
            params.pop("remix")
            params["scheme"] = scheme
        return params

    @property
    def run_seed(self) -> int:
        """The seed of this run: ``seed``, or ``[silentmine] seed`` when it is None."""
        return config().seed if self.seed is None else self.seed

    def train_settings(self) -> TrainConfig:
        """The TrainConfig of this run: the model's recipe, then this task's parameters."""
        overrides = dict(
            epochs=self.epochs,
            batches_per_epoch=self.batches_per_epoch or None,
            batch_size=self.batch_size,
            lr_decay_every=self.lr_decay_every,
            seed=self.run_seed,
            max_updates=self.max_updates or None,
            max_examples=self.max_examples or None,
            num_threads=config().threads or None,
            model={**self._shorthands(), **dict(self.model_config)},
        )
        if self.window_s:
            overrides["window_s"] = self.window_s
        if "scheme" in self.train_config:
            raise ValueError("give the scheme as TrainSeparator's `scheme`, not in train_config")
        return TrainConfig.for_model(
            self.model, **{**overrides, **dict(self.train_config), "scheme": self.effective_scheme}
        )

    def labelled_root(self) -> str:
        """The stem set whose train and valid splits this run trains on: ``[silentmine] stem_root``
        (a ladder rung trains on a larger one: ``tasks.ladder.TrainWithCatalogStems``)."""
        return config().stem_root

    def build(self, folder):
        needs = self.requires()
        return build_separator(
            self.train_settings(),
            self.labelled_root(),
            needs["datasets"].folder if "datasets" in needs else None,
            folder,
            catalog_tracks=needs["catalog"].tracks_file if "catalog" in needs else None,
            encoder=needs["encoder"].encoder_file if "encoder" in needs else None,
        )

    @property
    def best(self):
        return self.folder / "best.pt"


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
        from tasks.ladder import ladder_task  # tasks.ladder imports this module

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
        from tasks.ladder import missing_ground_truth

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
