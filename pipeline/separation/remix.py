"""The unlabelled-data remix step (paper sections 4 and 5.2).

After a main batch, with probability 0.25, pick a source ``i`` uniformly among those with a
non-empty ``D_i``; draw ``m_i``, a random crop of a random excerpt of ``D_i`` (an unlabelled
stretch where source i is silent), and ``s_i``, the isolated stem i of a random window of the
supervised train split; feed ``s' = m_i + s_i`` and take one step of a separate Adam
(learning rate 10 times smaller) on loss (3)::

    ||s'_i_hat - s_i||_1 + lambda * ||sum_{j != i} s'_j_hat - m_i||_1,   lambda = 1e-6

Both L1 terms are the mean absolute error per element (over batch, channels and samples),
the same normalisation as the main loss (:func:`l1_loss`, mean over batch, sources,
channels and samples).

Excerpts come from the D_i index (``pipeline.mining.schema``, ``<run_dir>/index``); only
the crop is read from each FLAC (soundfile partial read), then resampled to the model's rate
and given the model's channel count.  An excerpt shorter than the window is zero-padded at
its end.  The remix batch carries one source ``i`` for all its items (one decision per step);
no augmentation is applied to ``s_i`` or ``m_i``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.audio import io as audio
from pipeline.mining.schema import read_index
from pipeline.sources import SOURCES


def l1_loss(estimates: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Main loss: mean absolute error per element of ``(B, S, C, T)`` estimates vs. sources."""
    return (estimates - sources).abs().mean()


def remix_loss(estimates: torch.Tensor, source_index: int, stem: torch.Tensor, excerpt: torch.Tensor,
               lam: float) -> torch.Tensor:
    """Loss (3) of the paper on estimates ``(B, S, C, T)`` of ``s' = stem + excerpt``.

    ``stem`` ``(B, C, T)`` is ``s_i``, ``excerpt`` ``(B, C, T)`` is ``m_i``: strong supervision of
    source ``source_index``, weak supervision (weight ``lam``) of the sum of the others.
    """
    others = torch.cat([estimates[:, :source_index], estimates[:, source_index + 1:]], dim=1).sum(dim=1)
    strong = (estimates[:, source_index] - stem).abs().mean()
    weak = (others - excerpt).abs().mean()
    return strong + lam * weak


def remix_step(model: nn.Module, optimizer: torch.optim.Optimizer, source_index: int, stem: torch.Tensor,
               excerpt: torch.Tensor, lam: float) -> float:
    """One gradient step of ``optimizer`` on loss (3) for ``s' = stem + excerpt``; returns the loss.

    ``model`` maps ``(B, C, T)`` mixtures to ``(B, S, C, T)`` (``T`` a valid length); it may be a
    DistributedDataParallel wrapper, in which case every rank must call this together.
    """
    optimizer.zero_grad(set_to_none=True)
    estimates = model(stem + excerpt)
    loss = remix_loss(estimates, source_index, stem, excerpt, lam)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


class RemixSampler:
    """Draws ``(i, m_i)`` from the D_i sets of an extraction run.

    ``run_dir`` holds ``index/`` (hive-partitioned by source) and the excerpt files named by
    the rows' ``audio_path`` (relative to ``run_dir``).  ``None`` or a run without excerpts
    gives a sampler with no available source (:attr:`available` empty).
    """

    def __init__(self, run_dir: str | os.PathLike | None, sample_rate: int, audio_channels: int,
                 window: int) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.sample_rate, self.channels, self.window = sample_rate, audio_channels, window
        index = read_index(self.run_dir / "index") if self.run_dir is not None else pd.DataFrame()
        self.excerpts: dict[int, pd.DataFrame] = {}
        for i, name in enumerate(SOURCES):
            rows = index[index["source"] == name] if len(index) else index
            if len(rows):
                self.excerpts[i] = rows.sort_values("excerpt_id").reset_index(drop=True)

    @property
    def available(self) -> list[int]:
        """Indices (into SOURCES) of the sources with a non-empty D_i."""
        return sorted(self.excerpts)

    def counts(self) -> dict[str, int]:
        """Number of excerpts per source name (0 for an empty D_i)."""
        return {name: len(self.excerpts.get(i, ())) for i, name in enumerate(SOURCES)}

    def pick_source(self, rng: np.random.Generator) -> int:
        """A source index uniformly among :attr:`available`."""
        if not self.excerpts:
            raise ValueError("no D_i has any excerpt; the remix step cannot run")
        return self.available[int(rng.integers(len(self.excerpts)))]

    def crop(self, row: pd.Series, rng: np.random.Generator) -> np.ndarray:
        """A random ``window``-sample crop of one excerpt at the model's rate, ``(channels, window)``."""
        path = self.run_dir / row["audio_path"]
        info = audio.probe(path)
        need = int(math.ceil(self.window * info.sample_rate / self.sample_rate))
        if info.sample_rate != self.sample_rate:
            need += 16  # a few samples of margin so the resampled crop still covers the window
        start = int(rng.integers(0, info.frames - need + 1)) if info.frames > need else 0
        wav, rate = audio.load(path, start=start, frames=min(need, info.frames - start))
        wav = audio.match_channels(audio.resample(wav, rate, self.sample_rate), self.channels)
        out = np.zeros((self.channels, self.window), dtype=np.float32)
        part = wav[:, :self.window]
        out[:, :part.shape[1]] = part
        return out

    def draw(self, count: int, rng: np.random.Generator,
             source_rng: np.random.Generator | None = None) -> tuple[int, np.ndarray]:
        """``(i, m_i)``: a source from ``source_rng`` (default ``rng``; pass a generator shared by all
        ranks in distributed training) and ``count`` crops of its excerpts from ``rng``."""
        source_index = self.pick_source(source_rng or rng)
        return source_index, self.sample(source_index, count, rng)

    def sample(self, source_index: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` crops ``m_i`` of random excerpts of ``D_i``: ``(count, channels, window)``."""
        rows = self.excerpts[source_index]
        picks = rng.integers(len(rows), size=count)
        return np.stack([self.crop(rows.iloc[int(k)], rng) for k in picks])
