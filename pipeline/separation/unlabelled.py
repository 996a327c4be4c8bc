"""Random excerpts of unlabelled catalog tracks (the adversarial scheme's mixtures).

:class:`CatalogExcerpts` reads the tracks of a catalog scan (its ``tracks.parquet``,
:mod:`pipeline.corpora.catalog`: one row per unique track, ``path`` and ``track_id``) and
serves float32 crops ``(channels, window)`` at the separator's rate: a track uniformly, a
start uniformly within it, only that span decoded (:func:`pipeline.audio.io.load` with
``start``/``frames``), resampled and given the model's channel count.  A track shorter than
the window is zero-padded at its end.  A track that cannot be decoded is *rejected*: left out
of the draws from then on, with its reason in :attr:`CatalogExcerpts.rejected` (and the log);
when every track is rejected, :class:`ValueError`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.audio import io as audio

log = logging.getLogger(__name__)


def read_crop(path: str | os.PathLike, info: audio.AudioInfo, sample_rate: int, channels: int, window: int,
              rng: np.random.Generator) -> np.ndarray:
    """A random ``window``-sample crop of the file at ``path`` (probed as ``info``) at ``sample_rate``
    Hz with ``channels`` channels, ``(channels, window)`` float32, zero-padded past the file's end."""
    need = int(math.ceil(window * info.sample_rate / sample_rate))
    if info.sample_rate != sample_rate:
        need += 16  # margin so the resampled crop still covers the window
    start = int(rng.integers(0, info.frames - need + 1)) if info.frames > need else 0
    wav, rate = audio.load(path, start=start, frames=min(need, info.frames - start))
    wav = audio.match_channels(audio.resample(wav, rate, sample_rate), channels)
    out = np.zeros((channels, window), dtype=np.float32)
    part = wav[:, :window]
    out[:, :part.shape[1]] = part
    return out


class CatalogExcerpts:
    """Crops of the tracks listed in ``tracks_file`` (a scan's ``tracks.parquet``).

    ``sample_rate`` (Hz), ``channels`` and ``window`` (samples) are the separator's.  Tracks are
    ordered by ``track_id`` so that a seed gives the same draws whatever the scan's row order.
    """

    def __init__(self, tracks_file: str | os.PathLike, sample_rate: int, channels: int, window: int) -> None:
        tracks = pd.read_parquet(tracks_file, columns=["path", "track_id"])
        if not len(tracks):
            raise ValueError(f"catalog scan {tracks_file} lists no track: the adversarial scheme needs "
                             "unlabelled mixtures")
        self.paths = [Path(p) for p in tracks.sort_values("track_id")["path"]]
        self.sample_rate, self.channels, self.window = sample_rate, channels, window
        self._info: dict[int, audio.AudioInfo] = {}
        self.rejected: dict[str, str] = {}  # path -> reason
        self._usable = list(range(len(self.paths)))

    def __len__(self) -> int:
        """Number of tracks still drawn from (listed minus rejected)."""
        return len(self._usable)

    def _crop(self, index: int, rng: np.random.Generator) -> np.ndarray:
        path = self.paths[index]
        if index not in self._info:
            self._info[index] = audio.probe(path)
        return read_crop(path, self._info[index], self.sample_rate, self.channels, self.window, rng)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` random crops, ``(count, channels, window)`` float32."""
        out = np.empty((count, self.channels, self.window), dtype=np.float32)
        for b in range(count):
            while True:
                if not self._usable:
                    raise ValueError(f"no catalog track could be decoded ({len(self.rejected)} rejected): "
                                     f"{dict(list(self.rejected.items())[:3])}")
                index = self._usable[int(rng.integers(len(self._usable)))]
                try:
                    out[b] = self._crop(index, rng)
                    break
                except audio.AudioError as err:
                    self.rejected[str(self.paths[index])] = str(err)
                    self._usable.remove(index)
                    log.warning("unlabelled track rejected: %s (%s)", self.paths[index], err)
        return out
