"""The separator: TrainSeparator (any registered model, with or without the remix step);
its evaluation is ``tasks.evaluate``."""

from dataclasses import fields

import luigi

from pipeline.corpora.stemset import TRAINING_SPLITS
from pipeline.separation.adversarial import LOSS_SCALE
from pipeline.separation.config import BUDGETS, SCHEMES, TrainConfig, canonical_scheme, scheme_parts
from pipeline.separation.registry import get as registered_model
from pipeline.separation.registry import make_config, model_names
from pipeline.separation.training import build_separator
from tasks.base import Stage, UsesGpu, config
from tasks.catalog import ScanCatalog
from tasks.detector import UsesDetector
from tasks.extract import Extract
from tasks.inputs import stem_set_fingerprint
from tasks.pretrain import PretrainEncoder


class TrainSeparator(UsesDetector, UsesGpu, Stage):
    """A separator (``model``, a registered name, with ``model_config`` over its defaults) trained
    on the stem set's train split with its paper's recipe; with ``remix`` it also feeds on the D_i.

    ``channels``, ``depth`` and ``decoder`` are shorthands for the Demucs models' config fields
    (``model_config`` wins); they do not enter the key of a model without those fields.
    ``train_config`` overrides any other TrainConfig field (e.g. ``{"flip_channels": true}``).

    ``scheme`` (docs/separators.md, "Training schemes"): empty, the scheme ``remix`` names (``remix`` with
    the remix step, ``supervised`` without); else one of ``SCHEMES``, which then decides (``remix``
    is ignored): a ``remix`` part requires Extract (the D_i; of the detector ``detector_seed``
    names), ``adversarial`` the catalog scan
    (unlabelled mixtures), ``contrastive`` a PretrainEncoder of the same model, config and seed.
    The key holds ``remix`` for the first two schemes and ``scheme`` for the others.

    ``budget``: what ``max_updates`` / ``max_examples`` count (``main``: the main steps, the
    scheme's extra steps on top, the paper's protocol; ``total``: every update and example).
    The key holds it only where it changes what is trained (a budget is set and the scheme has
    extra steps or examples: remix, adversarial), and only when it is ``main``.  An adversarial
    run's key names how its losses are scaled (``adversarial.LOSS_SCALE``).
    """

    stage_name = "separator"
    decodes_audio = True
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
    max_updates = luigi.IntParameter(default=0, description="budget: optimizer updates (see budget); 0: none")
    max_examples = luigi.IntParameter(default=0, description="budget: training examples (see budget); 0: none")
    budget = luigi.ChoiceParameter(default="main", choices=BUDGETS,
                                   description="main: the limits count main steps, extra steps come on top "
                                               "(the paper's protocol); total: they count every update and example")

    SHORTHANDS = ("channels", "depth", "decoder")

    @property
    def effective_scheme(self) -> str:
        """The scheme this run trains (:data:`~pipeline.separation.config.SCHEMES`)."""
        if self.scheme:
            return canonical_scheme(self.scheme)
        return "remix" if self.remix else "supervised"

    @property
    def reads_datasets(self) -> bool:
        """Whether this run feeds on the D_i (its scheme has the remix step)."""
        return "remix" in scheme_parts(self.effective_scheme)

    def requires(self):
        parts = scheme_parts(self.effective_scheme)
        needs = {"datasets": Extract(**self.detector_params())} if "remix" in parts else {}
        if "adversarial" in parts:
            needs["catalog"] = ScanCatalog()
        if "contrastive" in parts:
            model_config = make_config(self.model, {**self._shorthands(), **dict(self.model_config)}).to_dict()
            needs["encoder"] = PretrainEncoder(model=self.model, model_config=model_config, seed=self.run_seed)
        return needs

    def external_keys(self):
        return {"stem_set": stem_set_fingerprint(config().stem_root, TRAINING_SPLITS)}

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
        parts = scheme_parts(scheme)
        # Runs under "total" (how every budget counted before the mode existed) keep their keys.
        limited = bool(self.max_updates or self.max_examples)
        if not (limited and {"remix", "adversarial"} & set(parts)) or self.budget == "total":
            params.pop("budget")
        if "adversarial" in parts:
            params["adversarial_losses"] = LOSS_SCALE
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
            budget=self.budget,
            num_threads=config().threads or None,
            model={**self._shorthands(), **dict(self.model_config)},
        )
        if self.window_s:
            overrides["window_s"] = self.window_s
        for name in ("scheme", "budget"):
            if name in self.train_config:
                raise ValueError(f"give the {name} as TrainSeparator's `{name}`, not in train_config")
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
