"""Demucs, the waveform U-Net separator of the paper (section 3).

Registered as ``demucs`` (:mod:`pipeline.separation.registry`).  Input: a mixture
``(batch, audio_channels, samples)``; output: one waveform per source,
``(batch, sources, audio_channels, samples)``, same length as the input.  The input length
must be a *valid length* (:meth:`Demucs.valid_length`): one that every strided encoder
convolution consumes without a remainder, so the decoder rebuilds exactly the encoder's
lengths and every U-Net skip lines up.  :func:`pipeline.separation.contract.separate` pads
any length to a valid one (zeros, centred) and trims the output back.

Layers (C_0 = audio_channels, C_i = round(C_1 * growth^(i-1)), i = 1..L):

- encoder i: Conv1d(C_{i-1}, C_i, K, S) + ReLU, Conv1d(C_i, 2 C_i, 1) + GLU;
- BiLSTM (``lstm_layers`` layers, hidden C_L), then Conv1d(2 C_L, C_L, 1) + ReLU;
- decoder i = L..1, ``decoder="paper"`` (default, the paper's text):
  Conv1d(C_i, C_i, 3, padding 1) + ReLU, concatenate the encoder output e_i,
  Conv1d(2 C_i, 2 C_i, 1) + GLU, ConvTranspose1d(C_i, C_{i-1}, K, S) + ReLU;
- decoder ``"additive"`` (facebookresearch/demucs, 2019): add e_i,
  Conv1d(C_i, 2 C_i, context, padding (context-1)/2) + GLU, ConvTranspose1d + ReLU;
- the last decoder layer outputs ``sources * audio_channels`` channels with no activation.

The context convolutions are zero-padded ("same" length); the published code left them
unpadded and centre-trimmed the skips instead, and followed its BiLSTM by a Linear layer
without ReLU: that model is ``demucs2019`` (:mod:`pipeline.separation.demucs2019`).
Everything else follows the paper.

Weight rescaling (paper, "Weights rescaling"): every Conv1d / ConvTranspose1d is wrapped in
:class:`Rescaled`, which stores ``w' = w / sqrt(alpha)`` and ``b' = b / sqrt(alpha)`` with
``alpha = std(w) / a`` and multiplies the layer's output by the fixed buffer ``sqrt(alpha)``.
The layer computes the same function at init (``sqrt(alpha) (w' * x + b') = w * x + b``),
the stored weights' std becomes ``sqrt(std(w) * a)`` and Adam's per-coordinate updates act
on ``w'``: an equalised learning rate per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.separation.contract import ModelConfig, Separator
from pipeline.sources import SOURCES

DECODERS = ("paper", "additive")


@dataclass(frozen=True)
class DemucsConfig(ModelConfig):
    """Hyper-parameters of :class:`Demucs`; defaults are the paper's (C_1 = 48, L = 6).

    ``sample_rate`` (Hz) is metadata: the rate the model is trained and applied at.
    ``rescale`` is the reference scale ``a`` of the weight rescaling (``None``: off).
    """

    sources: int = len(SOURCES)
    audio_channels: int = 2
    channels: int = 48  # C_1
    depth: int = 6  # L
    growth: float = 2.0
    kernel_size: int = 8  # K
    stride: int = 4  # S
    context: int = 3  # kernel of the decoder's stride-1 convolution
    lstm_layers: int = 2
    rescale: float | None = 0.1  # a
    decoder: str = "paper"
    sample_rate: int = 44_100

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.depth < 1 or self.channels < 1 or self.lstm_layers < 0:
            raise ValueError("depth and channels must be >= 1 and lstm_layers >= 0")
        if self.context % 2 != 1:
            raise ValueError(f"context must be odd so the padded conv keeps the length, got {self.context}")
        if self.kernel_size < self.stride:
            raise ValueError("kernel_size must be >= stride")

    def layer_channels(self) -> list[int]:
        """``[C_0, C_1, ..., C_L]``."""
        return [self.audio_channels] + [round(self.channels * self.growth ** i) for i in range(self.depth)]


class Rescaled(nn.Module):
    """A convolution whose output is multiplied by a fixed ``scale`` buffer.

    ``rescale_`` sets ``scale = sqrt(std(w) / a)`` and divides weight and bias by it, so the
    module's function is unchanged while its stored weights get std ``sqrt(std(w) * a)``.
    """

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d, reference: float | None) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("scale", torch.ones(()))
        if reference is not None:
            self.rescale_(reference)

    @torch.no_grad()
    def rescale_(self, reference: float) -> None:
        std = self.conv.weight.std()
        scale = torch.sqrt(std / reference)
        self.conv.weight.div_(scale)
        if self.conv.bias is not None:
            self.conv.bias.div_(scale)
        self.scale.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


class _BLSTM(nn.Module):
    """BiLSTM over time then Conv1d(2H, H, 1) + ReLU; ``(B, H, T) -> (B, H, T)``."""

    def __init__(self, dim: int, layers: int, reference: float | None) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, bidirectional=True)
        self.linear = Rescaled(nn.Conv1d(2 * dim, dim, 1), reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x.permute(2, 0, 1))  # (T, B, 2H)
        return F.relu(self.linear(y.permute(1, 2, 0)))


class _Encoder(nn.Module):
    def __init__(self, chin: int, chout: int, kernel: int, stride: int, reference: float | None) -> None:
        super().__init__()
        self.conv = Rescaled(nn.Conv1d(chin, chout, kernel, stride), reference)
        self.gate = Rescaled(nn.Conv1d(chout, 2 * chout, 1), reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.gate(F.relu(self.conv(x))), dim=1)


class _Decoder(nn.Module):
    """One decoder layer; ``(B, C_i, T)`` and skip ``(B, C_i, T)`` -> ``(B, C_{i-1}, (T-1) S + K)``."""

    def __init__(self, chin: int, chout: int, cfg: DemucsConfig, last: bool) -> None:
        super().__init__()
        ref, pad = cfg.rescale, (cfg.context - 1) // 2
        self.additive = cfg.decoder == "additive"
        if self.additive:
            self.context = Rescaled(nn.Conv1d(chin, 2 * chin, cfg.context, padding=pad), ref)
        else:
            self.context = Rescaled(nn.Conv1d(chin, chin, cfg.context, padding=pad), ref)
            self.gate = Rescaled(nn.Conv1d(2 * chin, 2 * chin, 1), ref)
        self.up = Rescaled(nn.ConvTranspose1d(chin, chout, cfg.kernel_size, cfg.stride), ref)
        self.last = last

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.additive:
            x = F.glu(self.context(x + skip), dim=1)
        else:
            x = F.relu(self.context(x))
            x = F.glu(self.gate(torch.cat([x, skip], dim=1)), dim=1)
        x = self.up(x)
        return x if self.last else F.relu(x)


class Demucs(Separator):
    """The separator; ``forward``: ``(B, audio_channels, n)`` -> ``(B, sources, audio_channels, n)``.

    ``n`` must equal ``valid_length(n)``; use :func:`~pipeline.separation.contract.separate`
    for any other length.
    """

    name = "demucs"
    config_class = DemucsConfig
    encoder_modules = ("encoder",)  # the L encoder layers; embedding: time mean of the deepest (B, C_L)

    def __init__(self, config: DemucsConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DemucsConfig()
        chans = cfg.layer_channels()
        ref = cfg.rescale
        self.encoder = nn.ModuleList(
            _Encoder(chans[i], chans[i + 1], cfg.kernel_size, cfg.stride, ref) for i in range(cfg.depth))
        self.lstm = _BLSTM(chans[-1], cfg.lstm_layers, ref) if cfg.lstm_layers > 0 else None
        outs = [cfg.sources * cfg.audio_channels] + chans[1:-1]
        self.decoder = nn.ModuleList(
            _Decoder(chans[i + 1], outs[i], cfg, last=(i == 0)) for i in reversed(range(cfg.depth)))

    def valid_length(self, length: int) -> int:
        """Smallest length >= ``length`` (samples) the model maps to the same length."""
        return valid_length(self.config, length)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """The deepest encoder layer's output ``(B, C_L, frames)`` of ``(B, audio_channels, n)``."""
        self.check_input(wav)
        for encode in self.encoder:
            wav = encode(wav)
        return wav

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        self.check_valid_input(mix)
        x, skips = mix, []
        for encode in self.encoder:
            x = encode(x)
            skips.append(x)
        if self.lstm is not None:
            x = self.lstm(x)
        for decode in self.decoder:
            x = decode(x, skips.pop())
        return x.view(x.shape[0], cfg.sources, cfg.audio_channels, x.shape[-1])


def valid_length(config: DemucsConfig, length: int) -> int:
    """Smallest ``n >= length`` with ``(l_{i-1} - K) % S == 0`` at every encoder layer (samples)."""
    if length < 1:
        raise ValueError(f"length must be >= 1 sample, got {length}")
    k, s = config.kernel_size, config.stride
    n = length
    for _ in range(config.depth):
        n = max(1, math.ceil((n - k) / s) + 1)
    for _ in range(config.depth):
        n = (n - 1) * s + k
    return int(n)
