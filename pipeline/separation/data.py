"""Windows of stem-set tracks for training and validating the separator.

:class:`StemWindows` serves windows of ``(4, channels, window)`` float32 source stems at
the model's rate (Hz) from one split of a stem set (:mod:`pipeline.corpora.stemset`):

- random windows (:meth:`StemWindows.sample`) with an explicit ``numpy.random.Generator``:
  a track is drawn with probability proportional to its number of window positions, then a
  start uniformly, so every position of the split is equally likely (the paper's epoch is
  all 5 s extracts at a 0.5 s stride); a track shorter than the window is zero-padded;
- fixed windows (:meth:`StemWindows.fixed_windows`): consecutive, non-overlapping windows
  of each track, for a deterministic validation loss.

Storage: the whole split in memory (float32) when it fits ``memory_limit_bytes``, else, for
the folder layout, *lazy*: each window is read from the per-source wav files with partial
reads (``pipeline.audio.io.load(path, start=, frames=)``), so a full MUSDB18-HQ (~10 GB as
float32) never has to be loaded.  ``.stem.mp4`` sets are always loaded whole.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from pipeline import rejects
from pipeline.audio import io as audio
from pipeline.corpora.stemset import StemTrack, list_tracks, load_stems
from pipeline.sources import SOURCES

DEFAULT_MEMORY_LIMIT = 2 << 30  # bytes of float32 stems kept in memory before going lazy


@dataclass(frozen=True)
class _Track:
    track: StemTrack
    length: int  # samples at the model's rate
    file_rate: int  # Hz of the files on disk


class StemWindows:
    """Windows of ``window`` samples at ``sample_rate`` Hz from ``split`` of the stem set at ``root``.

    ``lazy=None`` chooses: in memory when the split's stems take at most ``memory_limit_bytes``
    as float32, else lazy (folder layout only).  Raises ``ValueError`` for an empty split.
    """

    def __init__(self, root: str | os.PathLike, split: str, window: int, sample_rate: int,
                 audio_channels: int = 2, lazy: bool | None = None,
                 memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 sample, got {window}")
        tracks = list_tracks(root, split)
        if not tracks:
            raise ValueError(f"stem set {root} has no tracks in split {split!r}")
        self.split, self.window, self.sample_rate, self.channels = split, window, sample_rate, audio_channels
        folder_layout = all(t.folder is not None for t in tracks)
        if lazy and not folder_layout:
            raise ValueError("lazy reading needs the folder layout (<split>/<track>/<source>.wav)")
        self._tracks: list[_Track] = []
        self._stems: list[np.ndarray] | None = None
        if folder_layout:
            self._tracks = [self._probe(t) for t in tracks]
            size = sum(t.length for t in self._tracks) * len(SOURCES) * audio_channels * 4
            self.lazy = bool(lazy) if lazy is not None else size > memory_limit_bytes
        else:
            self.lazy = False
        if not self.lazy:
            self._stems = [self._load_whole(t) for t in tracks]
            self._tracks = [_Track(t, s.shape[-1], sample_rate) for t, s in zip(tracks, self._stems)]
        lengths = np.array([t.length for t in self._tracks], dtype=np.float64)
        positions = np.maximum(lengths - window + 1, 1)
        self._weights = positions / positions.sum()

    def _probe(self, track: StemTrack) -> _Track:
        infos = [audio.probe(track.path(name)) for name in SOURCES]
        rates = {info.sample_rate for info in infos}
        if len(rates) != 1:
            raise audio.AudioError(
                f"stems of {track.folder} have different sample rates {sorted(rates)}", kind=rejects.OTHER
            )
        rate = rates.pop()
        frames = min(info.frames for info in infos)
        return _Track(track, int(frames * self.sample_rate // rate), rate)

    def _load_whole(self, track: StemTrack) -> np.ndarray:
        stems, _ = load_stems(track, sample_rate=self.sample_rate)
        return np.stack([audio.match_channels(s, self.channels) for s in stems])

    def __len__(self) -> int:
        """Number of tracks."""
        return len(self._tracks)

    def track_length(self, index: int) -> int:
        """Samples (at the model's rate) of track ``index``."""
        return self._tracks[index].length

    @property
    def track_names(self) -> list[str]:
        return [t.track.name for t in self._tracks]

    def n_positions(self, hop: int) -> int:
        """Number of windows at a stride of ``hop`` samples over all tracks (the paper's epoch)."""
        return int(sum(max(0, (t.length - self.window) // hop) + 1 for t in self._tracks))

    def read(self, index: int, start: int, frames: int) -> np.ndarray:
        """Stems ``(4, channels, frames)`` of track ``index`` from ``start`` (samples at the model's
        rate), zero-padded past the end of the track."""
        entry = self._tracks[index]
        out = np.zeros((len(SOURCES), self.channels, frames), dtype=np.float32)
        if self._stems is not None:
            part = self._stems[index][..., start : start + frames]
            out[..., : part.shape[-1]] = part
            return out
        ratio = entry.file_rate / self.sample_rate
        file_start = int(math.floor(start * ratio))
        file_frames = int(math.ceil(frames * ratio)) + (0 if ratio == 1 else 16)
        for k, name in enumerate(SOURCES):
            if file_start >= entry.length * ratio:
                break
            wav, rate = audio.load(entry.track.path(name), start=file_start, frames=file_frames)
            wav = audio.match_channels(audio.resample(wav, rate, self.sample_rate), self.channels)
            part = wav[:, : min(frames, entry.length - start)]
            out[k, :, : part.shape[-1]] = part
        return out

    def sample(self, rng: np.random.Generator, count: int, frames: int | None = None) -> np.ndarray:
        """``count`` random windows as ``(count, 4, channels, frames)`` float32 (``frames`` defaults
        to ``window``; tracks are still weighted by their ``window`` positions)."""
        frames = self.window if frames is None else frames
        batch = np.empty((count, len(SOURCES), self.channels, frames), dtype=np.float32)
        for b, (index, start) in enumerate(self.draw_spans(rng, count, frames)):
            batch[b] = self.read(index, start, frames)
        return batch

    def draw_spans(self, rng: np.random.Generator, count: int, frames: int | None = None) -> list[tuple[int, int]]:
        """The ``(track index, start)`` of ``count`` random windows, as :meth:`sample` draws them
        (a track weighted by its window positions, then a start uniformly, in samples)."""
        frames = self.window if frames is None else frames
        tracks = rng.choice(len(self._tracks), size=count, p=self._weights)
        return [(int(index), int(rng.integers(0, max(1, self._tracks[index].length - frames + 1))))
                for index in tracks]

    def fixed_windows(self, max_windows: int | None = None) -> list[tuple[int, int]]:
        """``(track index, start)`` of consecutive non-overlapping windows of every track (at least
        one per track); with ``max_windows``, that many spread evenly over the list."""
        spans = [
            (i, k * self.window) for i, t in enumerate(self._tracks) for k in range(max(1, t.length // self.window))
        ]
        if max_windows is not None and len(spans) > max_windows:
            keep = np.linspace(0, len(spans) - 1, max_windows).round().astype(int)
            spans = [spans[k] for k in keep]
        return spans

    def read_windows(self, spans: list[tuple[int, int]]) -> np.ndarray:
        """The windows ``spans`` (from :meth:`fixed_windows`) as ``(len(spans), 4, channels, window)``."""
        return np.stack([self.read(i, start, self.window) for i, start in spans])
