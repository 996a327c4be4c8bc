"""TasNet-BLSTM, the separator of the frugal paper (``papers/frugal-tasnet-extra-data.txt``, 2.4).

Registered as ``tasnet``.  ``(B, audio_channels, n)`` -> ``(B, sources, audio_channels, n)``:

1. encoder: Conv1d(audio_channels, N, L, stride H, no bias) + ReLU, a learned filterbank of
   N = 500 filters on frames of L = 220 samples (5 ms at 44.1 kHz): ``w`` ``(B, N, F)``;
2. separator: LayerNorm over the N filters of each frame, 4 BiLSTM layers of 500 cells per
   direction, Linear(2 x 500, sources x N) + sigmoid: one mask ``m_s`` ``(B, N, F)`` per source;
3. decoder: ConvTranspose1d(N, audio_channels, L, stride H, no bias), shared by the sources,
   applied to each ``w * m_s`` (overlap-add of learned basis signals).

Hop: H = 110 samples (50 % overlap).  The paper gives only the frame size; the original
TasNet cut non-overlapping frames, Conv-TasNet and the TasNet-BLSTM baselines since then use
half-overlapping ones, whose overlap-add has no frame-edge discontinuities; it doubles the
BiLSTM's steps (401 frames per second).  ``hop`` is a config field.

Stereo: the channels are encoded jointly (each filter spans both channels, 2 x 220 weights)
and the decoder synthesises both channels of each source from its masked representation, so
the masks can use the correlation between channels, which the paper (2.3.3) argues a model
of music should keep.  Mono models have ``audio_channels = 1``.

Where it differs from the original TasNet: ReLU encoder instead of the gated one and a
LayerNorm instead of the per-frame L2 normalisation of the input (as in Conv-TasNet);
sigmoid masks (``mask = "softmax"`` gives masks summing to one over the sources).

Mixture consistency (``consistency = True``, off by default as in the paper): the estimates
are projected so that they sum to the mixture, ``s_i <- s_i + (m - sum_j s_j) / S``
(Wisdom et al. 2019, "Differentiable consistency constraints for improved deep speech
enhancement").  SI-SNR leaves each estimate's gain free, and museval's v4 SDR is not
scale-invariant (an estimate at 0.3x or 3x its true gain loses 7 or 17 dB on a 10 dB one),
so without it the SDR of an SI-SNR-trained TasNet depends on the gain each run happens to
settle at; with it a wrong gain leaks the other sources into the estimate, which SI-SNR
penalises (docs/results.md has the measurement).

Valid length: ``n >= L`` with ``(n - L) % H == 0`` (every sample inside a frame, the
transposed convolution rebuilds exactly ``n`` samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.separation.contract import ModelConfig, Separator
from pipeline.sources import SOURCES

MASKS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class TasNetConfig(ModelConfig):
    """Hyper-parameters of :class:`TasNet`; defaults are the frugal paper's (section 2.4).

    ``frame`` and ``hop`` in samples; ``hidden``: LSTM cells per layer and direction.
    """

    sources: int = len(SOURCES)
    audio_channels: int = 2
    filters: int = 500  # N
    frame: int = 220  # L
    hop: int = 110  # H
    lstm_layers: int = 4
    hidden: int = 500
    mask: str = "sigmoid"
    sample_rate: int = 44_100
    consistency: bool = False  # mixture consistency projection of the estimates (module docstring)

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {self.mask!r}")
        if min(self.filters, self.frame, self.hop, self.lstm_layers, self.hidden) < 1:
            raise ValueError("filters, frame, hop, lstm_layers and hidden must be >= 1")
        if self.hop > self.frame:
            raise ValueError(f"hop {self.hop} > frame {self.frame} would leave samples out of every frame")


class TasNet(Separator):
    """TasNet-BLSTM; ``forward``: ``(B, C, n)`` -> ``(B, sources, C, n)``, ``n`` a valid length."""

    name = "tasnet"
    config_class = TasNetConfig
    encoder_modules = ("encoder",)  # the learned filterbank; embedding: frame mean of its ReLU output (B, N)

    def __init__(self, config: TasNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or TasNetConfig()
        self.encoder = nn.Conv1d(cfg.audio_channels, cfg.filters, cfg.frame, stride=cfg.hop, bias=False)
        self.norm = nn.LayerNorm(cfg.filters)
        self.lstm = nn.LSTM(cfg.filters, cfg.hidden, num_layers=cfg.lstm_layers, bidirectional=True,
                            batch_first=True)
        self.mask = nn.Linear(2 * cfg.hidden, cfg.sources * cfg.filters)
        self.decoder = nn.ConvTranspose1d(cfg.filters, cfg.audio_channels, cfg.frame, stride=cfg.hop, bias=False)

    @property
    def mixture_consistent(self) -> bool:
        return bool(self.config.consistency)

    def valid_length(self, length: int) -> int:
        """Smallest ``n >= length`` with ``n >= L`` and ``(n - L) % H == 0`` (samples)."""
        if length < 1:
            raise ValueError(f"length must be >= 1 sample, got {length}")
        cfg = self.config
        return cfg.frame + cfg.hop * math.ceil(max(0, length - cfg.frame) / cfg.hop)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """The filterbank's ReLU output ``w`` ``(B, N, frames)`` of ``(B, audio_channels, n)``."""
        self.check_input(wav)
        return F.relu(self.encoder(wav))

    def decode(self, masked: torch.Tensor) -> torch.Tensor:
        """The decoder, ``self.decoder``'s transposed convolution, of ``(B, N, frames)``:
        ``(B, audio_channels, L + H (frames - 1))``.

        With half-overlapping frames (``L = 2 H``, the default) it is computed as one matrix
        product (each frame's basis signal) and the sum of each frame's second half with the
        next frame's first half: the same values to rounding, and a whole training step 1.04-1.05x
        faster on a CPU than with ``conv_transpose1d`` (``benchmarks/tasnet_decoder.py``).  Other
        hops use the transposed convolution.
        """
        cfg = self.config
        if cfg.frame != 2 * cfg.hop:
            return self.decoder(masked)
        batch, n, frames = masked.shape
        basis = torch.matmul(masked.transpose(1, 2), self.decoder.weight.reshape(n, -1))  # (B, F, C x L)
        halves = basis.view(batch, frames, cfg.audio_channels, 2, cfg.hop).permute(0, 2, 3, 1, 4)  # (B, C, 2, F, H)
        first, second = halves[:, :, 0], halves[:, :, 1]
        out = torch.cat([first[:, :, :1], first[:, :, 1:] + second[:, :, :-1], second[:, :, -1:]], dim=2)
        return out.reshape(batch, cfg.audio_channels, cfg.hop * (frames + 1))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        self.check_valid_input(mix)
        length = mix.shape[-1]
        w = self.encode(mix)  # (B, N, F)
        batch, n, frames = w.shape
        y, _ = self.lstm(self.norm(w.transpose(1, 2)))  # (B, F, 2H)
        logits = self.mask(y).view(batch, frames, cfg.sources, n)
        masks = torch.sigmoid(logits) if cfg.mask == "sigmoid" else torch.softmax(logits, dim=2)
        masked = w[:, None] * masks.permute(0, 2, 3, 1)  # (B, S, N, F)
        out = self.decode(masked.reshape(batch * cfg.sources, n, frames))
        out = out.view(batch, cfg.sources, cfg.audio_channels, length)
        if cfg.consistency:  # estimates that sum to the mixture: share the residual equally
            out = out + (mix - out.sum(dim=1))[:, None] / cfg.sources
        return out
