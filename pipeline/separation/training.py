"""Training any registered separator with its paper's recipe and the unlabelled-data remix step.

The model is ``model_name`` of :mod:`pipeline.separation.registry` with config ``model``;
:meth:`TrainConfig.for_model` starts from that model's recipe (Demucs: the defaults below;
TasNet: SI-SNR, Adam 1e-3, clipping 5, plateau schedule, early stopping, no augmentation).

Per batch (Demucs paper, section 5.2): random train windows of ``window_s`` (plus
``max_shift_s`` for the time shift), augmentation (:mod:`pipeline.separation.augment`),
mixture = sum of the augmented sources, the main loss (``loss``: L1 = mean absolute error per
element, or negative SI-SNR, :mod:`pipeline.separation.losses`) against the sources
centre-trimmed to the model's output, gradient-norm clipping to ``grad_clip`` (if set), one
Adam step.  Learning rate: ``lr_schedule = "step"`` divides it by ``lr_decay`` every
``lr_decay_every`` epochs; ``"plateau"`` divides it by ``lr_decay`` once ``lr_patience``
epochs in a row have not improved the best metric (below).  With ``early_stop_patience``,
training stops once that many epochs in a row have not improved it.  Then, with probability
``remix_probability``, one remix step (:mod:`pipeline.separation.remix`, loss (3) for every
model) with its own Adam at ``lr * remix_lr_factor`` (on the same schedule).  Without any D_i
excerpt the remix step never runs: the plain supervised recipe, logged as such.

Schemes (``scheme``, :data:`SCHEMES`): ``supervised`` (the main step only, whatever D_i is
given), ``remix`` (the default: the remix step above when a D_i is given), ``adversarial``
(:mod:`pipeline.separation.adversarial`: per-source Wasserstein critics on unlabelled catalog
excerpts, :mod:`pipeline.separation.unlabelled`; the main step's loss becomes
``L_s + alpha L_u + beta L_add`` on the supervised batch and an unlabelled batch fed through
the model in one pass, then ``critic_steps`` critic updates), ``contrastive`` (the encoder
starts from a pretrained one, :mod:`pipeline.separation.contrastive`; then the recipe), and
their combinations joined by ``+`` (``remix+adversarial``, ``remix+contrastive``, ...).  The
critics and their optimizer and random streams are in ``checkpoint.pt`` (bit-identical resume
on CPU); the unlabelled and the critics' real batches are not separator examples of the
budget except the unlabelled mixtures, which the model is trained on.

Outputs in ``out_dir`` (rank 0 only, each written atomically):

- ``checkpoint.pt`` after every epoch: model, both optimizers, both LR schedulers, every
  random generator's state (of every rank) and the history; a run started again with
  ``resume=True`` continues from it and ends with bit-identical weights on CPU;
- ``best.pt``: the model of the epoch with the lowest validation loss (the main loss on fixed
  windows of the ``valid`` split; without a valid split, the lowest training loss): the
  metric of ``best.pt``, of the plateau schedule and of early stopping;
- ``history.csv`` / ``history.json`` (one row per epoch, with ``main_steps`` and the running
  totals ``updates`` / ``examples``) and ``losses.png``;
- ``summary.json``: whether the remix step was enabled, the D_i sizes, the best epoch,
  whether it stopped early, and the compute spent: ``updates`` (optimizer steps: main plus
  remix), ``examples`` (training examples fed: main plus remix batches, over all ranks),
  ``main_steps``, ``remix_steps`` and whether the budget (``max_updates``,
  ``max_examples``) was spent.  With a budget the remix steps count against it, so a remix
  run makes fewer main steps than a plain run of the same budget: equal compute.

Checkpoints hold only tensors and plain Python values, so ``torch.load(weights_only=True)``
reads them; configs are stored as dicts, with the model's name
(:func:`pipeline.separation.registry.load_model` reads ``best.pt`` and ``checkpoint.pt``).
Distributed runs: see :mod:`pipeline.separation.distributed`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from pipeline.progress import progress_bar
from pipeline.separation import adversarial, distributed, registry
from pipeline.separation.augment import Augment, mixture_of
from pipeline.separation.contract import RunConfig, center_trim, require_known_fields
from pipeline.separation.contrastive import init_encoder
from pipeline.separation.data import StemWindows
from pipeline.separation.losses import LOSSES
from pipeline.separation.remix import RemixSampler, remix_step
from pipeline.separation.unlabelled import CatalogExcerpts
from pipeline.sources import SOURCES
from pipeline.storage.outputs import StageResult, atomic_path, write_bytes_atomic, write_json_atomic, write_png_atomic

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = registry.CHECKPOINT_FORMAT
LR_SCHEDULES = ("step", "plateau")
SCHEME_PARTS = ("remix", "adversarial", "contrastive")  # the canonical order of a combined scheme
SCHEMES = (
    "supervised",
    "remix",
    "adversarial",
    "contrastive",
    "remix+adversarial",
    "remix+contrastive",
    "adversarial+contrastive",
    "remix+adversarial+contrastive",
)


def scheme_parts(scheme: str) -> tuple[str, ...]:
    """The parts of ``scheme`` in canonical order (``()`` for ``supervised``); ``ValueError`` otherwise."""
    parts = [] if scheme == "supervised" else scheme.split("+")
    if (
        any(p not in SCHEME_PARTS for p in parts)
        or len(set(parts)) != len(parts)
        or (scheme != "supervised" and not parts)
    ):
        raise ValueError(f"scheme must be one of {SCHEMES} (parts in any order), got {scheme!r}")
    return tuple(p for p in SCHEME_PARTS if p in parts)


def canonical_scheme(scheme: str) -> str:
    """``scheme`` spelt as in :data:`SCHEMES` (``adversarial+remix`` -> ``remix+adversarial``)."""
    return "+".join(scheme_parts(scheme)) or "supervised"


# Fields that do not change the numbers a run computes (may differ when resuming).
# The budget (max_updates, max_examples) says where to stop, like epochs: raising it continues a run.
_RUNTIME_FIELDS = ("epochs", "max_updates", "max_examples", "num_threads", "lazy", "memory_limit_bytes")


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Training parameters; defaults are the Demucs paper's where it gives them.

    ``model_name`` names a registered model, ``model`` is its config (a dict of fields is
    accepted; ``None``: the model's defaults).  Use :meth:`for_model` to start from another
    model's recipe.  ``batch_size`` is global (split evenly over the ranks).
    ``batches_per_epoch=None`` uses the paper's epoch: every ``window_s`` extract at a stride
    of ``epoch_hop_s`` (``None``: ``window_s``, non-overlapping extracts) once, divided by the
    batch size.  ``max_shift_s`` (time-shift range) is not given by the paper.

    Budget: ``max_updates`` (optimizer steps, main and remix together) and ``max_examples``
    (training examples fed, main and remix batches together, over all ranks); ``None``: no
    limit.  A step runs only while it keeps both counts within their budget, so a run ends
    at the budget exactly (or at ``epochs``, whichever comes first).
    """

    runtime_fields: ClassVar[tuple[str, ...]] = _RUNTIME_FIELDS

    epochs: int = 400
    max_updates: int | None = None
    max_examples: int | None = None
    batches_per_epoch: int | None = None
    batch_size: int = 128
    window_s: float = 5.0
    epoch_hop_s: float | None = 0.5
    max_shift_s: float = 0.2
    flip_sign: bool = True
    flip_channels: bool = True
    shuffle_sources: bool = True
    loss: str = "l1"
    lr: float = 5e-4
    grad_clip: float | None = None
    lr_schedule: str = "step"
    lr_decay: float = 5.0
    lr_decay_every: int = 160  # epochs, "step" schedule
    lr_patience: int = 3  # stale epochs before a decay, "plateau" schedule
    early_stop_patience: int | None = None
    remix_probability: float = 0.25
    remix_lambda: float = 1e-6
    remix_lr_factor: float = 0.1
    remix_batch_size: int | None = None  # None: batch_size
    scheme: str = "remix"  # SCHEMES; "remix" runs the remix step only when a D_i is given
    critic_sources: tuple[str, ...] = ("vocals",)  # sources with a critic (adversarial)
    adversarial_alpha: float | None = None  # None: adversarial.default_weight(critic_sources)
    adversarial_beta: float | None = None  # None: alpha
    critic_steps: int = adversarial.N_DISC
    critic_lr: float = adversarial.CRITIC_LR
    critic_gp_weight: float = adversarial.GP_WEIGHT
    critic_width: int = adversarial.CRITIC_WIDTH
    critic_n_fft: int = 1024  # samples at the model's rate
    critic_hop: int = 512
    unlabelled_scale: tuple[float, float] = adversarial.UNLABELLED_SCALE
    unlabelled_batch_size: int | None = None  # None: batch_size
    valid_max_windows: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scheme", canonical_scheme(self.scheme))
        object.__setattr__(self, "critic_sources", tuple(self.critic_sources))
        object.__setattr__(self, "unlabelled_scale", tuple(float(v) for v in self.unlabelled_scale))
        if "adversarial" in self.parts:
            self.adversarial_settings()  # validates the critics' fields
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 (or None), got {self.grad_clip}")
        for name in ("max_updates", "max_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {getattr(self, name)}")
        if self.lr_patience < 1 or (self.early_stop_patience is not None and self.early_stop_patience < 1):
            raise ValueError("lr_patience and early_stop_patience must be >= 1")

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts of :attr:`scheme` (:func:`scheme_parts`)."""
        return scheme_parts(self.scheme)

    def adversarial_settings(self) -> adversarial.AdversarialSettings:
        """The critics' settings, with alpha and beta resolved (section 4.3.4 defaults)."""
        alpha = (
            adversarial.default_weight(self.critic_sources)
            if self.adversarial_alpha is None
            else self.adversarial_alpha
        )
        beta = alpha if self.adversarial_beta is None else self.adversarial_beta
        low, high = self.unlabelled_scale
        return adversarial.AdversarialSettings(
            self.critic_sources,
            alpha,
            beta,
            self.critic_steps,
            self.critic_lr,
            self.critic_gp_weight,
            self.critic_width,
            self.critic_n_fft,
            self.critic_hop,
            low,
            high,
        )

    @classmethod
    def for_model(cls, model_name: str, **overrides: Any) -> "TrainConfig":
        """The recipe of ``model_name`` (its registry entry), then ``overrides`` (TrainConfig fields)."""
        values = {**registry.get(model_name).recipe, **overrides, "model_name": model_name}
        require_known_fields(cls, values)
        return cls(**values)



def _seed_int(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


class SeparatorTrainer:
    """One training run (one process of it, when distributed); :meth:`run` trains.

    ``stem_root``: the stem set (train and, if present, valid split).  ``dataset_run_dir``: an
    extraction run holding the D_i index, or ``None`` for plain supervised training.
    ``device=None``: ``cuda`` when available, else ``cpu``.  :attr:`model` is the bare model.
    ``catalog_tracks``: a catalog scan's ``tracks.parquet`` (the unlabelled mixtures of the
    adversarial scheme); ``encoder``: an ``encoder.pt`` of :mod:`pipeline.separation.contrastive`
    (the contrastive scheme's initial encoder).  Each is required by its scheme, ignored otherwise.
    """

    def __init__(
        self,
        config: TrainConfig,
        stem_root: str | os.PathLike,
        dataset_run_dir: str | os.PathLike | None,
        out_dir: str | os.PathLike,
        device: str | torch.device | None = None,
        progress: bool = True,
        *,
        catalog_tracks: str | os.PathLike | None = None,
        encoder: str | os.PathLike | None = None,
    ) -> None:
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.ctx = ctx = distributed.setup(device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} ranks")
        self.batch = config.batch_size // ctx.world_size
        self.remix_batch = (config.remix_batch_size or config.batch_size) // ctx.world_size
        if self.batch < 1 or self.remix_batch < 1:
            raise ValueError("each rank needs at least one example per batch")

        mcfg = config.model
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = registry.build_model(config.model_name, mcfg).to(ctx.device)
        parts = config.parts
        self.encoder_init = None
        if "contrastive" in parts:
            if encoder is None:
                raise ValueError("the contrastive scheme needs a pretrained encoder (encoder.pt)")
            init_encoder(self.model, encoder)  # before DDP, which broadcasts rank 0's weights
            self.encoder_init = str(encoder)
        self.net = distributed.wrap(self.model, ctx)
        self.loss = LOSSES[config.loss]
        rate = mcfg.sample_rate
        self.window = self.model.valid_length(round(config.window_s * rate))  # input samples
        self.output_window = self.model.output_length(self.window)  # samples the loss sees
        self.shift = round(config.max_shift_s * rate)
        data = dict(
            sample_rate=rate,
            audio_channels=mcfg.audio_channels,
            lazy=config.lazy,
            memory_limit_bytes=config.memory_limit_bytes,
        )
        self.train_data = StemWindows(stem_root, "train", self.window + self.shift, **data)
        try:
            self.valid_data: StemWindows | None = StemWindows(stem_root, "valid", self.window, **data)
        except ValueError:
            self.valid_data = None
            log.warning("stem set %s has no valid split: best.pt follows the training loss", stem_root)
        self.remix = RemixSampler(dataset_run_dir if "remix" in parts else None, rate, mcfg.audio_channels, self.window)
        if self.remix_enabled:
            log.info("remix step on: D_i sizes %s", self.remix.counts())
        elif "remix" not in parts:
            log.info("scheme %s: no remix step", config.scheme)
        elif not self.remix.available:
            log.warning("no D_i excerpt found (%s): plain supervised training without the remix step", dataset_run_dir)
        else:
            log.warning("remix_probability is 0: plain supervised training without the remix step")
        hop_s = config.window_s if config.epoch_hop_s is None else config.epoch_hop_s
        self.batches_per_epoch = config.batches_per_epoch or max(
            1, math.ceil(self.train_data.n_positions(max(1, round(hop_s * rate))) / config.batch_size)
        )

        params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.remix_optimizer = torch.optim.Adam(params, lr=config.lr * config.remix_lr_factor)
        self.scheduler = self._scheduler(self.optimizer)
        self.remix_scheduler = self._scheduler(self.remix_optimizer)

        # Per-rank streams (different windows on every rank) and one stream shared by all ranks
        # for the remix decision and source, so that every rank runs the same steps.
        self.data_rng = np.random.default_rng([config.seed, 0, ctx.rank])
        self.decision_rng = np.random.default_rng([config.seed, 1])
        self.aug_generator = torch.Generator().manual_seed(_seed_int(config.seed, 2, ctx.rank))
        self.augment = Augment(
            self.aug_generator, self.shift, config.flip_sign, config.flip_channels, config.shuffle_sources
        )
        self.adversarial: adversarial.AdversarialTraining | None = None
        self.unlabelled: CatalogExcerpts | None = None
        self._epoch_adversarial: list[dict[str, float]] = []
        self.unlabelled_batch = (config.unlabelled_batch_size or config.batch_size) // ctx.world_size
        if "adversarial" in parts:
            if catalog_tracks is None:
                raise ValueError("the adversarial scheme needs unlabelled mixtures: a catalog scan's tracks.parquet")
            if self.unlabelled_batch < 1:
                raise ValueError("each rank needs at least one unlabelled mixture per batch")
            self.unlabelled = CatalogExcerpts(catalog_tracks, rate, mcfg.audio_channels, self.window)
            # Per-rank streams of the scheme: unlabelled crops and scales, real excerpts, interpolates.
            self.adversarial_rng = np.random.default_rng([config.seed, 3, ctx.rank])
            self.adversarial_generator = torch.Generator().manual_seed(_seed_int(config.seed, 4, ctx.rank))
            self.adversarial = adversarial.AdversarialTraining(
                config.adversarial_settings(),
                self.output_window,
                ctx.device,
                self.adversarial_generator,
                wrap=lambda module: distributed.wrap(module, ctx),
            )
            log.info(
                "adversarial scheme: critics for %s on %s catalog tracks",
                list(config.critic_sources),
                len(self.unlabelled),
            )
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.best = math.inf
        self.updates = self.examples = 0  # counted over all ranks: the budget's units

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        config, gamma = self.config, 1.0 / self.config.lr_decay
        if config.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, config.lr_decay_every, gamma)
        # torch's patience counts the stale epochs it tolerates: decay on the lr_patience-th one.
        # threshold 0: any decrease of the metric is an improvement, as for best.pt.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=gamma, patience=config.lr_patience - 1, threshold=0.0
        )

    def _step_schedulers(self, metric: float) -> None:
        with warnings.catch_warnings():  # the remix optimizer may not have stepped this epoch
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for scheduler in (self.scheduler, self.remix_scheduler):
                if self.config.lr_schedule == "plateau":
                    scheduler.step(metric)
                else:
                    scheduler.step()

    @property
    def stale_epochs(self) -> int:
        """Epochs in a row, at the end of the history, that did not improve the best metric."""
        stale = 0
        for row in reversed(self.history):
            if row["is_best"]:
                break
            stale += 1
        return stale

    @property
    def stopped_early(self) -> bool:
        patience = self.config.early_stop_patience
        return patience is not None and self.stale_epochs >= patience

    @property
    def remix_enabled(self) -> bool:
        return bool(self.remix.available) and self.config.remix_probability > 0

    # ----------------------------------------------------------------- state
    def _rng_state(self) -> dict[str, Any]:
        state = {
            "data": self.data_rng.bit_generator.state,
            "decision": self.decision_rng.bit_generator.state,
            "augment": self.aug_generator.get_state(),
            "torch": torch.get_rng_state(),
        }
        if self.adversarial is not None:
            state["adversarial"] = self.adversarial_rng.bit_generator.state
            state["adversarial_generator"] = self.adversarial_generator.get_state()
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        self.data_rng.bit_generator.state = state["data"]
        self.decision_rng.bit_generator.state = state["decision"]
        self.aug_generator.set_state(state["augment"])
        torch.set_rng_state(state["torch"])
        if self.adversarial is not None:
            self.adversarial_rng.bit_generator.state = state["adversarial"]
            self.adversarial_generator.set_state(state["adversarial_generator"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; random states of all ranks (collective when distributed)."""
        return {
            **registry.checkpoint_fields(self.model),
            "epoch": self.epoch,
            "train_config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "remix_optimizer": self.remix_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "remix_scheduler": self.remix_scheduler.state_dict(),
            "rng": distributed.all_gather_object(self._rng_state(), self.ctx),
            "world_size": self.ctx.world_size,
            "best": self.best,
            "history": self.history,
            **({"adversarial": self.adversarial.state_dict()} if self.adversarial is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = TrainConfig.from_dict(state["train_config"])
        if saved.significant() != self.config.significant():
            changed = sorted(k for k, v in self.config.significant().items() if saved.significant().get(k) != v)
            raise ValueError(
                f"checkpoint was made with a different configuration ({', '.join(changed)}); "
                "use another out_dir or resume=False"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.remix_optimizer.load_state_dict(state["remix_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.remix_scheduler.load_state_dict(state["remix_scheduler"])
        if self.adversarial is not None:
            self.adversarial.load_state_dict(state["adversarial"])
        self.epoch, self.best, self.history = int(state["epoch"]), float(state["best"]), list(state["history"])
        last = self.history[-1] if self.history else {}
        self.updates, self.examples = int(last.get("updates", 0)), int(last.get("examples", 0))
        if int(state["world_size"]) == self.ctx.world_size:
            self._set_rng_state(state["rng"][self.ctx.rank])
        else:
            log.warning(
                "checkpoint made with %s ranks, resuming with %s: random streams re-seeded at epoch %s",
                state["world_size"],
                self.ctx.world_size,
                self.epoch,
            )
            self.data_rng = np.random.default_rng([self.config.seed, 0, self.ctx.rank, self.epoch])
            self.aug_generator.manual_seed(_seed_int(self.config.seed, 2, self.ctx.rank, self.epoch))
            self.decision_rng.bit_generator.state = state["rng"][0]["decision"]
            if self.adversarial is not None:
                self.adversarial_rng = np.random.default_rng([self.config.seed, 3, self.ctx.rank, self.epoch])
                self.adversarial_generator.manual_seed(_seed_int(self.config.seed, 4, self.ctx.rank, self.epoch))

    # ----------------------------------------------------------------- steps
    def _main_step(self, sources: torch.Tensor) -> float:
        """One main step; returns the main loss ``L_s`` (adversarial: plus ``alpha L_u + beta L_add``
        in the gradient, then the critic steps; their values go to the epoch's row)."""
        sources = self.augment(sources)
        mix = mixture_of(sources)
        if self.adversarial is None:
            estimates = self.net(mix)
            loss = main = self.loss.fn(estimates, center_trim(sources, estimates.shape[-1]))
        else:
            assert self.unlabelled is not None
            crops = self.unlabelled.sample(self.unlabelled_batch, self.adversarial_rng)
            unlabelled = torch.from_numpy(self.adversarial.scale(crops, self.adversarial_rng)).to(mix.device)
            both = self.net(torch.cat([mix, unlabelled]))  # one pass: one DDP forward per backward
            estimates, fakes = both[: len(mix)], both[len(mix) :]
            main = self.loss.fn(estimates, center_trim(sources, estimates.shape[-1]))
            l_u, l_add = self.adversarial.separator_terms(fakes, center_trim(unlabelled, fakes.shape[-1]))
            settings = self.adversarial.settings
            loss = main + settings.alpha * l_u + settings.beta * l_add
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.adversarial is not None:
            real = self.train_data.sample(self.adversarial_rng, self.unlabelled_batch, frames=self.window)
            real_t = center_trim(torch.from_numpy(real).to(mix.device), fakes.shape[-1])
            stats = self.adversarial.train_critics(real_t, fakes.detach())
            self._epoch_adversarial.append(
                {"adversarial_loss": float(l_u.detach()), "additive_loss": float(l_add.detach()), **stats}
            )
        return float(main.detach())

    @property
    def main_examples(self) -> int:
        """Examples one main step feeds the model, over all ranks (adversarial: plus the unlabelled batch)."""
        extra = self.unlabelled_batch * self.ctx.world_size if self.adversarial is not None else 0
        return self.config.batch_size + extra

    def _adversarial_row(self) -> dict[str, float]:
        """The epoch's mean adversarial terms and critic statistics over steps and ranks."""
        if self.adversarial is None:
            return {}
        names = ["adversarial_loss", "additive_loss", "critic_gap", "critic_penalty"] + [
            f"critic_gap_{s}" for s in self.config.critic_sources
        ]
        rows, self._epoch_adversarial = self._epoch_adversarial, []
        totals = distributed.all_reduce_sum([sum(r[n] for r in rows) for n in names] + [len(rows)], self.ctx)
        return {n: totals[k] / totals[-1] if totals[-1] else math.nan for k, n in enumerate(names)}

    def _remix_decision(self) -> int | None:
        """Same answer on every rank: the source index of a remix step, or None."""
        if not self.remix_enabled or self.decision_rng.random() >= self.config.remix_probability:
            return None
        return self.remix.pick_source(self.decision_rng)

    def _remix_step(self, source_index: int) -> float:
        device = self.ctx.device
        stems = self.train_data.sample(self.data_rng, self.remix_batch, frames=self.window)[:, source_index]
        excerpt = self.remix.sample(source_index, self.remix_batch, self.data_rng)
        return remix_step(
            self.net,
            self.remix_optimizer,
            source_index,
            torch.from_numpy(stems).to(device),
            torch.from_numpy(excerpt).to(device),
            self.config.remix_lambda,
            self.config.grad_clip,
        )

    @torch.no_grad()
    def validate(self) -> float:
        """The main loss on the fixed valid windows, averaged like one batch (NaN without a valid split)."""
        if self.valid_data is None:
            return math.nan
        self.model.eval()
        spans = self.valid_data.fixed_windows(self.config.valid_max_windows)[self.ctx.rank :: self.ctx.world_size]
        total = count = 0.0
        for k in range(0, len(spans), self.batch):
            sources = torch.from_numpy(self.valid_data.read_windows(spans[k : k + self.batch])).to(self.ctx.device)
            estimates = self.model(mixture_of(sources))
            batch_total, batch_count = self.loss.totals(estimates, center_trim(sources, estimates.shape[-1]))
            total += batch_total
            count += batch_count
        self.model.train()
        total, count = distributed.all_reduce_sum([total, count], self.ctx)
        return total / count if count else math.nan

    def _within_budget(self, examples: int) -> bool:
        """Whether one more update of ``examples`` (over all ranks) stays within the budget."""
        config = self.config
        return (config.max_updates is None or self.updates + 1 <= config.max_updates) and (
            config.max_examples is None or self.examples + examples <= config.max_examples
        )

    def _count(self, examples: int) -> None:
        self.updates += 1
        self.examples += examples

    @property
    def budget_spent(self) -> bool:
        """True once no further main step fits in the budget."""
        return not self._within_budget(self.main_examples)

    def _train_epoch(self) -> dict[str, Any]:
        started = time.time()
        lr = self.optimizer.param_groups[0]["lr"]
        main_sum = remix_sum = 0.0
        main_steps = 0
        remix_counts = [0] * len(SOURCES)
        bar = progress_bar(
            range(self.batches_per_epoch),
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not (self.progress and self.ctx.is_main),
            leave=False,
        )
        self.model.train()
        for _ in bar:
            if not self._within_budget(self.main_examples):
                break
            sources = torch.from_numpy(self.train_data.sample(self.data_rng, self.batch)).to(self.ctx.device)
            main_sum += self._main_step(sources)
            main_steps += 1
            self._count(self.main_examples)
            source = self._remix_decision()
            if source is not None and self._within_budget(self.remix_batch * self.ctx.world_size):
                remix_sum += self._remix_step(source)
                remix_counts[source] += 1
                self._count(self.remix_batch * self.ctx.world_size)
            bar.set_postfix(loss=f"{main_sum / main_steps:.4f}", remix=sum(remix_counts))
        bar.close()
        main_sum, remix_sum = distributed.all_reduce_sum([main_sum, remix_sum], self.ctx)
        world, steps = self.ctx.world_size, sum(remix_counts)
        row = {
            "epoch": self.epoch + 1,
            "lr": lr,
            "train_loss": main_sum / (world * main_steps) if main_steps else math.nan,
            "remix_loss": remix_sum / (world * steps) if steps else math.nan,
            "remix_steps": steps,
            "main_steps": main_steps,
            "updates": self.updates,
            "examples": self.examples,
        }
        row.update({f"remix_steps_{name}": remix_counts[i] for i, name in enumerate(SOURCES)})
        row.update(self._adversarial_row())
        row["valid_loss"] = self.validate()
        row["seconds"] = round(time.time() - started, 3)
        return row

    # ----------------------------------------------------------------- outputs
    def _save_checkpoint(self) -> None:
        state = self.state_dict()  # collective: every rank contributes its random states
        if self.ctx.is_main:
            with atomic_path(self.out_dir / CHECKPOINT) as tmp:
                torch.save(state, tmp)

    def _save_best(self) -> None:
        if self.ctx.is_main:
            with atomic_path(self.out_dir / BEST) as tmp:
                torch.save(
                    {
                        **registry.checkpoint_fields(self.model),
                        "epoch": self.epoch,
                        "best": self.best,
                        "train_config": self.config.to_dict(),
                    },
                    tmp,
                )

    def _write_logs(self) -> None:
        if not self.ctx.is_main:
            return
        frame = pd.DataFrame(self.history)
        write_bytes_atomic(self.out_dir / "history.csv", frame.to_csv(index=False).encode())
        write_json_atomic(self.out_dir / "history.json", [_json_row(r) for r in self.history])
        plot_history(frame, self.out_dir / "losses.png", self.loss.label)

    def _write_summary(self) -> None:
        if not self.ctx.is_main:
            return
        best = min(self.history, key=lambda r: r["best_metric"]) if self.history else {}
        write_json_atomic(
            self.out_dir / "summary.json",
            {
                "epochs": self.epoch,
                "remix_enabled": self.remix_enabled,
                "d_i_excerpts": self.remix.counts(),
                "best_epoch": best.get("epoch"),
                "best_metric": _json_value(self.best),
                "best_on": "valid_loss" if self.valid_data is not None else "train_loss",
                "model_name": self.config.model_name,
                "loss": self.config.loss,
                "stopped_early": self.stopped_early,
                "output_window_samples": self.output_window,
                "world_size": self.ctx.world_size,
                "device": str(self.ctx.device),
                "window_samples": self.window,
                "max_shift_samples": self.shift,
                "batches_per_epoch": self.batches_per_epoch,
                "updates": self.updates,
                "examples": self.examples,
                "main_steps": int(sum(r.get("main_steps", 0) for r in self.history)),
                "remix_steps": int(sum(r.get("remix_steps", 0) for r in self.history)),
                "max_updates": self.config.max_updates,
                "max_examples": self.config.max_examples,
                "budget_spent": self.budget_spent,
                "train_tracks": len(self.train_data),
                "valid_tracks": len(self.valid_data) if self.valid_data is not None else 0,
                "scheme": self.config.scheme,
                "encoder_init": self.encoder_init,
                "critic_sources": list(self.config.critic_sources) if self.adversarial is not None else [],
                "unlabelled_tracks": len(self.unlabelled) if self.unlabelled is not None else 0,
                "unlabelled_rejected": dict(self.unlabelled.rejected) if self.unlabelled is not None else {},
                "config": self.config.to_dict(),
            },
        )

    # ----------------------------------------------------------------- run
    def run(self, resume: bool = True) -> list[dict[str, Any]]:
        """Train up to ``config.epochs`` epochs (from ``checkpoint.pt`` when ``resume``); the history."""
        path = self.out_dir / CHECKPOINT
        if resume and path.exists():
            # On the CPU first: random states must stay CPU tensors; load_state_dict moves the rest.
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log.info("resumed from %s after epoch %s", path, self.epoch)
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        while self.epoch < self.config.epochs and not self.stopped_early and not self.budget_spent:
            row = self._train_epoch()
            self.epoch += 1
            metric = row["valid_loss"] if self.valid_data is not None else row["train_loss"]
            self._step_schedulers(metric)
            row["best_metric"] = metric
            row["is_best"] = bool(metric < self.best)
            self.history.append(row)
            if row["is_best"]:
                self.best = metric
                self._save_best()
            self._save_checkpoint()
            self._write_logs()
            log.info(
                "epoch %s: train %.5f remix %.5f (%s steps) valid %.5f",
                row["epoch"],
                row["train_loss"],
                row["remix_loss"],
                row["remix_steps"],
                row["valid_loss"],
            )
        if self.stopped_early:
            log.info("early stop after epoch %s: %s epochs without improvement", self.epoch, self.stale_epochs)
        self._write_summary()
        distributed.barrier(self.ctx)
        return self.history


def train_separator(
    config: TrainConfig,
    stem_root: str | os.PathLike,
    dataset_run_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    resume: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    catalog_tracks: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Train a separator (see the module docstring); returns the per-epoch history.  ``catalog_tracks``
    and ``encoder``: the adversarial and contrastive schemes' inputs (:class:`SeparatorTrainer`)."""
    return SeparatorTrainer(
        config, stem_root, dataset_run_dir, out_dir, device, progress, catalog_tracks=catalog_tracks, encoder=encoder
    ).run(resume)


def build_separator(
    config: TrainConfig,
    stem_root: str | os.PathLike,
    dataset_run_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    catalog_tracks: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
) -> StageResult:
    """The separator stage: :func:`train_separator`, resumed from ``out_dir``'s checkpoint if
    there is one; counts ``model``, ``scheme``, ``epochs``, ``seed``, the compute spent
    (``updates``, ``examples``, ``remix_steps``) and the last epoch's losses."""
    history = train_separator(config, stem_root, dataset_run_dir, out_dir, resume=True,
                              catalog_tracks=catalog_tracks, encoder=encoder)
    last = history[-1] if history else {}
    return StageResult({
        "model": config.model_name,
        "scheme": config.scheme,
        "epochs": len(history),
        "seed": config.seed,
        "updates": last.get("updates", 0),
        "examples": last.get("examples", 0),
        "remix_steps": int(sum(r.get("remix_steps", 0) for r in history)),
        "final_train_loss": last.get("train_loss"),
        "final_valid_loss": last.get("valid_loss"),
    })


def plot_history(history: pd.DataFrame, path: str | os.PathLike, loss_label: str = LOSSES["l1"].label) -> None:
    """Plot train (main), remix and valid losses per epoch into a PNG at ``path`` (log scale when
    every value is positive; the remix loss is L1 whatever ``loss_label`` says of the others)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for column, label in (("train_loss", "main step (train)"), ("remix_loss", "remix step"), ("valid_loss", "valid")):
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(loss_label)
    values = history[[c for c in ("train_loss", "remix_loss", "valid_loss") if c in history]].to_numpy(float)
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_png_atomic(fig, path)


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _json_value(v) for k, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line for ``torchrun`` (one process per GPU): train one separator into ``--out``.

    ``torchrun --nproc_per_node 4 -m pipeline.separation.training --stem-root S --datasets D --out O``
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m pipeline.separation.training", description=main.__doc__)
    parser.add_argument("--stem-root", required=True, help="stem set (MUSDB18-HQ layout or .stem.mp4 folder)")
    parser.add_argument("--datasets", default=None, help="an Extract run folder (D_i); omit for no remix")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, logs); resumed if it holds one")
    parser.add_argument("--model", default="demucs", choices=registry.model_names(), help="registered model")
    parser.add_argument(
        "--config",
        default="{}",
        help="JSON of TrainConfig fields over the model's recipe, e.g. '{\"epochs\": 400}'; "
        '"model" takes the model\'s config fields',
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--catalog-tracks", default=None, help="a catalog scan's tracks.parquet (adversarial scheme)")
    parser.add_argument("--encoder", default=None, help="a pretrained encoder.pt (contrastive scheme)")
    args = parser.parse_args(argv)
    config = TrainConfig.for_model(args.model, **json.loads(args.config))
    try:
        train_separator(
            config,
            args.stem_root,
            args.datasets,
            args.out,
            resume=True,
            device=args.device,
            catalog_tracks=args.catalog_tracks,
            encoder=args.encoder,
        )
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
