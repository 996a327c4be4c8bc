"""Training of the silent-source detector on labelled stem tracks (paper section 5.2).

Examples are crops of each track's scattering features ``(7, 54, T)`` with their label
frames: a crop of ``W`` windows starting at window ``s`` reads feature frames
``4s .. 4s + 40 + 4 (W - 1)`` (crops start at multiples of 4 frames = 1024 samples at
16 kHz) and its output frame ``k`` is label window ``s + k``.  One epoch is every crop of
``crop_seconds`` (5 s) with a stride of ``crop_stride_seconds`` (0.5 s, rounded to whole
64 ms windows), as in the paper, with a random offset per epoch and shuffled order.  A
track shorter than one crop gives one crop, zero-padded, with its padded frames masked out
of the loss.

Labels: ``silent_labels(V, silent_db)`` (the paper's ``V_i <= -13 dB`` by default).  Loss: the
sum over the four sources of the binary cross-entropy (with logits), averaged over frames.
Adam (the paper's lr 5e-4 by default) on all parameters, batch 64 by default.  The
normalisation mean/std are fitted on the training features and stored in the model.  After
each epoch the BatchNorm statistics are re-estimated on a few training batches
(:func:`recalibrate_batchnorm`), then the loss on the valid tracks (non-overlapping crops, no
shuffling) decides early stopping (``patience`` epochs without improvement); the model with
the best valid loss is returned.  Every random draw comes from ``seed``: two runs with the
same inputs and seed give identical weights.

Label-preserving augmentations, off by default (the paper has none) and on in the demo's
``luigi.cfg``: a random gain (``gain_db``) and a random pitch shift of whole order-1 rows
(``shift_rows``).  On the demo corpus of 24 train tracks of 20-40 s they raised the held-out
ROC AUC of drums/bass/vocals from about 0.87 to about 0.92 at the same budget.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from classifiers.detector import DetectorConfig, SilentSourceDetector, n_output_frames
from pipeline.corpora.labels import silent_labels
from pipeline.features.scattering import fit_normalisation, scattering_layout
from pipeline.progress import progress_bar
from pipeline.sources import FRAMES_PER_HOP, FRAMES_PER_WINDOW, HOP_S, LABEL_SILENT_DB, SOURCES, WINDOW_S
from pipeline.storage import checkpoints

log = logging.getLogger(__name__)

MAX_FRAME_MISMATCH = 1  # label windows vs detector frames (resampling can round one away)
PAPER_LR = 5e-4  # Adam learning rate of the paper's detector
PAPER_BATCH_SIZE = 64  # crops per step in the paper
PAPER_CROP_STRIDE_S = 0.5  # seconds between the starts of an epoch's crops, as in the paper
BN_BATCHES = 8  # training batches that re-estimate BatchNorm statistics after each epoch


@dataclass(frozen=True)
class DetectorTrainConfig:
    """Training hyper-parameters (paper: 40 epochs, batch 64, Adam lr 5e-4, -13 dB labels)."""

    epochs: int = 40
    batch_size: int = PAPER_BATCH_SIZE
    lr: float = PAPER_LR
    crop_seconds: float = 5.0
    crop_stride_seconds: float = PAPER_CROP_STRIDE_S
    patience: int = 5  # epochs without a better valid loss before stopping
    silent_db: float = LABEL_SILENT_DB
    width: float = 1.0
    dropout: float = 0.18
    gain_db: float = 0.0  # random gain augmentation range in dB (0: off, as in the paper)
    shift_rows: int = 0  # random pitch-shift augmentation range in order-1 rows (1/8 octave each)
    num_threads: int | None = None  # torch intra-op threads during training (None: unchanged)

    def crop_windows(self) -> int:
        """Output frames per crop: the 0.64 s windows that fit in ``crop_seconds``."""
        return max(1, int(math.floor((self.crop_seconds - WINDOW_S) / HOP_S + 1e-6)) + 1)

    def stride_windows(self) -> int:
        return max(1, int(round(self.crop_stride_seconds / HOP_S)))

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(width=self.width, dropout=self.dropout)


@dataclass
class _Track:
    features: np.ndarray  # (7, 54, T) float32, un-normalised
    labels: np.ndarray  # (4, n) float32 in {0, 1}
    mask: np.ndarray  # (n,) float32: 1 where a label exists


def align_labels(volumes: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``volumes`` ``(4, n)`` to ``n_frames`` detector frames: ``(volumes', mask)``.

    Up to :data:`MAX_FRAME_MISMATCH` extra windows are dropped, missing ones masked out;
    a larger mismatch means features and labels come from different signals (ValueError).
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim != 2 or volumes.shape[0] != len(SOURCES):
        raise ValueError(f"volumes must be ({len(SOURCES)}, n_windows), got {volumes.shape}")
    if abs(volumes.shape[1] - n_frames) > MAX_FRAME_MISMATCH:
        raise ValueError(f"labels have {volumes.shape[1]} windows but the features give {n_frames} "
                         "detector frames; compute both from the same 16 kHz signal")
    out = np.full((len(SOURCES), n_frames), np.inf, dtype=np.float32)
    count = min(n_frames, volumes.shape[1])
    out[:, :count] = volumes[:, :count]
    mask = np.zeros(n_frames, dtype=np.float32)
    mask[:count] = 1.0
    return out, mask


def _prepare(pairs: Sequence[tuple[np.ndarray, np.ndarray]], silent_db: float) -> list[_Track]:
    tracks = []
    for feats, volumes in pairs:
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 3:
            raise ValueError(f"features must be (C, F, T), got {feats.shape}")
        aligned, mask = align_labels(volumes, n_output_frames(feats.shape[-1]))
        tracks.append(_Track(feats, silent_labels(aligned, silent_db) * mask, mask))
    return tracks


def _crops(tracks: list[_Track], crop: int, stride: int, rng: np.random.Generator | None) -> list[tuple[int, int]]:
    """``(track index, first window)`` of every crop; random offset per track if ``rng``."""
    crops = []
    for index, track in enumerate(tracks):
        windows = track.labels.shape[1]
        if windows <= crop:
            crops.append((index, 0))
            continue
        offset = int(rng.integers(0, min(stride, windows - crop + 1))) if rng is not None else 0
        crops.extend((index, start) for start in range(offset, windows - crop + 1, stride))
    return crops


def _batch(tracks: list[_Track], crops: list[tuple[int, int]], crop: int) -> tuple[torch.Tensor, ...]:
    """Features ``(B, 7, 54, 40 + 4 (crop - 1))``, labels ``(B, 4, crop)``, mask ``(B, crop)``."""
    frames = FRAMES_PER_WINDOW + FRAMES_PER_HOP * (crop - 1)
    first = tracks[crops[0][0]].features
    feats = np.zeros((len(crops), *first.shape[:2], frames), dtype=np.float32)
    labels = np.zeros((len(crops), len(SOURCES), crop), dtype=np.float32)
    mask = np.zeros((len(crops), crop), dtype=np.float32)
    for row, (index, start) in enumerate(crops):
        track = tracks[index]
        piece = track.features[..., start * FRAMES_PER_HOP: start * FRAMES_PER_HOP + frames]
        feats[row, ..., :piece.shape[-1]] = piece
        count = min(crop, track.labels.shape[1] - start)
        labels[row, :, :count] = track.labels[:, start:start + count]
        mask[row, :count] = track.mask[start:start + count]
    return torch.from_numpy(feats), torch.from_numpy(labels), torch.from_numpy(mask)


def random_gain(features: torch.Tensor, gain_db: float, rng: np.random.Generator) -> torch.Tensor:
    """Features ``(B, C, F, T)`` of each example's audio scaled by a gain uniform in +-``gain_db`` dB.

    Scattering is linear in the signal's amplitude, so with ``f = log1p(S / eps)`` a gain
    ``g`` gives ``log1p(g * expm1(f))`` exactly.  Relative volumes do not change.
    """
    gains = 10.0 ** (rng.uniform(-gain_db, gain_db, size=features.shape[0]) / 20.0)
    scale = torch.as_tensor(gains, dtype=features.dtype).view(-1, 1, 1, 1)
    return torch.log1p(torch.expm1(features) * scale)


def random_shift(features: torch.Tensor, max_rows: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each example's frequency rows ``(B, C, F, T)`` by a random ``-max_rows .. max_rows``.

    With Q = 8 filters per octave a shift of one row is about a 1/8-octave pitch shift of the
    whole mixture (exact for the constant-Q part of the filter bank), which leaves relative
    volumes unchanged.  Rows shifted in from outside are zero; order-2 paths that do not
    exist stay zero.
    """
    shifts = rng.integers(-max_rows, max_rows + 1, size=features.shape[0])
    out = torch.zeros_like(features)
    freqs = features.shape[2]
    for b, shift in enumerate(shifts):
        if shift >= 0:
            out[b, :, shift:] = features[b, :, :freqs - shift]
        else:
            out[b, :, :shift] = features[b, :, -shift:]
    present = torch.from_numpy(scattering_layout().present).to(features.dtype)[None, :, :, None]
    return out * present


def detector_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over sources of BCE-with-logits, mean over unmasked frames; shapes ``(B, 4, n)``, mask ``(B, n)``."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=1)
    return (bce * mask).sum() / mask.sum().clamp_min(1.0)


def recalibrate_batchnorm(model: SilentSourceDetector, batches: Iterable[torch.Tensor]) -> None:
    """Reset every BatchNorm's running statistics to their average over ``batches`` of features.

    With momentum 0.1 the running statistics need tens of steps to forget their initial
    values, so a model trained for a few hundred steps (the demo budget) evaluates badly;
    recomputing them ("precise BN") after each epoch makes eval mode match training.
    Only the BatchNorm layers run in train mode here (no dropout); nothing is learnt.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    try:
        with torch.no_grad():
            for feats in batches:
                model(feats)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def _evaluate(model: SilentSourceDetector, tracks: list[_Track], crop: int, batch_size: int) -> float:
    """Mean loss per frame over non-overlapping crops of ``tracks`` (eval mode)."""
    model.eval()
    crops = _crops(tracks, crop, crop, None)
    total, frames = 0.0, 0.0
    with torch.inference_mode():
        for first in range(0, len(crops), batch_size):
            feats, labels, mask = _batch(tracks, crops[first:first + batch_size], crop)
            count = float(mask.sum())
            total += float(detector_loss(model(feats), labels, mask)) * count
            frames += count
    return total / max(frames, 1.0)


def _train_epoch(model: SilentSourceDetector, optimizer: torch.optim.Optimizer, tracks: list[_Track],
                 crops: list[tuple[int, int]], order: np.ndarray, config: DetectorTrainConfig, rng: np.random.Generator,
                 desc: str, progress: bool) -> float:
    """One pass over ``crops`` in ``order``; returns the mean training loss per frame."""
    crop = config.crop_windows()
    model.train()
    total, frames = 0.0, 0.0
    bar = progress_bar(range(0, len(crops), config.batch_size), desc=desc, disable=not progress, leave=False)
    for first in bar:
        chosen = [crops[i] for i in order[first:first + config.batch_size]]
        if len(chosen) * crop < 2:
            continue  # BatchNorm needs two values per channel; skip a lone 1-frame crop
        feats, labels, mask = _batch(tracks, chosen, crop)
        if config.gain_db > 0:
            feats = random_gain(feats, config.gain_db, rng)
        if config.shift_rows > 0:
            feats = random_shift(feats, config.shift_rows, rng)
        loss = detector_loss(model(feats), labels, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        count = float(mask.sum())
        total += float(loss.detach()) * count
        frames += count
        bar.set_postfix(loss=f"{total / max(frames, 1.0):.4f}")
    return total / max(frames, 1.0)


class _DetectorRun:
    """One detector training, epoch by epoch (a :class:`pipeline.storage.checkpoints.EpochRun`):
    its state is what the next epoch depends on, so a resumed run ends with the same weights."""

    def __init__(self, train_tracks: list[_Track], valid_tracks: list[_Track], config: DetectorTrainConfig,
                 seed: int, callback: Callable[[dict], None] | None, progress: bool,
                 extra: Callable[[int], Sequence[tuple[np.ndarray, np.ndarray]]] | None = None) -> None:
        self.train_tracks, self.valid_tracks, self.config, self.seed = train_tracks, valid_tracks, config, seed
        self.callback, self.progress, self.extra = callback, progress, extra
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.model = SilentSourceDetector(config.detector_config())
        self.model.set_normalisation(*fit_normalisation(t.features for t in train_tracks))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.best_loss, self.best_state, self.since_best = math.inf, None, 0
        self.epoch, self.history = 0, []

    def finished(self) -> bool:
        stopped = bool(self.valid_tracks) and self.epoch > 0 and self.since_best >= self.config.patience
        return self.epoch >= self.config.epochs or stopped

    def train_epoch(self) -> None:
        config, crop = self.config, self.config.crop_windows()
        epoch = self.epoch + 1
        started = time.perf_counter()
        extra_tracks = _prepare(self.extra(epoch), config.silent_db) if self.extra is not None else []
        epoch_tracks = self.train_tracks + extra_tracks
        crops = _crops(epoch_tracks, crop, config.stride_windows(), self.rng)
        order = self.rng.permutation(len(crops))
        record = {"epoch": epoch, "train_loss": _train_epoch(
            self.model, self.optimizer, epoch_tracks, crops, order, config, self.rng,
            f"detector epoch {epoch}/{config.epochs}", self.progress)}
        if not math.isfinite(record["train_loss"]):
            raise FloatingPointError(f"detector training diverged at epoch {epoch} (loss is not finite)")
        calibration = [crops[i] for i in order[:config.batch_size * BN_BATCHES]]
        recalibrate_batchnorm(self.model, (_batch(epoch_tracks, calibration[i:i + config.batch_size], crop)[0]
                                           for i in range(0, len(calibration), config.batch_size)))
        record["valid_loss"] = (_evaluate(self.model, self.valid_tracks, crop, config.batch_size)
                                if self.valid_tracks else float("nan"))
        improved = self.best_state is None or not self.valid_tracks or record["valid_loss"] < self.best_loss
        if improved:
            self.best_loss, self.best_state, self.since_best = (
                record["valid_loss"], copy.deepcopy(self.model.state_dict()), 0)
        else:
            self.since_best += 1
        record["best"] = improved
        record["extra_tracks"] = len(extra_tracks)
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        self.epoch = epoch
        log.info("detector epoch %d: %s", epoch, record)
        if self.callback is not None:
            self.callback(record)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed, "train": _significant(self.config),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "best_loss": self.best_loss, "best_state": self.best_state, "since_best": self.since_best,
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["train"] != _significant(self.config):
            raise ValueError("detector checkpoint was made with another configuration or seed; "
                             "use another output folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.best_loss, self.best_state, self.since_best = state["best_loss"], state["best_state"], state["since_best"]
        self.epoch, self.history = int(state["epoch"]), list(state["history"])


def _significant(config: DetectorTrainConfig) -> dict:
    """The fields of ``config`` that change the weights (all but the thread count)."""
    return {k: v for k, v in train_config_dict(config).items() if k != "num_threads"}


def train_detector(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    valid: Sequence[tuple[np.ndarray, np.ndarray]],
    config: DetectorTrainConfig,
    seed: int,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    extra: Callable[[int], Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> tuple[SilentSourceDetector, list[dict]]:
    """Train a detector on ``(features (7, 54, T), volumes (4, n_windows) dB)`` pairs.

    ``extra(epoch)`` (1-based), when given, returns more pairs that epoch trains on besides
    ``train`` (the remixes of :mod:`classifiers.remix`); the normalisation is fitted on ``train``.
    Returns the model (best valid loss; the last epoch if ``valid`` is empty), in eval mode
    with the training normalisation inside, and the history: one dict per epoch with
    ``epoch, train_loss, valid_loss, seconds, best, extra_tracks``.  ``callback`` gets each dict
    as it is made; each is also logged at INFO level.  ``checkpoint``: a ``checkpoint.pt`` written
    after every epoch and resumed from when it exists (:func:`pipeline.storage.checkpoints.train_epochs`);
    ``extra(epoch)`` must depend on the epoch alone, so that a resumed run trains on the same pairs.
    """
    if not train:
        raise ValueError("train_detector needs at least one training track")
    train_tracks = _prepare(train, config.silent_db)
    valid_tracks = _prepare(valid, config.silent_db)
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            run = _DetectorRun(train_tracks, valid_tracks, config, seed, callback, progress, extra)
            checkpoints.train_epochs(run, checkpoint)
            model = run.model
            model.load_state_dict(run.best_state)
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    return model, run.history


def train_config_dict(config: DetectorTrainConfig) -> dict:
    """Plain-dict form of a :class:`DetectorTrainConfig` (for checkpoints and manifests)."""
    return asdict(config)
