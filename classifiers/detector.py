"""The silent-source detector of the paper's appendix A, and its checkpoints.

Input: un-normalised scattering features ``(batch, 7, 54, T)`` (``pipeline.features.scattering``, one
frame per 16 ms).  The per-``(C, F)`` normalisation mean/std fitted on the training features
(``pipeline.features.scattering.fit_normalisation``) are buffers of the model, applied first, so a
checkpoint is self-contained.  Output: logits ``(batch, 4, n_frames)`` of "source i is
silent" (sources in ``pipeline.sources.SOURCES`` order), ``n_frames = floor((T - 40) / 4) + 1``.

Layers (``w`` = width multiplier; 1.0 = the paper's channel counts)::

    BN; Conv2d 7->128w k5; Conv2d 128w->128w k5; Conv2d 128w->256w k1; MaxPool2d(5, 2); BN;
    Conv2d 256w->256w k5 (x2); Conv2d 256w->512w k1; MaxPool2d(5, 2); BN;
    Conv2d 512w->1024w kernel (F_rest, 1)          (collapses frequency: F 54 -> 5 -> 1)
    BiLSTM hidden 1024w, 2 layers, dropout 0.18;
    Conv1d 2048w->1024w k1 + BN + ReLU; Conv1d 1024w->4 k1.

ReLU follows every conv of the stack.  Nothing is padded, in frequency or in time: the
conv/pool stack maps scattering frames ``4k .. 4k + 36`` to its frame ``k`` (stride 4 frames
= 64 ms), so output frame ``k`` is window ``k`` of the shared grid (samples
``[1024 k, 1024 k + 10240)`` at 16 kHz, i.e. frames ``4k .. 4k + 39``); the BiLSTM then
sees the whole sequence.  The stack alone would give ``floor((T - 37) / 4) + 1`` frames; the
last one is dropped when its window is incomplete, so the count is that of the label grid.
Inputs shorter than one window (``T < 40``) are padded with zeros (digital silence,
``log1p(0)``) to 40 frames and give one frame.  The paper's frequency kernel of 14 reflects
a different F; with kymatio 0.3.0's F = 54 the remaining frequency size is 5.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.sources import FRAMES_PER_HOP, FRAMES_PER_WINDOW
from pipeline.storage import checkpoints

RECEPTIVE_FRAMES = 37  # scattering frames seen by one output frame of the conv stack


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture of :class:`SilentSourceDetector` (stored in checkpoints as a dict)."""

    width: float = 1.0  # multiplies every hidden width (128/256/512/1024 and the LSTM)
    dropout: float = 0.18  # between the two LSTM layers
    in_channels: int = 7  # C of the scattering layout
    in_freqs: int = 54  # F of the scattering layout
    n_sources: int = 4
    kernel: int = 5
    pool: int = 5
    pool_stride: int = 2

    def channels(self, base: int) -> int:
        """Hidden width for a paper width of ``base`` channels."""
        return max(1, int(round(base * self.width)))

    def remaining_freqs(self) -> int:
        """Frequency size left after the conv/pool stack (5 for F = 54)."""
        size = self.in_freqs
        for _ in range(2):
            size = size - 2 * (self.kernel - 1)
            size = (size - self.pool) // self.pool_stride + 1
        if size < 1:
            raise ValueError(f"in_freqs={self.in_freqs} is too small for the conv/pool stack")
        return size


def n_output_frames(n_feature_frames: int) -> int:
    """Detector frames for ``T`` scattering frames: ``floor((T - 40) / 4) + 1``, at least 1."""
    if n_feature_frames <= 0:
        return 0
    return max(1, (n_feature_frames - FRAMES_PER_WINDOW) // FRAMES_PER_HOP + 1)


class SilentSourceDetector(nn.Module):
    """``forward(features (B, 7, 54, T)) -> logits (B, 4, n_output_frames(T))``."""

    def __init__(self, config: DetectorConfig = DetectorConfig()):
        super().__init__()
        self.config = config
        c = config
        c1, c2, c3, c4 = c.channels(128), c.channels(256), c.channels(512), c.channels(1024)
        hidden = c.channels(1024)
        k = c.kernel

        def relu() -> nn.ReLU:
            # in place: the same values and gradients, one pass over each conv output less
            # (about 9 % of the conv stack's time at width 1.0 on 2 cores)
            return nn.ReLU(inplace=True)

        self.register_buffer("feature_mean", torch.zeros(c.in_channels, c.in_freqs, 1))
        self.register_buffer("feature_std", torch.ones(c.in_channels, c.in_freqs, 1))
        self.frontend = nn.Sequential(
            nn.BatchNorm2d(c.in_channels),
            nn.Conv2d(c.in_channels, c1, k), relu(),
            nn.Conv2d(c1, c1, k), relu(),
            nn.Conv2d(c1, c2, 1), relu(),
            nn.MaxPool2d(c.pool, c.pool_stride),
            nn.BatchNorm2d(c2),
            nn.Conv2d(c2, c2, k), relu(),
            nn.Conv2d(c2, c2, k), relu(),
            nn.Conv2d(c2, c3, 1), relu(),
            nn.MaxPool2d(c.pool, c.pool_stride),
            nn.BatchNorm2d(c3),
            nn.Conv2d(c3, c4, (c.remaining_freqs(), 1)), relu(),
        )
        self.lstm = nn.LSTM(c4, hidden, num_layers=2, dropout=c.dropout, bidirectional=True,
                            batch_first=True)
        self.head = nn.Sequential(
            nn.Conv1d(2 * hidden, c4, 1), nn.BatchNorm1d(c4), nn.ReLU(),
            nn.Conv1d(c4, c.n_sources, 1),
        )

    def set_normalisation(self, mean, std) -> None:
        """Store the feature mean/std ``(C, F, 1)`` (from ``fit_normalisation``) in the model."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(self.feature_mean.shape)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(self.feature_std.shape)
        if not torch.all(std > 0):
            raise ValueError("normalisation std must be > 0")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Conv stack: ``(B, 7, 54, T)`` -> ``(B, 1024w, n_output_frames(T))``.

        Output frame ``k`` depends only on input frames ``4k .. 4k + 36``, so a time slice
        of the input starting at a multiple of 4 frames gives the matching output slice.
        """
        if features.dim() != 4 or features.shape[1:3] != self.feature_mean.shape[:2]:
            raise ValueError(f"expected features (batch, {self.config.in_channels}, {self.config.in_freqs}, T), "
                             f"got {tuple(features.shape)}")
        frames = features.shape[-1]
        if frames == 0:
            raise ValueError("features have no frames")
        if frames < FRAMES_PER_WINDOW:
            features = F.pad(features, (0, FRAMES_PER_WINDOW - frames))
        x = (features - self.feature_mean) / self.feature_std
        # channels-last runs the CPU (oneDNN) convolutions and poolings about 1.4x faster
        # (B, 1024w, floor((T - 37) / 4) + 1)
        x = self.frontend(x.contiguous(memory_format=torch.channels_last)).squeeze(2)
        return x[..., : n_output_frames(frames)]

    def sequence(self, embedded: torch.Tensor) -> torch.Tensor:
        """BiLSTM and head: ``(B, 1024w, n)`` -> logits ``(B, 4, n)``."""
        x, _ = self.lstm(embedded.transpose(1, 2))
        return self.head(x.transpose(1, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.sequence(self.embed(features))


def save_checkpoint(
    path: str | os.PathLike, model: SilentSourceDetector, config: DetectorConfig, extra: dict | None = None
) -> None:
    """Write ``{config, state_dict (with normalisation), extra}`` atomically
    (:func:`pipeline.storage.checkpoints.detector_fields`).

    ``extra`` must hold plain Python values or tensors (loadable with ``weights_only=True``).
    """
    checkpoints.save(path, checkpoints.detector_fields(dataclasses.asdict(config), model.state_dict(), extra or {}))


def load_checkpoint(path: str | os.PathLike) -> tuple[SilentSourceDetector, DetectorConfig, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`; the model is in eval mode on CPU."""
    config_values, state, extra = checkpoints.detector_parts(checkpoints.read(path), path)
    config = DetectorConfig(**config_values)
    model = SilentSourceDetector(config)
    model.load_state_dict(state)
    model.eval()
    return model, config, extra
