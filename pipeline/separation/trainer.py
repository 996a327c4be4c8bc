"""The separator trainer: main steps, validation, learning-rate schedule, budget and resume state.

:class:`SeparatorTrainer` takes its parts (a :class:`~pipeline.separation.config.TrainConfig`,
the model, the train and valid windows, the scheme's parts of :mod:`pipeline.separation.schemes`)
and trains epoch by epoch through :func:`pipeline.storage.checkpoints.train_epochs`.

Per batch (Demucs paper, section 5.2): random train windows of ``window_s`` (plus
``max_shift_s`` for the time shift), augmentation (:mod:`pipeline.separation.augment`),
mixture = sum of the augmented sources, the main loss (``loss``: L1 = mean absolute error per
element, or negative SI-SNR, :mod:`pipeline.separation.losses`) against the sources
centre-trimmed to the model's output (with the scheme's extra mixtures in the same forward
pass and their gradient added, :meth:`Scheme.extra_gradient`), gradient-norm clipping to
``grad_clip`` (if set), one Adam step; then each part's ``after_main_step`` (the remix step,
the critic steps).  Learning rate: ``lr_schedule = "step"`` divides it by ``lr_decay`` every
``lr_decay_every`` epochs; ``"plateau"`` divides it by ``lr_decay`` once ``lr_patience``
epochs in a row have not improved the best metric: the main loss on fixed windows of the
``valid`` split (without a valid split, the training loss), which ``best.pt`` and early
stopping (``early_stop_patience``) follow too.

Counts (over all ranks): ``main_steps`` and ``main_examples`` (the supervised batches),
``updates`` (every separator optimizer step: main and remix) and ``examples`` (every example
fed to the separator: main, remix and unlabelled batches), and each part's extra steps and
examples.  The budget (``max_updates``, ``max_examples``) counts the main ones under
``budget = "main"`` and the totals under ``"total"`` (:mod:`pipeline.separation.config`).

Random streams: per rank, the windows (``data_rng``) and the augmentations; the model's
initial weights from ``seed`` (identical on every rank); the parts' own streams.  The
checkpoint holds every rank's, so a resumed run continues them exactly.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.progress import progress_bar
from pipeline.separation import distributed, registry
from pipeline.separation.adversarial import item_norm
from pipeline.separation.augment import Augment, mixture_of
from pipeline.separation.config import TrainConfig
from pipeline.separation.contract import Separator, center_trim
from pipeline.separation.data import StemWindows
from pipeline.separation.history import json_value, plot_losses
from pipeline.separation.history import write as write_history
from pipeline.separation.losses import LOSSES
from pipeline.separation.schemes import Scheme, seed_int, summary_fields
from pipeline.sources import SOURCES
from pipeline.storage import checkpoints
from pipeline.storage.outputs import write_json_atomic

log = logging.getLogger(__name__)

BEST = "best.pt"


@dataclass(frozen=True)
class Windows:
    """A run's window lengths, in samples at the model's rate: ``input`` (a valid length of the
    model, ``window_s`` rounded up), ``output`` (what the loss sees) and ``shift`` (the time
    shift's range, read on top of ``input``)."""

    input: int
    output: int
    shift: int

    @classmethod
    def of(cls, model: Separator, config: TrainConfig) -> "Windows":
        rate = model.config.sample_rate
        window = model.valid_length(round(config.window_s * rate))
        return cls(window, model.output_length(window), round(config.max_shift_s * rate))


class SeparatorTrainer:
    """One training run (one process of it, when distributed); :meth:`run` trains.

    ``model``: the bare model, freshly built from ``config.seed`` (:attr:`model`; :attr:`net` is
    it wrapped for DDP); ``train_data`` / ``valid_data``: windows of ``Windows.of(model,
    config)`` (``valid_data`` ``None``: ``best.pt`` follows the training loss); ``schemes``: the
    parts of ``config.scheme`` (:func:`pipeline.separation.schemes.build`); ``out_dir``: where
    rank 0 writes.  ``ctx``: :func:`pipeline.separation.distributed.setup`'s.
    """

    def __init__(self, config: TrainConfig, model: Separator, train_data: StemWindows,
                 valid_data: StemWindows | None, schemes: list[Scheme], out_dir: str | Path,
                 ctx: distributed.DistContext, progress: bool = True) -> None:
        self.config, self.out_dir, self.progress, self.ctx = config, Path(out_dir), progress, ctx
        if config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} ranks")
        self.batch = config.batch_size // ctx.world_size
        if self.batch < 1:
            raise ValueError("each rank needs at least one example per batch")
        self.model, self.schemes = model, list(schemes)
        for part in self.schemes:
            part.prepare_model(model)  # before DDP, which broadcasts rank 0's weights
        self.net = distributed.wrap(model, ctx)
        self.loss = LOSSES[config.loss]
        windows = Windows.of(model, config)
        self.window, self.output_window, self.shift = windows.input, windows.output, windows.shift
        self.train_data, self.valid_data = train_data, valid_data
        hop_s = config.window_s if config.epoch_hop_s is None else config.epoch_hop_s
        rate = model.config.sample_rate
        self.batches_per_epoch = config.batches_per_epoch or max(
            1, math.ceil(train_data.n_positions(max(1, round(hop_s * rate))) / config.batch_size))
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.scheduler = self.make_scheduler(self.optimizer)
        self.data_rng = np.random.default_rng([config.seed, 0, ctx.rank])
        self.aug_generator = torch.Generator().manual_seed(seed_int(config.seed, 2, ctx.rank))
        self.augment = Augment(self.aug_generator, self.shift, config.flip_sign, config.flip_channels,
                               config.shuffle_sources)
        self.history: list[dict[str, Any]] = []
        self.epoch, self.best = 0, math.inf
        self.main_steps = self.main_examples = self.updates = self.examples = 0  # over all ranks
        for part in self.schemes:
            part.attach(self)

    # ----------------------------------------------------------------- schedule
    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The run's learning-rate schedule for ``optimizer`` (``lr_schedule``)."""
        config, gamma = self.config, 1.0 / self.config.lr_decay
        if config.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, config.lr_decay_every, gamma)
        # torch's patience counts the stale epochs it tolerates: decay on the lr_patience-th one.
        # threshold 0: any decrease of the metric is an improvement, as for best.pt.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=gamma, patience=config.lr_patience - 1, threshold=0.0)

    def step_scheduler(self, scheduler: Any, metric: float) -> None:
        """One epoch's step of ``scheduler`` (the plateau schedule reads ``metric``)."""
        with warnings.catch_warnings():  # an optimizer (the remix one) may not have stepped this epoch
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
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

    # ----------------------------------------------------------------- budget
    @property
    def main_step_examples(self) -> int:
        """Examples one main step feeds the model, over all ranks: the supervised batch and the parts' extras."""
        return self.config.batch_size + sum(part.extra_examples_per_step for part in self.schemes)

    def _fits(self, updates: int, examples: int) -> bool:
        config = self.config
        return ((config.max_updates is None or updates <= config.max_updates)
                and (config.max_examples is None or examples <= config.max_examples))

    def main_step_fits(self) -> bool:
        """Whether one more main step stays within the budget."""
        if self.config.budget == "main":
            return self._fits(self.main_steps + 1, self.main_examples + self.config.batch_size)
        return self._fits(self.updates + 1, self.examples + self.main_step_examples)

    def extra_step_fits(self, examples: int) -> bool:
        """Whether a part's extra update of ``examples`` (over all ranks) may run: always under the
        ``main`` budget (extra steps come on top), within the totals under ``total``."""
        return self.config.budget == "main" or self._fits(self.updates + 1, self.examples + examples)

    def count_extra(self, updates: int, examples: int) -> None:
        """Count a part's extra separator updates and the examples they fed."""
        self.updates += updates
        self.examples += examples

    @property
    def budget_spent(self) -> bool:
        """True once no further main step fits in the budget."""
        return not self.main_step_fits()

    def counts(self) -> dict[str, int]:
        """The compute spent so far (module docstring), over all ranks."""
        return {"main_steps": self.main_steps, "main_examples": self.main_examples, "updates": self.updates,
                "examples": self.examples}

    # ----------------------------------------------------------------- state
    def _rng_state(self) -> dict[str, Any]:
        state = {"data": self.data_rng.bit_generator.state, "augment": self.aug_generator.get_state(),
                 "torch": torch.get_rng_state()}
        for part in self.schemes:
            state.update(part.rng_state())
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        self.data_rng.bit_generator.state = state["data"]
        self.aug_generator.set_state(state["augment"])
        torch.set_rng_state(state["torch"])
        for part in self.schemes:
            part.set_rng_state(state)
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; random states of all ranks (collective when distributed)."""
        state = {**registry.checkpoint_fields(self.model), "epoch": self.epoch, "train_config": self.config.to_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": distributed.all_gather_object(self._rng_state(), self.ctx),
                 "world_size": self.ctx.world_size, "best": self.best, "history": self.history,
                 "counts": self.counts()}
        for part in self.schemes:
            state.update(part.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoints.require_same_config(self.config, TrainConfig.from_dict(state["train_config"]))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best, self.history = int(state["epoch"]), float(state["best"]), list(state["history"])
        for part in self.schemes:
            part.load_state_dict(state, self.history)
        last = self.history[-1] if self.history else {}
        main_steps = int(sum(row.get("main_steps", 0) for row in self.history))
        counts = state.get("counts", {  # a checkpoint without counts: from its history
            "main_steps": main_steps, "main_examples": main_steps * self.config.batch_size,
            "updates": last.get("updates", 0), "examples": last.get("examples", 0)})
        self.main_steps, self.main_examples = int(counts["main_steps"]), int(counts["main_examples"])
        self.updates, self.examples = int(counts["updates"]), int(counts["examples"])
        if int(state["world_size"]) == self.ctx.world_size:
            self._set_rng_state(state["rng"][self.ctx.rank])
        else:
            log.warning("checkpoint made with %s ranks, resuming with %s: random streams re-seeded at epoch %s",
                        state["world_size"], self.ctx.world_size, self.epoch)
            seed, rank = self.config.seed, self.ctx.rank
            self.data_rng = np.random.default_rng([seed, 0, rank, self.epoch])
            self.aug_generator.manual_seed(seed_int(seed, 2, rank, self.epoch))
            for part in self.schemes:
                part.reseed(self.epoch, state["rng"][0])

    # ----------------------------------------------------------------- steps
    def _main_step(self, sources: torch.Tensor) -> float:
        """One main step (and the parts' extras fed with it); returns the main loss ``L_s``."""
        sources = self.augment(sources)
        mix = mixture_of(sources)
        feeders = [(part, part.extra_mixtures()) for part in self.schemes
                   if part.extra_examples_per_step]  # at most one part feeds extra mixtures
        if not feeders:
            estimates = self.net(mix)
            main = self.loss.fn(estimates, center_trim(sources, estimates.shape[-1]))
            extras = None
            self.optimizer.zero_grad(set_to_none=True)
            main.backward()
        else:
            (part, mixtures), = feeders
            outputs = self.net(torch.cat([mix, mixtures]))  # one pass: one DDP forward per backward
            estimates, extras = outputs[:len(mix)], outputs[len(mix):]
            main = self.loss.fn(estimates, center_trim(sources, estimates.shape[-1]))
            (main_grad,) = torch.autograd.grad(main, estimates, retain_graph=True)
            extra_grad = part.extra_gradient(extras, center_trim(mixtures, extras.shape[-1]),
                                             item_norm(main_grad))
            self.optimizer.zero_grad(set_to_none=True)
            outputs.backward(torch.cat([main_grad, extra_grad]))
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.main_steps += 1
        self.main_examples += self.config.batch_size
        self.count_extra(1, self.main_step_examples)
        detached = None if extras is None else extras.detach()
        for part in self.schemes:
            part.after_main_step(detached)
        return float(main.detach())

    @torch.no_grad()
    def validate(self) -> float:
        """The main loss on the fixed valid windows, averaged like one batch (NaN without a valid split)."""
        if self.valid_data is None:
            return math.nan
        self.model.eval()
        spans = self.valid_data.fixed_windows(self.config.valid_max_windows)[self.ctx.rank::self.ctx.world_size]
        total = count = 0.0
        for k in range(0, len(spans), self.batch):
            sources = torch.from_numpy(self.valid_data.read_windows(spans[k:k + self.batch])).to(self.ctx.device)
            estimates = self.model(mixture_of(sources))
            batch_total, batch_count = self.loss.totals(estimates, center_trim(sources, estimates.shape[-1]))
            total += batch_total
            count += batch_count
        self.model.train()
        total, count = distributed.all_reduce_sum([total, count], self.ctx)
        return total / count if count else math.nan

    def _train_batches(self) -> tuple[float, int]:
        """The epoch's main steps: ``(sum of main losses on this rank, steps)``."""
        main_sum, steps = 0.0, 0
        bar = progress_bar(range(self.batches_per_epoch), desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not (self.progress and self.ctx.is_main), leave=False)
        self.model.train()
        for _ in bar:
            if not self.main_step_fits():
                break
            sources = torch.from_numpy(self.train_data.sample(self.data_rng, self.batch)).to(self.ctx.device)
            main_sum += self._main_step(sources)
            steps += 1
            bar.set_postfix(loss=f"{main_sum / steps:.4f}", updates=self.updates)
        bar.close()
        return main_sum, steps

    # ----------------------------------------------------------------- epochs
    def finished(self) -> bool:
        return self.epoch >= self.config.epochs or self.stopped_early or self.budget_spent

    def train_epoch(self) -> None:
        """One epoch: main steps (and the parts'), validation, schedules, ``best.pt`` and logs."""
        started = time.time()
        lr = self.optimizer.param_groups[0]["lr"]
        main_sum, steps = self._train_batches()
        (main_sum,) = distributed.all_reduce_sum([main_sum], self.ctx)
        row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": lr,
                               "train_loss": main_sum / (self.ctx.world_size * steps) if steps else math.nan,
                               "remix_loss": math.nan, "remix_steps": 0, "main_steps": steps,
                               "updates": self.updates, "examples": self.examples,
                               **{f"remix_steps_{name}": 0 for name in SOURCES}}
        for part in self.schemes:
            row.update(part.epoch_row())
        row["valid_loss"] = self.validate()
        row["seconds"] = round(time.time() - started, 3)
        self.epoch += 1
        metric = row["valid_loss"] if self.valid_data is not None else row["train_loss"]
        self.step_scheduler(self.scheduler, metric)
        for part in self.schemes:
            part.end_epoch(metric)
        row["best_metric"] = metric
        row["is_best"] = bool(metric < self.best)
        self.history.append(row)
        if row["is_best"]:
            self.best = metric
            self._save_best()
        if self.ctx.is_main:
            write_history(self.history, self.out_dir, functools.partial(plot_losses, loss_label=self.loss.label))
        log.info("epoch %s: train %.5f remix %.5f (%s steps) valid %.5f", row["epoch"], row["train_loss"],
                 row["remix_loss"], row["remix_steps"], row["valid_loss"])

    def _save_best(self) -> None:
        if self.ctx.is_main:
            checkpoints.save(self.out_dir / BEST, {**registry.checkpoint_fields(self.model), "epoch": self.epoch,
                                                   "best": self.best, "train_config": self.config.to_dict()})

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` says of the run (the module docstrings name the fields)."""
        best = min(self.history, key=lambda r: r["best_metric"]) if self.history else {}
        return {
            "epochs": self.epoch,
            "best_epoch": best.get("epoch"),
            "best_metric": json_value(self.best),
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
            **self.counts(),
            "budget": self.config.budget,
            "max_updates": self.config.max_updates,
            "max_examples": self.config.max_examples,
            "budget_spent": self.budget_spent,
            "train_tracks": len(self.train_data),
            "valid_tracks": len(self.valid_data) if self.valid_data is not None else 0,
            "scheme": self.config.scheme,
            **summary_fields(self.schemes),
            "config": self.config.to_dict(),
        }

    def run(self, resume: bool = True) -> list[dict[str, Any]]:
        """Train up to ``config.epochs`` epochs (from ``checkpoint.pt`` when ``resume``); the history."""
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.train_epochs(self, self.out_dir / checkpoints.CHECKPOINT, resume, write=self.ctx.is_main)
        if self.stopped_early:
            log.info("early stop after epoch %s: %s epochs without improvement", self.epoch, self.stale_epochs)
        if self.ctx.is_main:
            write_json_atomic(self.out_dir / "summary.json", self.summary())
        distributed.barrier(self.ctx)
        return self.history
