"""What each training scheme adds to the supervised recipe, as parts behind one interface.

A run's scheme (:mod:`pipeline.separation.config`: ``supervised``, ``remix``, ``adversarial``,
``contrastive`` or a combination) is a list of parts (:func:`build`), each a :class:`Scheme`;
the trainer (:mod:`pipeline.separation.trainer`) calls every part's hooks at fixed points of
a run, and a part that does not need a hook leaves it alone (the defaults add nothing):

==========================  ================================================================
hook                        when, and who uses it
==========================  ================================================================
``prepare_model(model)``    before DDP wraps the model: contrastive loads the pretrained encoder
``attach(trainer)``         once the trainer's model, optimizer, data and random streams
                            exist: remix makes its Adam and schedule, adversarial its critics
``extra_mixtures()``        mixtures fed through the model together with the main batch:
                            adversarial's unlabelled batch
``extra_gradient(...)``     the gradient at the estimates of those mixtures: adversarial's
                            ``alpha L_u + beta L_add``
``after_main_step(...)``    after the main step's update: adversarial's critic steps, remix's
                            remix step (with probability ``remix_probability``)
``end_epoch(metric)``       after each epoch: remix steps its learning-rate schedule
``epoch_row()``             the epoch's columns of ``history.csv``
``summary()``               fields of ``summary.json``, including the part's extra steps and
                            examples (:meth:`Scheme.counts`)
``state_dict()`` ...        what a resume needs (optimizers, critics, random streams, counts)
==========================  ================================================================

What a part may use of the trainer is :class:`Trainer` (the model, the data, the random
windows' stream, the schedule, the budget).

Accounting: every part counts what it adds and says so (:meth:`Scheme.counts`, in
``summary.json`` and in Evaluate's table): remix steps and their examples, critic steps and
the real excerpts the critics see, the unlabelled mixtures fed to the separator, and the
pretraining steps and examples of the encoder a contrastive run starts from.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pipeline.separation import adversarial, distributed
from pipeline.separation.config import TrainConfig
from pipeline.separation.contract import Separator, center_trim
from pipeline.separation.contrastive import init_encoder
from pipeline.separation.data import StemWindows
from pipeline.separation.remix import RemixSampler, remix_step
from pipeline.separation.unlabelled import CatalogExcerpts
from pipeline.sources import SOURCES

log = logging.getLogger(__name__)

# Extra steps and examples a part may add, each a count over all ranks; every one is in
# summary.json (0 where the run's scheme has not that part).
EXTRA_COUNTS = ("remix_steps", "remix_examples", "critic_steps", "critic_examples", "unlabelled_examples",
                "pretrain_steps", "pretrain_examples")


class Trainer(Protocol):
    """What a part may use of the trainer (:class:`pipeline.separation.trainer.SeparatorTrainer`)."""

    ctx: distributed.DistContext
    config: TrainConfig
    model: Separator  # the bare model
    net: nn.Module  # the model as trained (wrapped for DDP when distributed)
    window: int  # input samples of a training window
    output_window: int  # output samples the losses see
    train_data: StemWindows
    data_rng: np.random.Generator  # this rank's stream of training windows

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The run's learning-rate schedule for another optimizer."""

    def step_scheduler(self, scheduler: Any, metric: float) -> None:
        """One epoch's step of a schedule."""

    def extra_step_fits(self, examples: int) -> bool:
        """Whether an extra update of ``examples`` (over all ranks) may run under the budget."""

    def count_extra(self, updates: int, examples: int) -> None:
        """Count extra separator updates and the examples they fed."""


def seed_int(*entropy: int) -> int:
    """A 64-bit seed from ``entropy`` (numpy's SeedSequence): independent streams per purpose and rank."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


class Scheme:
    """One part of a training scheme; every hook's default adds nothing (module docstring)."""

    name = ""

    def prepare_model(self, model: Separator) -> None:
        """Change the bare model before it is wrapped for DDP."""

    def attach(self, trainer: Trainer) -> None:
        """Set up what the part needs from the trainer (optimizers, critics, random streams)."""

    def extra_mixtures(self) -> torch.Tensor | None:
        """Mixtures ``(B', C, window)`` to feed through the model with the main batch, or None."""
        return None

    @property
    def extra_examples_per_step(self) -> int:
        """Examples (over all ranks) that :meth:`extra_mixtures` adds to each main step."""
        return 0

    def extra_gradient(self, estimates: torch.Tensor, mixtures: torch.Tensor,
                       main_norm: float) -> torch.Tensor:
        """The loss gradient at ``estimates`` ``(B', S, C, T)`` of :meth:`extra_mixtures` (trimmed to ``T``)."""
        raise NotImplementedError(f"{type(self).__name__} feeds no extra mixtures")

    def after_main_step(self, estimates: torch.Tensor | None) -> None:
        """After the main step's update; ``estimates``: those of :meth:`extra_mixtures`, detached."""

    def end_epoch(self, metric: float) -> None:
        """After each epoch, with the metric ``best.pt`` follows."""

    def epoch_row(self) -> dict[str, Any]:
        """The epoch's columns of ``history.csv`` (and resets the part's per-epoch sums)."""
        return {}

    def counts(self) -> dict[str, int]:
        """Extra steps and examples so far (names of :data:`EXTRA_COUNTS`)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Fields of ``summary.json`` (besides :meth:`counts`)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Top-level checkpoint fields of the part."""
        return {}

    def load_state_dict(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Continue from a checkpoint's ``state`` (``history``: the run's rows so far)."""

    def rng_state(self) -> dict[str, Any]:
        """This rank's random streams of the part."""
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rng_state` (this rank's)."""

    def reseed(self, epoch: int, shared: dict[str, Any]) -> None:
        """New per-rank streams after a resume with another number of ranks; ``shared``: rank 0's
        :meth:`rng_state` (for streams every rank shares)."""


class RemixScheme(Scheme):
    """The Demucs paper's remix step on the D_i (:mod:`pipeline.separation.remix`): after a main
    step, with probability ``remix_probability``, one step of its own Adam (``lr *
    remix_lr_factor``, on the same schedule) on loss (3).  Without any D_i excerpt (or at
    probability 0) it never runs: the plain recipe, logged as such."""

    name = "remix"

    def __init__(self, sampler: RemixSampler, probability: float) -> None:
        self.sampler, self.probability = sampler, probability
        self.steps = self.examples = 0
        self._sum, self._per_source = 0.0, [0] * len(SOURCES)

    @property
    def enabled(self) -> bool:
        return bool(self.sampler.available) and self.probability > 0

    def attach(self, trainer: Trainer) -> None:
        config = trainer.config
        self.trainer = trainer
        self.batch = (config.remix_batch_size or config.batch_size) // trainer.ctx.world_size
        if self.batch < 1:
            raise ValueError("each rank needs at least one remix example per batch")
        self.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=config.lr * config.remix_lr_factor)
        self.scheduler = trainer.make_scheduler(self.optimizer)
        # One stream shared by all ranks for the decision and the source: every rank runs the same steps.
        self.decision_rng = np.random.default_rng([config.seed, 1])
        if self.enabled:
            log.info("remix step on: D_i sizes %s", self.sampler.counts())
        elif not self.sampler.available:
            log.warning("no D_i excerpt found (%s): plain supervised training without the remix step",
                        self.sampler.run.folder if self.sampler.run is not None else None)
        else:
            log.warning("remix_probability is 0: plain supervised training without the remix step")

    def after_main_step(self, estimates: torch.Tensor | None) -> None:
        trainer = self.trainer
        examples = self.batch * trainer.ctx.world_size
        if not self.enabled or self.decision_rng.random() >= self.probability:
            return
        source = self.sampler.pick_source(self.decision_rng)
        if not trainer.extra_step_fits(examples):
            return
        device = trainer.ctx.device
        stems = trainer.train_data.sample(trainer.data_rng, self.batch, frames=trainer.window)[:, source]
        excerpt = self.sampler.sample(source, self.batch, trainer.data_rng)
        self._sum += remix_step(trainer.net, self.optimizer, source, torch.from_numpy(stems).to(device),
                                torch.from_numpy(excerpt).to(device), trainer.config.remix_lambda,
                                trainer.config.grad_clip)
        self._per_source[source] += 1
        self.steps += 1
        self.examples += examples
        trainer.count_extra(1, examples)

    def end_epoch(self, metric: float) -> None:
        self.trainer.step_scheduler(self.scheduler, metric)

    def epoch_row(self) -> dict[str, Any]:
        steps = sum(self._per_source)
        (total,) = distributed.all_reduce_sum([self._sum], self.trainer.ctx)
        row = {"remix_loss": total / (self.trainer.ctx.world_size * steps) if steps else math.nan,
               "remix_steps": steps}
        row.update({f"remix_steps_{name}": self._per_source[i] for i, name in enumerate(SOURCES)})
        self._sum, self._per_source = 0.0, [0] * len(SOURCES)
        return row

    def counts(self) -> dict[str, int]:
        return {"remix_steps": self.steps, "remix_examples": self.examples}

    def summary(self) -> dict[str, Any]:
        return {"remix_enabled": self.enabled, "d_i_excerpts": self.sampler.counts()}

    def state_dict(self) -> dict[str, Any]:
        return {"remix_optimizer": self.optimizer.state_dict(), "remix_scheduler": self.scheduler.state_dict(),
                "remix_counts": self.counts()}

    def load_state_dict(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.optimizer.load_state_dict(state["remix_optimizer"])
        self.scheduler.load_state_dict(state["remix_scheduler"])
        # A checkpoint without counts: every remix step fed one remix batch.
        steps = int(sum(row.get("remix_steps", 0) for row in history))
        counts = state.get("remix_counts", {"remix_steps": steps,
                                            "remix_examples": steps * self.batch * self.trainer.ctx.world_size})
        self.steps, self.examples = int(counts["remix_steps"]), int(counts["remix_examples"])

    def rng_state(self) -> dict[str, Any]:
        return {"decision": self.decision_rng.bit_generator.state}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.decision_rng.bit_generator.state = state["decision"]

    def reseed(self, epoch: int, shared: dict[str, Any]) -> None:
        self.decision_rng.bit_generator.state = shared["decision"]  # shared by every rank


class AdversarialScheme(Scheme):
    """Per-source Wasserstein critics on unlabelled mixtures (:mod:`pipeline.separation.adversarial`):
    each main step feeds the supervised batch and an unlabelled batch through the model in one
    pass, adds ``alpha L_u + beta L_add`` on the paper's scale, then trains the critics
    ``critic_steps`` times on real train-split excerpts and the unlabelled estimates."""

    name = "adversarial"

    def __init__(self, unlabelled: CatalogExcerpts) -> None:
        self.unlabelled = unlabelled
        self.critic_steps = self.critic_examples = self.unlabelled_examples = 0
        self._rows: list[dict[str, float]] = []
        self._mixtures: torch.Tensor | None = None
        self.additive_max = 0.0

    def attach(self, trainer: Trainer) -> None:
        config, ctx = trainer.config, trainer.ctx
        self.trainer, self.settings = trainer, config.adversarial_settings()
        self.batch = (config.unlabelled_batch_size or config.batch_size) // ctx.world_size
        if self.batch < 1:
            raise ValueError("each rank needs at least one unlabelled mixture per batch")
        # Per-rank streams: unlabelled crops and scales, real excerpts; interpolation weights.
        self.rng = np.random.default_rng([config.seed, 3, ctx.rank])
        self.generator = torch.Generator().manual_seed(seed_int(config.seed, 4, ctx.rank))
        self.critics = adversarial.AdversarialTraining(
            self.settings, trainer.output_window, ctx.device, self.generator,
            wrap=lambda module: distributed.wrap(module, ctx), additive_vanishes=trainer.model.mixture_consistent)
        log.info("adversarial scheme: critics for %s on %s catalog tracks", list(self.settings.sources),
                 len(self.unlabelled))
        if trainer.model.mixture_consistent:
            log.warning("the model projects its estimates to sum to the mixture: L_add is 0 by construction, "
                        "beta = %s has no effect", self.settings.beta)

    @property
    def extra_examples_per_step(self) -> int:
        return self.batch * self.trainer.ctx.world_size

    def extra_mixtures(self) -> torch.Tensor:
        crops = self.unlabelled.sample(self.batch, self.rng)
        self._mixtures = torch.from_numpy(self.critics.scale(crops, self.rng)).to(self.trainer.ctx.device)
        self.unlabelled_examples += self.extra_examples_per_step
        return self._mixtures

    def extra_gradient(self, estimates: torch.Tensor, mixtures: torch.Tensor, main_norm: float) -> torch.Tensor:
        grad, values = self.critics.output_gradient(estimates, mixtures, main_norm)
        self._rows.append(values)
        self.additive_max = max(self.additive_max, values["additive_loss"])
        return grad

    def after_main_step(self, estimates: torch.Tensor | None) -> None:
        trainer = self.trainer
        real = trainer.train_data.sample(self.rng, self.batch, frames=trainer.window)
        real_t = center_trim(torch.from_numpy(real).to(trainer.ctx.device), estimates.shape[-1])
        self._rows[-1].update(self.critics.train_critics(real_t, estimates))
        self.critic_steps += self.settings.critic_steps
        self.critic_examples += self.extra_examples_per_step

    def epoch_row(self) -> dict[str, Any]:
        """The epoch's mean adversarial terms and critic statistics over steps and ranks, and its critic steps."""
        names = ["adversarial_loss", "additive_loss", "alpha_effective", "beta_effective", "critic_gap",
                 "critic_penalty"] + [f"critic_gap_{s}" for s in self.settings.sources]
        rows, self._rows = self._rows, []
        totals = distributed.all_reduce_sum([sum(r[n] for r in rows) for n in names] + [len(rows)],
                                            self.trainer.ctx)
        out = {n: totals[k] / totals[-1] if totals[-1] else math.nan for k, n in enumerate(names)}
        out["critic_steps"] = len(rows) * self.settings.critic_steps
        return out

    def counts(self) -> dict[str, int]:
        return {"critic_steps": self.critic_steps, "critic_examples": self.critic_examples,
                "unlabelled_examples": self.unlabelled_examples}

    def summary(self) -> dict[str, Any]:
        return {"critic_sources": list(self.settings.sources), "unlabelled_tracks": len(self.unlabelled),
                "unlabelled_rejected": dict(self.unlabelled.rejected),
                "additive_loss_vanishes": self.critics.additive_vanishes, "additive_loss_max": self.additive_max}

    def state_dict(self) -> dict[str, Any]:
        return {"adversarial": {**self.critics.state_dict(), "counts": self.counts(),
                                "additive_max": self.additive_max}}

    def load_state_dict(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        part = state["adversarial"]
        self.critics.load_state_dict(part)
        counts = part["counts"]
        self.critic_steps, self.critic_examples = int(counts["critic_steps"]), int(counts["critic_examples"])
        self.unlabelled_examples = int(counts["unlabelled_examples"])
        self.additive_max = float(part["additive_max"])

    def rng_state(self) -> dict[str, Any]:
        return {"adversarial": self.rng.bit_generator.state, "adversarial_generator": self.generator.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["adversarial"]
        self.generator.set_state(state["adversarial_generator"])

    def reseed(self, epoch: int, shared: dict[str, Any]) -> None:
        config, rank = self.trainer.config, self.trainer.ctx.rank
        self.rng = np.random.default_rng([config.seed, 3, rank, epoch])
        self.generator.manual_seed(seed_int(config.seed, 4, rank, epoch))


class ContrastiveScheme(Scheme):
    """The encoder starts from a contrastively pretrained one (``encoder.pt`` of
    :mod:`pipeline.separation.contrastive`); its pretraining's steps and examples (from the
    ``summary.json`` beside it) are counted as the run's extra compute."""

    name = "contrastive"

    def __init__(self, encoder: str | os.PathLike) -> None:
        self.encoder = Path(encoder)

    def prepare_model(self, model: Separator) -> None:
        init_encoder(model, self.encoder)

    def counts(self) -> dict[str, int]:
        summary_file = self.encoder.parent / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        return {"pretrain_steps": int(summary.get("steps", 0)), "pretrain_examples": int(summary.get("examples", 0))}

    def summary(self) -> dict[str, Any]:
        return {"encoder_init": str(self.encoder)}


def build(config: TrainConfig, sample_rate: int, channels: int, window: int, *,
          datasets: str | os.PathLike | None = None, catalog_tracks: str | os.PathLike | None = None,
          encoder: str | os.PathLike | None = None) -> list[Scheme]:
    """The parts of ``config.scheme``, from their inputs: ``datasets`` (an Extract run, the D_i;
    ``None`` or empty: the remix step never runs), ``catalog_tracks`` (a catalog scan's
    ``tracks.parquet``, required by the adversarial part) and ``encoder`` (an ``encoder.pt``,
    required by the contrastive part); ``sample_rate``, ``channels`` and ``window`` (input
    samples) are the model's.  An input the scheme does not use is ignored."""
    parts: list[Scheme] = []
    if "remix" in config.parts:
        parts.append(RemixScheme(RemixSampler(datasets, sample_rate, channels, window), config.remix_probability))
    else:
        log.info("scheme %s: no remix step", config.scheme)
    if "adversarial" in config.parts:
        if catalog_tracks is None:
            raise ValueError("the adversarial scheme needs unlabelled mixtures: a catalog scan's tracks.parquet")
        parts.append(AdversarialScheme(CatalogExcerpts(catalog_tracks, sample_rate, channels, window)))
    if "contrastive" in config.parts:
        if encoder is None:
            raise ValueError("the contrastive scheme needs a pretrained encoder (encoder.pt)")
        parts.append(ContrastiveScheme(encoder))
    return parts


def summary_fields(parts: list[Scheme]) -> dict[str, Any]:
    """``summary.json``'s scheme fields: every part's, and what an absent part would say
    (no remix step, no critics, no pretrained encoder, every extra count 0)."""
    fields: dict[str, Any] = {"remix_enabled": False, "d_i_excerpts": {name: 0 for name in SOURCES},
                              "critic_sources": [], "unlabelled_tracks": 0, "unlabelled_rejected": {},
                              "additive_loss_vanishes": None, "additive_loss_max": None, "encoder_init": None,
                              **{name: 0 for name in EXTRA_COUNTS}}
    for part in parts:
        fields.update(part.summary())
        fields.update(part.counts())
    return fields
