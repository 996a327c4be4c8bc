"""Contrastive pretraining of a separator's encoder (``papers/deepdemix-contrastive-pretraining.txt``, 4.3-5.2).

Triplets of isolated stems from the stem set's train split: the *anchor* and the *positive*
are the same source ``k`` in two different songs, the *negative* another source ``j != k``
of any song (section 4.3); each is a random window of ``window_s`` seconds (the model's valid
length), drawn again (up to :data:`SILENT_RETRIES` times) while it is silent (mean square at
most -100 dBFS, :func:`pipeline.separation.losses.silent`), since silence carries no source.
The model's encoder (:meth:`~pipeline.separation.contract.Separator.embed`: its encoder
modules, pooled over time) maps each to an embedding ``(B, D)``; the loss (section 4.4) is
the triplet margin loss with the L2 distance and margin 1.0::

    L(a, p, n) = max(||a - p||_2 - ||a - n||_2 + margin, 0)    (mean over the batch)

(``torch.nn.functional.triplet_margin_loss``, which adds ``1e-6`` inside each distance).
Adam at 1e-3 on the encoder's parameters only (section 5.2); 40 epochs of batch 16 in the
paper.

Outputs in ``out_dir`` (each written atomically): ``checkpoint.pt`` after every epoch (model,
optimizer, random states, history: ``resume=True`` continues with bit-identical results on
CPU, :func:`pipeline.storage.checkpoints.train_epochs`), ``encoder.pt`` (``model_name``,
``model_config``, ``encoder``: the encoder's state, the file the separator's encoder is
initialised from, :func:`init_encoder`), ``history.csv`` / ``history.json``, ``losses.png``
(the loss curve) and ``summary.json`` (with ``steps`` and ``examples``: the Adam steps and the
windows fed, three per triplet, which a contrastive separator run counts as its extra compute).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.progress import progress_bar
from pipeline.separation import registry
from pipeline.separation.config import RunConfig
from pipeline.separation.contract import Separator
from pipeline.separation.data import StemWindows
from pipeline.separation.history import plot_triplet_loss
from pipeline.separation.history import write as write_history
from pipeline.separation.losses import silent
from pipeline.sources import SOURCES
from pipeline.storage import checkpoints
from pipeline.storage.outputs import StageResult, write_json_atomic

log = logging.getLogger(__name__)

ENCODER = "encoder.pt"
MARGIN = 1.0  # section 5.2
LR = 1e-3  # section 5.2
SILENT_RETRIES = 8  # redraws of a silent window before it is kept anyway
_RUNTIME_FIELDS = ("epochs", "num_threads", "lazy", "memory_limit_bytes")


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = MARGIN) -> torch.Tensor:
    """Mean over ``(B, D)`` embeddings of ``max(||a - p||_2 - ||a - n||_2 + margin, 0)``."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2)


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """Encoder pretraining parameters; defaults are the DeepDeMix paper's (section 5.2).

    ``model_name`` / ``model``: the separator whose encoder is trained (its config as for
    :func:`~pipeline.separation.registry.make_config`).  ``batches_per_epoch=None``: every
    non-overlapping window of the train split once, divided by ``batch_size``.
    """

    runtime_fields: ClassVar[tuple[str, ...]] = _RUNTIME_FIELDS

    epochs: int = 40
    batches_per_epoch: int | None = None
    batch_size: int = 16
    window_s: float = 5.0
    lr: float = LR
    margin: float = MARGIN

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or self.epochs < 0 or self.lr <= 0 or self.margin <= 0 or self.window_s <= 0:
            raise ValueError("batch_size >= 1, epochs >= 0, lr > 0, margin > 0 and window_s > 0 are required")



class TripletSampler:
    """Triplets of windows ``(count, channels, window)`` from ``data`` (a split with >= 2 tracks)."""

    def __init__(self, data: StemWindows, window: int) -> None:
        if len(data) < 2:
            raise ValueError(f"contrastive triplets need two different songs; the {data.split} split has {len(data)}")
        self.data, self.window = data, window

    def _window(self, rng: np.random.Generator, track: int, source: int) -> np.ndarray:
        for _ in range(SILENT_RETRIES + 1):
            start = int(rng.integers(0, max(1, self.data.track_length(track) - self.window + 1)))
            wav = self.data.read(track, start, self.window)[source]
            if not bool(silent(torch.from_numpy(wav).flatten())):
                break
        return wav

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(anchor, positive, negative, sources)``: three ``(count, C, window)`` arrays and the
        ``(count, 2)`` source indices (anchor/positive, negative)."""
        n_tracks, n_sources = len(self.data), len(SOURCES)
        out = np.empty((3, count, self.data.channels, self.window), dtype=np.float32)
        sources = np.empty((count, 2), dtype=np.int64)
        for b in range(count):
            k = int(rng.integers(n_sources))
            j = (k + 1 + int(rng.integers(n_sources - 1))) % n_sources  # any source but k
            song_a = int(rng.integers(n_tracks))
            song_p = (song_a + 1 + int(rng.integers(n_tracks - 1))) % n_tracks  # any song but song_a
            song_n = int(rng.integers(n_tracks))
            out[0, b] = self._window(rng, song_a, k)
            out[1, b] = self._window(rng, song_p, k)
            out[2, b] = self._window(rng, song_n, j)
            sources[b] = (k, j)
        return out[0], out[1], out[2], sources


class EncoderPretrainer:
    """One pretraining run of ``config``'s encoder on ``stem_root``'s train split into ``out_dir``."""

    def __init__(self, config: PretrainConfig, stem_root: str | os.PathLike, out_dir: str | os.PathLike,
                 device: str | torch.device | None = None, progress: bool = True) -> None:
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)  # the separator's initial weights for the same seed
        self.model = registry.build_model(config.model_name, config.model).to(self.device)
        rate = config.model.sample_rate
        self.window = self.model.valid_length(round(config.window_s * rate))
        self.data = StemWindows(stem_root, "train", self.window, sample_rate=rate,
                                audio_channels=config.model.audio_channels, lazy=config.lazy,
                                memory_limit_bytes=config.memory_limit_bytes)
        self.sampler = TripletSampler(self.data, self.window)
        self.batches_per_epoch = config.batches_per_epoch or max(
            1, math.ceil(self.data.n_positions(self.window) / config.batch_size))
        self.optimizer = torch.optim.Adam(self.model.encoder_parts().parameters(), lr=config.lr)
        self.rng = np.random.default_rng([config.seed, 5])
        self.history: list[dict[str, Any]] = []
        self.epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return {**registry.checkpoint_fields(self.model), "epoch": self.epoch,
                "pretrain_config": self.config.to_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoints.require_same_config(self.config, PretrainConfig.from_dict(state["pretrain_config"]))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])

    def step(self) -> float:
        """One Adam step on a batch of triplets; the batch's triplet loss."""
        anchor, positive, negative, _ = self.sampler.sample(self.rng, self.config.batch_size)
        batch = torch.from_numpy(np.concatenate([anchor, positive, negative])).to(self.device)
        a, p, n = self.model.embed(batch).chunk(3)  # one encoder pass over the three
        loss = triplet_loss(a, p, n, self.config.margin)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def finished(self) -> bool:
        return self.epoch >= self.config.epochs

    def train_epoch(self) -> None:
        """One epoch of triplet steps, then ``encoder.pt`` and the history files."""
        started, total = time.time(), 0.0
        self.model.train()
        bar = progress_bar(range(self.batches_per_epoch), desc=f"pretrain {self.epoch + 1}/{self.config.epochs}",
                           disable=not self.progress, leave=False)
        for _ in bar:
            total += self.step()
        bar.close()
        self.epoch += 1
        self.history.append({"epoch": self.epoch, "triplet_loss": total / self.batches_per_epoch,
                             "seconds": round(time.time() - started, 3)})
        self._write_outputs()
        log.info("pretrain epoch %s: triplet loss %.5f", self.epoch, self.history[-1]["triplet_loss"])

    def _write_outputs(self) -> None:
        checkpoints.save(self.out_dir / ENCODER, checkpoints.encoder_fields(
            self.model.name, self.model.config.to_dict(), self.model.encoder_state_dict(), self.epoch))
        write_history(self.history, self.out_dir, plot_triplet_loss)

    def run(self, resume: bool = True) -> list[dict[str, Any]]:
        """Train up to ``config.epochs`` epochs (from ``checkpoint.pt`` when ``resume``); the history."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.train_epochs(self, self.out_dir / checkpoints.CHECKPOINT, resume)
        if not (self.out_dir / ENCODER).exists():  # epochs = 0: the initial encoder
            self._write_outputs()
        steps = self.epoch * self.batches_per_epoch
        write_json_atomic(self.out_dir / "summary.json", {
            "epochs": self.epoch, "batches_per_epoch": self.batches_per_epoch, "window_samples": self.window,
            "steps": steps, "examples": 3 * steps * self.config.batch_size,
            "train_tracks": len(self.data), "model_name": self.config.model_name,
            "final_triplet_loss": self.history[-1]["triplet_loss"] if self.history else None,
            "config": self.config.to_dict()})
        return self.history


def pretrain_encoder(config: PretrainConfig, stem_root: str | os.PathLike, out_dir: str | os.PathLike,
                     resume: bool = True, device: str | torch.device | None = None,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Pretrain ``config``'s encoder on triplets (see the module docstring); the per-epoch history."""
    return EncoderPretrainer(config, stem_root, out_dir, device, progress).run(resume)


def build_pretrain(config: PretrainConfig, stem_root: str | os.PathLike, out_dir: str | os.PathLike) -> StageResult:
    """The pretrain stage: :func:`pretrain_encoder`, resumed from ``out_dir``'s checkpoint if
    there is one; counts ``model``, ``epochs``, ``final_triplet_loss``."""
    history = pretrain_encoder(config, stem_root, out_dir, resume=True)
    return StageResult({"model": config.model_name, "epochs": len(history),
                        "final_triplet_loss": history[-1]["triplet_loss"] if history else None})


def init_encoder(model: Separator, path: str | os.PathLike) -> None:
    """Load the encoder of ``encoder.pt`` at ``path`` into ``model``; ``ValueError`` unless it was
    pretrained for the same model and config."""
    name, config, encoder = checkpoints.encoder_parts(checkpoints.read(path), path)
    if name != model.name or config != model.config.to_dict():
        raise ValueError(f"encoder {path} was pretrained for {name} {config}, "
                         f"not {model.name} {model.config.to_dict()}")
    device = next(model.parameters()).device
    model.load_encoder_state_dict({k: v.to(device) for k, v in encoder.items()})
