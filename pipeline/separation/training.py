"""Training the Demucs separator with the paper's recipe and the unlabelled-data remix step.

Per batch (section 5.2): random train windows of ``window_s`` (plus ``max_shift_s`` for the
time shift), augmentation (:mod:`pipeline.separation.augment`), mixture = sum of the augmented sources,
L1 loss over the four sources (mean absolute error per element), one Adam step (lr 5e-4,
divided by ``lr_decay`` every ``lr_decay_every`` epochs).  Then, with probability
``remix_probability``, one remix step (:mod:`pipeline.separation.remix`) with its own Adam at
``lr * remix_lr_factor`` (decayed on the same schedule).  Without any D_i excerpt the remix
step never runs: the plain supervised recipe, logged as such.

Outputs in ``out_dir`` (rank 0 only, each written atomically):

- ``checkpoint.pt`` after every epoch: model, both optimizers, both LR schedulers, every
  random generator's state (of every rank) and the history; a run started again with
  ``resume=True`` continues from it and ends with bit-identical weights on CPU;
- ``best.pt``: the model of the epoch with the lowest validation loss (L1 on fixed windows of
  the ``valid`` split; without a valid split, the lowest training loss);
- ``history.csv`` / ``history.json`` (one row per epoch) and ``losses.png``;
- ``summary.json``: whether the remix step was enabled, the D_i sizes, the best epoch.

Checkpoints hold only tensors and plain Python values, so ``torch.load(weights_only=True)``
reads them; configs are stored as dicts.  Distributed runs: see :mod:`pipeline.separation.distributed`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.separation import distributed
from pipeline.separation.augment import Augment, mixture_of
from pipeline.separation.demucs import Demucs, DemucsConfig, require_known_fields
from pipeline.separation.remix import RemixSampler, l1_loss, remix_step
from pipeline.separation.data import DEFAULT_MEMORY_LIMIT, StemWindows
from pipeline.sources import SOURCES
from pipeline.storage.outputs import atomic_path, write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = 1

# Fields that do not change the numbers a run computes (may differ when resuming).
_RUNTIME_FIELDS = ("epochs", "num_threads", "lazy", "memory_limit_bytes")


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters; defaults are the paper's where it gives them.

    ``batch_size`` is global (split evenly over the ranks).  ``batches_per_epoch=None`` uses the
    paper's epoch: every ``window_s`` extract at a stride of ``epoch_hop_s`` once, divided by the
    batch size.  ``max_shift_s`` (time-shift range) is not given by the paper.
    """

    epochs: int = 400
    batches_per_epoch: int | None = None
    batch_size: int = 128
    window_s: float = 5.0
    epoch_hop_s: float = 0.5
    max_shift_s: float = 0.2
    flip_sign: bool = True
    flip_channels: bool = True
    shuffle_sources: bool = True
    lr: float = 5e-4
    lr_decay: float = 5.0
    lr_decay_every: int = 160
    remix_probability: float = 0.25
    remix_lambda: float = 1e-6
    remix_lr_factor: float = 0.1
    remix_batch_size: int | None = None  # None: batch_size
    valid_max_windows: int | None = None
    model: DemucsConfig = field(default_factory=DemucsConfig)
    seed: int = 0
    num_threads: int | None = None
    lazy: bool | None = None
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["model"] = self.model.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        require_known_fields(cls, values)
        values = dict(values)
        if isinstance(values.get("model"), dict):
            values["model"] = DemucsConfig.from_dict(values["model"])
        return cls(**values)

    def significant(self) -> dict[str, Any]:
        """The fields that determine the result (everything but run-time knobs and ``epochs``)."""
        return {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_FIELDS}


def _seed_int(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


class SeparatorTrainer:
    """One training run (one process of it, when distributed); :meth:`run` trains.

    ``stem_root``: the stem set (train and, if present, valid split).  ``dataset_run_dir``: an
    extraction run holding the D_i index, or ``None`` for plain supervised training.
    ``device=None``: ``cuda`` when available, else ``cpu``.  :attr:`model` is the bare model.
    """

    def __init__(self, config: TrainConfig, stem_root: str | os.PathLike,
                 dataset_run_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                 device: str | torch.device | None = None, progress: bool = True) -> None:
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
        self.model = Demucs(mcfg).to(ctx.device)
        self.net = distributed.wrap(self.model, ctx)
        rate = mcfg.sample_rate
        self.window = self.model.valid_length(round(config.window_s * rate))  # samples
        self.shift = round(config.max_shift_s * rate)
        data = dict(sample_rate=rate, audio_channels=mcfg.audio_channels, lazy=config.lazy,
                    memory_limit_bytes=config.memory_limit_bytes)
        self.train_data = StemWindows(stem_root, "train", self.window + self.shift, **data)
        try:
            self.valid_data: StemWindows | None = StemWindows(stem_root, "valid", self.window, **data)
        except ValueError:
            self.valid_data = None
            log.warning("stem set %s has no valid split: best.pt follows the training loss", stem_root)
        self.remix = RemixSampler(dataset_run_dir, rate, mcfg.audio_channels, self.window)
        if self.remix_enabled:
            log.info("remix step on: D_i sizes %s", self.remix.counts())
        elif not self.remix.available:
            log.warning("no D_i excerpt found (%s): plain supervised training without the remix step",
                        dataset_run_dir)
        else:
            log.warning("remix_probability is 0: plain supervised training without the remix step")
        self.batches_per_epoch = config.batches_per_epoch or max(1, math.ceil(
            self.train_data.n_positions(round(config.epoch_hop_s * rate)) / config.batch_size))

        params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.remix_optimizer = torch.optim.Adam(params, lr=config.lr * config.remix_lr_factor)
        gamma = 1.0 / config.lr_decay
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_decay_every, gamma)
        self.remix_scheduler = torch.optim.lr_scheduler.StepLR(self.remix_optimizer, config.lr_decay_every, gamma)

        # Per-rank streams (different windows on every rank) and one stream shared by all ranks
        # for the remix decision and source, so that every rank runs the same steps.
        self.data_rng = np.random.default_rng([config.seed, 0, ctx.rank])
        self.decision_rng = np.random.default_rng([config.seed, 1])
        self.aug_generator = torch.Generator().manual_seed(_seed_int(config.seed, 2, ctx.rank))
        self.augment = Augment(self.aug_generator, self.shift, config.flip_sign, config.flip_channels,
                               config.shuffle_sources)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.best = math.inf

    @property
    def remix_enabled(self) -> bool:
        return bool(self.remix.available) and self.config.remix_probability > 0

    # ----------------------------------------------------------------- state
    def _rng_state(self) -> dict[str, Any]:
        state = {"data": self.data_rng.bit_generator.state, "decision": self.decision_rng.bit_generator.state,
                 "augment": self.aug_generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        self.data_rng.bit_generator.state = state["data"]
        self.decision_rng.bit_generator.state = state["decision"]
        self.aug_generator.set_state(state["augment"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; random states of all ranks (collective when distributed)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "train_config": self.config.to_dict(),
            "model_config": self.config.model.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "remix_optimizer": self.remix_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "remix_scheduler": self.remix_scheduler.state_dict(),
            "rng": distributed.all_gather_object(self._rng_state(), self.ctx),
            "world_size": self.ctx.world_size,
            "best": self.best,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = TrainConfig.from_dict(state["train_config"])
        if saved.significant() != self.config.significant():
            changed = sorted(k for k, v in self.config.significant().items() if saved.significant().get(k) != v)
            raise ValueError(f"checkpoint was made with a different configuration ({', '.join(changed)}); "
                             "use another out_dir or resume=False")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.remix_optimizer.load_state_dict(state["remix_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.remix_scheduler.load_state_dict(state["remix_scheduler"])
        self.epoch, self.best, self.history = int(state["epoch"]), float(state["best"]), list(state["history"])
        if int(state["world_size"]) == self.ctx.world_size:
            self._set_rng_state(state["rng"][self.ctx.rank])
        else:
            log.warning("checkpoint made with %s ranks, resuming with %s: random streams re-seeded at epoch %s",
                        state["world_size"], self.ctx.world_size, self.epoch)
            self.data_rng = np.random.default_rng([self.config.seed, 0, self.ctx.rank, self.epoch])
            self.aug_generator.manual_seed(_seed_int(self.config.seed, 2, self.ctx.rank, self.epoch))
            self.decision_rng.bit_generator.state = state["rng"][0]["decision"]

    # ----------------------------------------------------------------- steps
    def _main_step(self, sources: torch.Tensor) -> float:
        sources = self.augment(sources)
        estimates = self.net(mixture_of(sources))
        loss = l1_loss(estimates, sources)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _remix_decision(self) -> int | None:
        """Same answer on every rank: the source index of a remix step, or None."""
        if not self.remix_enabled or self.decision_rng.random() >= self.config.remix_probability:
            return None
        return self.remix.pick_source(self.decision_rng)

    def _remix_step(self, source_index: int) -> float:
        device = self.ctx.device
        stems = self.train_data.sample(self.data_rng, self.remix_batch, frames=self.window)[:, source_index]
        excerpt = self.remix.sample(source_index, self.remix_batch, self.data_rng)
        return remix_step(self.net, self.remix_optimizer, source_index, torch.from_numpy(stems).to(device),
                          torch.from_numpy(excerpt).to(device), self.config.remix_lambda)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean absolute error per element on the fixed valid windows (NaN without a valid split)."""
        if self.valid_data is None:
            return math.nan
        self.model.eval()
        spans = self.valid_data.fixed_windows(self.config.valid_max_windows)[self.ctx.rank::self.ctx.world_size]
        total = count = 0.0
        for k in range(0, len(spans), self.batch):
            sources = torch.from_numpy(self.valid_data.read_windows(spans[k:k + self.batch])).to(self.ctx.device)
            estimates = self.model(mixture_of(sources))
            total += float((estimates - sources).abs().sum(dtype=torch.float64))
            count += sources.numel()
        self.model.train()
        total, count = distributed.all_reduce_sum([total, count], self.ctx)
        return total / count if count else math.nan

    def _train_epoch(self) -> dict[str, Any]:
        started = time.time()
        lr = self.optimizer.param_groups[0]["lr"]
        main_sum = remix_sum = 0.0
        remix_counts = [0] * len(SOURCES)
        bar = tqdm(range(self.batches_per_epoch), desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   disable=not (self.progress and self.ctx.is_main), leave=False)
        self.model.train()
        for _ in bar:
            sources = torch.from_numpy(self.train_data.sample(self.data_rng, self.batch)).to(self.ctx.device)
            main_sum += self._main_step(sources)
            source = self._remix_decision()
            if source is not None:
                remix_sum += self._remix_step(source)
                remix_counts[source] += 1
            bar.set_postfix(loss=f"{main_sum / (bar.n + 1):.4f}", remix=sum(remix_counts))
        bar.close()
        with warnings.catch_warnings():  # the remix optimizer may not have stepped this epoch
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
            self.remix_scheduler.step()
        main_sum, remix_sum = distributed.all_reduce_sum([main_sum, remix_sum], self.ctx)
        world, steps = self.ctx.world_size, sum(remix_counts)
        row = {"epoch": self.epoch + 1, "lr": lr,
               "train_loss": main_sum / (world * self.batches_per_epoch),
               "remix_loss": remix_sum / (world * steps) if steps else math.nan,
               "remix_steps": steps}
        row.update({f"remix_steps_{name}": remix_counts[i] for i, name in enumerate(SOURCES)})
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
                torch.save({"format": CHECKPOINT_FORMAT, "epoch": self.epoch, "best": self.best,
                            "model_config": self.config.model.to_dict(),
                            "train_config": self.config.to_dict(), "model": self.model.state_dict()}, tmp)

    def _write_logs(self) -> None:
        if not self.ctx.is_main:
            return
        frame = pd.DataFrame(self.history)
        write_bytes_atomic(self.out_dir / "history.csv", frame.to_csv(index=False).encode())
        write_json_atomic(self.out_dir / "history.json", [_json_row(r) for r in self.history])
        plot_history(frame, self.out_dir / "losses.png")

    def _write_summary(self) -> None:
        if not self.ctx.is_main:
            return
        best = min(self.history, key=lambda r: r["best_metric"]) if self.history else {}
        write_json_atomic(self.out_dir / "summary.json", {
            "epochs": self.epoch, "remix_enabled": self.remix_enabled, "d_i_excerpts": self.remix.counts(),
            "best_epoch": best.get("epoch"), "best_metric": _json_value(self.best),
            "best_on": "valid_loss" if self.valid_data is not None else "train_loss",
            "world_size": self.ctx.world_size, "device": str(self.ctx.device),
            "window_samples": self.window, "max_shift_samples": self.shift,
            "batches_per_epoch": self.batches_per_epoch, "train_tracks": len(self.train_data),
            "valid_tracks": len(self.valid_data) if self.valid_data is not None else 0,
            "config": self.config.to_dict()})

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
        while self.epoch < self.config.epochs:
            row = self._train_epoch()
            self.epoch += 1
            metric = row["valid_loss"] if self.valid_data is not None else row["train_loss"]
            row["best_metric"] = metric
            row["is_best"] = bool(metric < self.best)
            self.history.append(row)
            if row["is_best"]:
                self.best = metric
                self._save_best()
            self._save_checkpoint()
            self._write_logs()
            log.info("epoch %s: train %.5f remix %.5f (%s steps) valid %.5f", row["epoch"], row["train_loss"],
                     row["remix_loss"], row["remix_steps"], row["valid_loss"])
        self._write_summary()
        distributed.barrier(self.ctx)
        return self.history


def train_separator(config: TrainConfig, stem_root: str | os.PathLike, dataset_run_dir: str | os.PathLike | None,
                    out_dir: str | os.PathLike, resume: bool = True, device: str | torch.device | None = None,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Train a separator (see the module docstring); returns the per-epoch history."""
    return SeparatorTrainer(config, stem_root, dataset_run_dir, out_dir, device, progress).run(resume)


def plot_history(history: pd.DataFrame, path: str | os.PathLike) -> None:
    """Plot train (main), remix and valid L1 losses per epoch into a PNG at ``path``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for column, label in (("train_loss", "main step (train)"), ("remix_loss", "remix step"),
                          ("valid_loss", "valid")):
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("L1 loss (mean abs. error per sample)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


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
    parser.add_argument("--config", default="{}", help="JSON of TrainConfig fields, e.g. '{\"epochs\": 400}'")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    values = json.loads(args.config)
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), **values})
    try:
        train_separator(config, args.stem_root, args.datasets, args.out, resume=True, device=args.device)
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
