"""The unlabelled-data remix step (paper sections 4 and 5.2).

After a main batch, with probability 0.25, pick a source ``i`` uniformly among those with a
non-empty ``D_i``; draw ``m_i``, a random crop of a random excerpt of ``D_i`` (an unlabelled
stretch where source i is silent), and ``s_i``, the isolated stem i of a random window of the
supervised train split; feed ``s' = m_i + s_i`` and take one step of a separate Adam
(learning rate 10 times smaller) on loss (3)::

    ||s'_i_hat - s_i||_1 + lambda * ||sum_{j != i} s'_j_hat - m_i||_1,   lambda = 1e-6

Both L1 terms are the mean absolute error per element (over batch, channels and samples),
the same normalisation as the main L1 loss (:func:`~pipeline.separation.losses.l1_loss`);
the losses live in :mod:`pipeline.separation.losses`.  Loss (3) does not depend on the
architecture: the step runs for every registered model, whatever its main loss.

Excerpts come from a D_i (:class:`pipeline.mining.datasets.DatasetRun`: its index and the
excerpt files its rows name); only
the crop is read from each FLAC (soundfile partial read), then resampled to the model's rate
and given the model's channel count.  An excerpt shorter than the window is zero-padded at
its end.  The remix batch carries one source ``i`` for all its items (one decision per step);
no augmentation is applied to ``s_i`` or ``m_i``.

The excerpts can also come from a WebDataset export of the D_i (``webdataset=``: tar shards of
:mod:`pipeline.exports.webdataset`, for a D_i too large for many small files on a network
filesystem): the shards' headers and JSON records are read once, and each crop reads only its
excerpt's bytes from the tar.  The rows, their order and the crops drawn for a seed are the
same as from the D_i folder.
"""

from __future__ import annotations

import io
import math
import os
from typing import Iterable

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch import nn

from pipeline.audio import io as audio
from pipeline.exports.webdataset import TarMember, webdataset_members
from pipeline.mining.datasets import DatasetRun
from pipeline.separation.contract import center_trim
from pipeline.separation.losses import l1_loss, remix_loss  # noqa: F401  (l1_loss: the main loss's home)
from pipeline.sources import SOURCES


def remix_step(model: nn.Module, optimizer: torch.optim.Optimizer, source_index: int, stem: torch.Tensor,
               excerpt: torch.Tensor, lam: float, grad_clip: float | None = None) -> float:
    """One gradient step of ``optimizer`` on loss (3) for ``s' = stem + excerpt``; returns the loss.

    ``model`` is any registered separator (:mod:`pipeline.separation.contract`): ``(B, C, T)``
    mixtures (``T`` a valid length) to ``(B, S, C, T')``; ``stem`` and ``excerpt`` are
    centre-trimmed to ``T'``.  ``grad_clip``: the gradient norm is clipped to it first (the
    model's recipe, e.g. TasNet's 5).  ``model`` may be a DistributedDataParallel wrapper, in
    which case every rank must call this together.
    """
    optimizer.zero_grad(set_to_none=True)
    estimates = model(stem + excerpt)
    length = estimates.shape[-1]
    loss = remix_loss(estimates, source_index, center_trim(stem, length), center_trim(excerpt, length), lam)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


class RemixSampler:
    """Draws ``(i, m_i)`` from the D_i sets of one catalog.

    ``run``: a :class:`pipeline.mining.datasets.DatasetRun` or its folder (``datasets/<key>/``,
    whose rows' ``audio_path`` resolve against the data root).  ``None`` or a D_i without
    excerpts gives a sampler with no available source (:attr:`available` empty).
    ``webdataset``: instead of ``run`` (pass ``None``), the shards of a WebDataset export (its
    folder, one tar or a list of tars); the rows are the shards' JSON records.
    """

    def __init__(self, run: DatasetRun | str | os.PathLike | None, sample_rate: int, audio_channels: int,
                 window: int, webdataset: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> None:
        if run is not None and webdataset is not None:
            raise ValueError("give the D_i folder (run) or its WebDataset shards (webdataset), not both")
        self.run = DatasetRun.of(run) if run is not None else None
        self.sample_rate, self.channels, self.window = sample_rate, audio_channels, window
        self.members: dict[str, TarMember] | None = None
        if webdataset is not None:
            self.members = webdataset_members(webdataset)
            index = pd.DataFrame([m.record for m in self.members.values()])
        else:
            index = self.run.index() if self.run is not None else pd.DataFrame()
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
        return self.crop_with_origin(row, rng)[0]

    def crop_with_origin(self, row: pd.Series, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """:meth:`crop`'s ``(channels, window)`` crop with where it comes from: its first sample in the
        excerpt file and that file's rate (Hz)."""
        if self.members is not None:
            with sf.SoundFile(io.BytesIO(self.members[row["excerpt_id"]].read())) as fh:
                frames, rate = fh.frames, fh.samplerate
                start, need = self.crop_span(frames, rate, rng)
                fh.seek(start)
                wav = np.ascontiguousarray(fh.read(min(need, frames - start), dtype="float32", always_2d=True).T)
        else:
            path = self.run.audio_file(row)
            info = audio.probe(path)
            start, need = self.crop_span(info.frames, info.sample_rate, rng)
            wav, rate = audio.load(path, start=start, frames=min(need, info.frames - start))
        file_rate = rate
        wav = audio.match_channels(audio.resample(wav, rate, self.sample_rate), self.channels)
        out = np.zeros((self.channels, self.window), dtype=np.float32)
        part = wav[:, :self.window]
        out[:, :part.shape[1]] = part
        return out, start, file_rate

    def crop_span(self, frames: int, rate: int, rng: np.random.Generator) -> tuple[int, int]:
        """``(start, samples)`` at the file's ``rate`` of a random crop of an excerpt of ``frames``."""
        need = int(math.ceil(self.window * rate / self.sample_rate))
        if rate != self.sample_rate:
            need += 16  # a few samples of margin so the resampled crop still covers the window
        start = int(rng.integers(0, frames - need + 1)) if frames > need else 0
        return start, need

    def draw(self, count: int, rng: np.random.Generator,
             source_rng: np.random.Generator | None = None) -> tuple[int, np.ndarray]:
        """``(i, m_i)``: a source from ``source_rng`` (default ``rng``; pass a generator shared by all
        ranks in distributed training) and ``count`` crops of its excerpts from ``rng``."""
        source_index = self.pick_source(source_rng or rng)
        return source_index, self.sample(source_index, count, rng)

    def sample(self, source_index: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` crops ``m_i`` of random excerpts of ``D_i``: ``(count, channels, window)``."""
        return np.stack([self.crop(row, rng) for row in self.pick_rows(source_index, count, rng)])

    def pick_rows(self, source_index: int, count: int, rng: np.random.Generator) -> list[pd.Series]:
        """``count`` index rows of ``D_i`` drawn uniformly, as :meth:`sample` draws them."""
        rows = self.excerpts[source_index]
        return [rows.iloc[int(k)] for k in rng.integers(len(rows), size=count)]
