"""Batched data augmentation of source stems (paper section 5.2).

Every transform maps sources ``(batch, sources, channels, time)`` to sources, draws its
randomness from an explicit CPU ``torch.Generator`` (so a run is reproducible and its state
can be checkpointed) and works on tensors on any device.  Mixtures are formed *after*
augmentation as the sum of the augmented sources (:func:`mixture_of`), so ``mixture =
sum of sources`` holds for every training example, even when sources of different songs or
different shifts are combined.

- :class:`TimeShift`: crop ``time - max_shift`` samples at a random offset per (item, source);
  both channels of a source get the same shift.  The input window is ``max_shift`` samples
  longer than the training window.
- :class:`FlipSign`: multiply each (item, source) by +1 or -1 (``per_channel=True``: each
  channel separately, the paper's literal wording).
- :class:`FlipChannels`: swap left and right of each (item, source) with probability 1/2.
- :class:`ShuffleSources`: for each source slot, an independent random permutation of the
  batch: item b's source j comes from item ``perm_j[b]`` (new mixtures of unrelated stems).
"""

from __future__ import annotations

import torch
from torch import nn


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(high, size, generator=generator).to(device)


class TimeShift(nn.Module):
    """``(B, S, C, T + max_shift)`` -> ``(B, S, C, T)``; offset uniform in ``[0, max_shift]``."""

    def __init__(self, max_shift: int, generator: torch.Generator) -> None:
        super().__init__()
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0 samples, got {max_shift}")
        self.max_shift, self.generator = max_shift, generator

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        batch, sources, channels, time = wav.shape
        length = time - self.max_shift
        if length < 1:
            raise ValueError(f"window of {time} samples is not longer than max_shift={self.max_shift}")
        if self.max_shift == 0:
            return wav
        offsets = _randint(self.max_shift + 1, (batch, sources, 1, 1), self.generator, wav.device)
        index = torch.arange(length, device=wav.device) + offsets
        return wav.gather(3, index.expand(-1, -1, channels, -1))


class FlipSign(nn.Module):
    """Multiply by a random sign per (item, source), or per (item, source, channel)."""

    def __init__(self, generator: torch.Generator, per_channel: bool = False) -> None:
        super().__init__()
        self.generator, self.per_channel = generator, per_channel

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        batch, sources, channels, _ = wav.shape
        size = (batch, sources, channels if self.per_channel else 1, 1)
        signs = _randint(2, size, self.generator, wav.device).to(wav.dtype) * 2 - 1
        return wav * signs


class FlipChannels(nn.Module):
    """Swap the two channels of each (item, source) with probability 1/2 (stereo only)."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        batch, sources, channels, time = wav.shape
        if channels != 2:
            return wav
        left = _randint(2, (batch, sources, 1, 1), self.generator, wav.device)
        order = torch.cat([left, 1 - left], dim=2)  # (B, S, 2, 1): which input channel goes where
        return wav.gather(2, order.expand(-1, -1, -1, time))


class ShuffleSources(nn.Module):
    """Item b's source j becomes item ``perm_j[b]``'s source j, one permutation per source."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        batch, sources, channels, time = wav.shape
        perms = torch.argsort(torch.rand(batch, sources, generator=self.generator), dim=0).to(wav.device)
        return wav.gather(0, perms[:, :, None, None].expand(-1, -1, channels, time))


class Augment(nn.Module):
    """The training recipe: shift, sign flip, channel swap, then source shuffle (each optional)."""

    def __init__(self, generator: torch.Generator, max_shift: int = 0, flip_sign: bool = True,
                 flip_channels: bool = True, shuffle_sources: bool = True) -> None:
        super().__init__()
        steps: list[nn.Module] = [TimeShift(max_shift, generator)]
        if flip_sign:
            steps.append(FlipSign(generator))
        if flip_channels:
            steps.append(FlipChannels(generator))
        if shuffle_sources:
            steps.append(ShuffleSources(generator))
        self.steps = nn.Sequential(*steps)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.steps(wav)


def mixture_of(sources: torch.Tensor) -> torch.Tensor:
    """The mixture of ``(B, S, C, T)`` sources: their sum, ``(B, C, T)``."""
    return sources.sum(dim=1)
