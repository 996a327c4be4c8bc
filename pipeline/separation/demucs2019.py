"""Demucs exactly as published in 2019: facebookresearch/demucs at commit 7cf5c60.

Registered as ``demucs2019``.  The structure of that code's ``demucs/model.py`` (class
``Demucs`` with ``glu=True, rewrite=True, upsample=False``, its defaults), which differs
from the paper's text (:mod:`pipeline.separation.demucs`):

- encoder i: Conv1d(C_{i-1}, C_i, K, S) + ReLU, Conv1d(C_i, 2 C_i, 1) + GLU, with
  ``C_i = int(growth * C_{i-1})`` from ``C_1 = channels``;
- BiLSTM (``lstm_layers``, hidden C_L) followed by a Linear(2 C_L, C_L) *without* ReLU;
- decoder i = L..1: add the encoder output e_i, centre-trimmed to the decoder's length,
  then an *unpadded* Conv1d(C_i, 2 C_i, context) + GLU, ConvTranspose1d(C_i, C_{i-1}, K, S)
  + ReLU (the last layer outputs ``sources * audio_channels`` channels, no activation);
- weight rescaling at initialisation only: every Conv1d / ConvTranspose1d's weight and
  bias are divided by ``sqrt(std(w) / a)`` and nothing multiplies the output back, so the
  initial function changes (the paper's :class:`~pipeline.separation.demucs.Rescaled`
  keeps it); the Linear and LSTM are not rescaled.

Lengths: each unpadded context convolution removes ``context - 1`` samples, so the output
is shorter than the input and centred on it: an input of 4692 samples gives 4012 (C_1 = 6,
L = 4).  :meth:`Demucs2019.valid_length` is that code's ``valid_length``: the input length
whose output covers ``n`` samples (4000 -> 4692), reproduced formula for formula, including
its answer for inputs so short that the deepest context convolution gets fewer than
``context`` frames (1 -> 852 there); :meth:`~Demucs2019.forward` refuses such inputs.

Modules are built in that code's order, so ``torch.manual_seed(s)`` then
``Demucs2019(config)`` draws the same initial weights as that code does.
:func:`convert_state_dict` maps that code's parameter names to this module's and
:func:`config_from_2019` its constructor arguments to a :class:`Demucs2019Config`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.separation.contract import ModelConfig, Separator, center_trim
from pipeline.sources import SOURCES


@dataclass(frozen=True)
class Demucs2019Config(ModelConfig):
    """Hyper-parameters of :class:`Demucs2019`; defaults are the 2019 code's command line
    (``--channels 100``, depth 6, a = 0.1).  ``sample_rate`` (Hz) is metadata."""

    sources: int = len(SOURCES)
    audio_channels: int = 2
    channels: int = 100  # C_1
    depth: int = 6
    growth: float = 2.0
    kernel_size: int = 8
    stride: int = 4
    context: int = 3
    lstm_layers: int = 2
    rescale: float | None = 0.1
    sample_rate: int = 44_100

    def __post_init__(self) -> None:
        if self.depth < 1 or self.channels < 1 or self.lstm_layers < 0 or self.context < 1:
            raise ValueError("depth, channels and context must be >= 1 and lstm_layers >= 0")
        if self.kernel_size < self.stride:
            raise ValueError("kernel_size must be >= stride")

    def layer_channels(self) -> list[int]:
        """``[C_0, C_1, ..., C_L]`` as that code computes them (``int(growth * C)``)."""
        chans, c = [self.audio_channels], self.channels
        for _ in range(self.depth):
            chans.append(c)
            c = int(self.growth * c)
        return chans


class _Encoder(nn.Module):
    def __init__(self, chin: int, chout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(chin, chout, kernel, stride)
        self.rewrite = nn.Conv1d(chout, 2 * chout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.rewrite(F.relu(self.conv(x))), dim=1)


class _Decoder(nn.Module):
    """``(B, C_i, T)`` (skip already added) -> ``(B, C_{i-1}, (T - context) S + K)``."""

    def __init__(self, chin: int, chout: int, cfg: Demucs2019Config, last: bool) -> None:
        super().__init__()
        self.context = nn.Conv1d(chin, 2 * chin, cfg.context)
        self.up = nn.ConvTranspose1d(chin, chout, cfg.kernel_size, cfg.stride)
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(F.glu(self.context(x), dim=1))
        return x if self.last else F.relu(x)


class _BLSTM(nn.Module):
    """BiLSTM over time then Linear(2H, H), no activation; ``(B, H, T) -> (B, H, T)``."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x.permute(2, 0, 1))  # (T, B, 2H)
        return self.linear(y).permute(1, 2, 0)


@torch.no_grad()
def rescale_module(module: nn.Module, reference: float) -> None:
    """That code's ``rescale_module``: divide each conv's weight and bias by ``sqrt(std(w) / a)``."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)):
            scale = (sub.weight.std() / reference) ** 0.5
            sub.weight.div_(scale)
            if sub.bias is not None:
                sub.bias.div_(scale)


class Demucs2019(Separator):
    """``forward``: ``(B, audio_channels, n)`` -> ``(B, sources, audio_channels, output_length(n))``."""

    name = "demucs2019"
    config_class = Demucs2019Config
    encoder_modules = ("encoder",)  # the L encoder layers; embedding: time mean of the deepest (B, C_L)

    def __init__(self, config: Demucs2019Config | None = None) -> None:
        super().__init__()
        self.config = cfg = config or Demucs2019Config()
        chans = cfg.layer_channels()
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(cfg.depth):  # the 2019 code's construction order (same random draws)
            self.encoder.append(_Encoder(chans[i], chans[i + 1], cfg.kernel_size, cfg.stride))
            out = chans[i] if i > 0 else cfg.sources * cfg.audio_channels
            self.decoder.insert(0, _Decoder(chans[i + 1], out, cfg, last=(i == 0)))
        self.lstm = _BLSTM(chans[-1], cfg.lstm_layers) if cfg.lstm_layers else None
        if cfg.rescale:
            rescale_module(self, cfg.rescale)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """The deepest encoder layer's output ``(B, C_L, frames)`` of ``(B, audio_channels, n)``."""
        self.check_input(wav)
        for encode in self.encoder:
            wav = encode(wav)
        return wav

    def valid_length(self, length: int) -> int:
        """That code's ``valid_length``: the input length whose output covers ``length`` samples."""
        cfg = self.config
        if length < 1:
            raise ValueError(f"length must be >= 1 sample, got {length}")
        n = length
        for _ in range(cfg.depth):
            n = math.ceil((n - cfg.kernel_size) / cfg.stride) + 1 + cfg.context - 1
        for _ in range(cfg.depth):
            n = (n - 1) * cfg.stride + cfg.kernel_size
        return int(n)

    def _lengths(self, length: int) -> tuple[list[int], int]:
        """Encoder output lengths and the output length for an input of ``length`` (0 if too short)."""
        cfg, enc, n = self.config, [], length
        for _ in range(cfg.depth):
            n = (n - cfg.kernel_size) // cfg.stride + 1 if n >= cfg.kernel_size else 0
            enc.append(n)
        for _ in range(cfg.depth):
            n = (n - cfg.context) * cfg.stride + cfg.kernel_size if n >= cfg.context else 0
        return enc, max(n, 0)

    def output_length(self, length: int) -> int:
        return self._lengths(length)[1]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        self.check_input(mix)
        if self.output_length(mix.shape[-1]) < 1:
            raise ValueError(f"{mix.shape[-1]} samples are too short for demucs2019 (depth {cfg.depth}): "
                             f"use at least valid_length(1) + stride ** depth samples")
        x, saved = mix, []
        for encode in self.encoder:
            x = encode(x)
            saved.append(x)
        if self.lstm is not None:
            x = self.lstm(x)
        for decode in self.decoder:
            x = decode(x + center_trim(saved.pop(), x.shape[-1]))
        return x.view(x.shape[0], cfg.sources, cfg.audio_channels, x.shape[-1])


_RENAMES = ((r"^encoder\.(\d+)\.0\.", r"encoder.\1.conv."), (r"^encoder\.(\d+)\.2\.", r"encoder.\1.rewrite."),
            (r"^decoder\.(\d+)\.0\.", r"decoder.\1.context."), (r"^decoder\.(\d+)\.2\.", r"decoder.\1.up."),
            (r"^lstm\.(lstm|linear)\.", r"lstm.\1."))


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """That code's parameter names (``encoder.<i>.0``, ``encoder.<i>.2``, ``decoder.<i>.0``,
    ``decoder.<i>.2``, ``lstm.lstm.*``, ``lstm.linear.*``) -> :class:`Demucs2019`'s."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                out[new] = value
                break
        else:
            raise ValueError(f"not a parameter of the 2019 Demucs (glu, rewrite, no upsample): {key!r}")
    return out


def config_from_2019(kwargs: dict[str, Any], sample_rate: int = 44_100) -> Demucs2019Config:
    """That code's ``Demucs(**kwargs)`` arguments -> a config; only ``glu=True, rewrite=True,
    upsample=False`` (its defaults, the published models) are supported."""
    values = dict(kwargs)
    for flag, expected in (("glu", True), ("rewrite", True), ("upsample", False)):
        if bool(values.pop(flag, expected)) != expected:
            raise ValueError(f"demucs2019 supports only {flag}={expected} (the published structure)")
    values.setdefault("sample_rate", sample_rate)
    return Demucs2019Config.from_dict(values)
