"""The features stage bodies (:func:`build_features` for a stem-set split,
:func:`build_features_shard` for a catalog shard): decode, downmix, resample to 16 kHz,
scatter, store.

A shard's features go to one ``<name>.npy`` plus ``<name>.index.parquet``
(:mod:`pipeline.features.store`); tracks that cannot be decoded go to
``<name>.rejects.parquet`` with the reason, and the shard goes on.

Catalog tracks are streamed: ``pipeline.audio.io.stream`` decodes, downmixes and resamples the
file in blocks of :data:`STREAM_BLOCK_FRAMES` samples (at the file's rate), the extractor turns
the 16 kHz blocks into feature pieces (:meth:`pipeline.features.scattering.FeatureExtractor.stream`) and
the writer appends the pieces to the shard as they come, so memory does not grow with a
track's length (the features are bit-identical to the whole-signal transform of
``audio.load(path, 16000, mono=True)``).  Stem-set mixtures (short, loaded from several stem
files) are loaded whole and go through the same code as one block.

Short tracks are packed: a track that ends within :data:`PACK_MAX_SECONDS` is held (at most
3.8 MB of 16 kHz samples) and computed with other short tracks in shared Kymatio chunks
(:meth:`pipeline.features.scattering.FeatureExtractor.packed`, equal to its solo features up
to float32 rounding) once the held tracks fill :data:`PACK_FRAMES` frames, and at the end of
the shard; longer tracks stream as above.  Packed tracks are written when their pack is
computed, so a shard's order is not its input order (readers look tracks up by id).  A track
whose samples reach beyond :data:`PACK_MAX_PEAK` (corrupt float data) is computed alone, so
that what it does to the float rounding never reaches another track.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from pipeline import rejects
from pipeline.audio import io as audio
from pipeline.corpora import stemset
from pipeline.features.scattering import (
    CONTEXT_FRAMES,
    MAX_SEGMENT_FRAMES,
    FeatureExtractor,
    check_block,
    check_signal,
    pack_span,
)
from pipeline.features.store import FeatureShardWriter
from pipeline.progress import progress_bar
from pipeline.sources import FEATURE_RATE
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import StageResult, write_parquet_atomic

STAGE = "features"
STREAM_BLOCK_FRAMES = 1 << 17  # samples per channel decoded per block (3 s at 44.1 kHz)
PACK_MAX_SECONDS = 60.0  # tracks up to this long are packed (a 60 s track's last chunk is 1/4 empty alone)
PACK_FRAMES = 16 * (MAX_SEGMENT_FRAMES - 2 * CONTEXT_FRAMES)  # held frames that make a pack: 16 chunks, 248 s
PACK_MAX_PEAK = 16.0  # |sample| above this (24 dB over full scale): the track is computed alone

# One item per track: (track_id, path shown in rejects, source -> 16 kHz mono blocks (samples,)).
# The source may raise pipeline.audio.io.AudioError, when called or while iterating.
Item = tuple[str, str, Callable[[], Iterable[np.ndarray]]]


def featurize(items: Iterable[Item], npy_path: Path, total: int | None = None,
              num_threads: int | None = None, progress: Progress | None = None,
              pack_max_seconds: float = PACK_MAX_SECONDS, dtype: np.dtype | type = np.float16) -> dict[str, int]:
    """Write the features of ``items`` to ``npy_path`` (+ index, + rejects; features stored as
    ``dtype``); return counts: ``tracks`` (stored), ``rejects``, ``audio_seconds`` (at 16 kHz,
    of the stored tracks) and ``tracks_packed`` (of them, computed in shared chunks).

    ``progress(tracks done, total, path)`` is called before each track and once at the end.
    Tracks up to ``pack_max_seconds`` long are packed (module docstring; 0: none)."""
    extractor = FeatureExtractor(num_threads=num_threads)
    pack_max_samples = int(pack_max_seconds * FEATURE_RATE)
    rejected, samples, packed, done = [], 0, 0, 0
    with FeatureShardWriter(npy_path, dtype=dtype) as writer:
        pack = _Pack(extractor)

        def write_pack() -> None:
            nonlocal samples, packed
            for track_id, path, signal, feats in pack.compute():
                try:
                    writer.add_pieces(track_id, _finite([feats]))
                except audio.AudioError as err:
                    rejected.append((path, track_id, STAGE, err.kind, str(err)))
                    continue
                samples += signal.shape[0]
                packed += 1

        for track_id, path, source in progress_bar(items, total=total, desc=f"features {npy_path.stem}", unit="track",
                                           leave=False):
            if progress:
                progress(done, total or 0, path)
            done += 1
            try:
                blocks = iter(source())
                head, ended = _head(blocks, pack_max_samples)
                if ended and _Pack.takes(signal := _joined(head)):
                    if pack.add(track_id, path, signal):
                        write_pack()
                    continue
                counter = _Counter()
                writer.add_pieces(track_id, _finite(extractor.stream(counter.count(itertools.chain(head, blocks)))))
            except audio.AudioError as err:
                rejected.append((path, track_id, STAGE, err.kind, str(err)))
                continue
            samples += counter.samples
        write_pack()
    if progress:
        progress(done, total or done, "")
    frame = pd.DataFrame(rejected, columns=rejects.REJECTS_SCHEMA.names)
    write_parquet_atomic(frame.astype(str), rejects_path(npy_path))
    return {"tracks": len(writer.index_frame()), "rejects": len(rejected),
            "audio_seconds": round(samples / FEATURE_RATE, 1), "tracks_packed": packed}


def _head(blocks: Iterator[np.ndarray], limit: int) -> tuple[list[np.ndarray], bool]:
    """The first blocks of a stream, until they hold more than ``limit`` samples (none when
    ``limit`` is 0); and whether the stream ended within them (the list is then the whole track)."""
    head, seen = [], 0
    if limit <= 0:
        return head, False
    for block in blocks:
        head.append(block)
        seen += np.asarray(block).shape[-1]
        if seen > limit:
            return head, False
    return head, True


def _joined(blocks: list[np.ndarray]) -> np.ndarray:
    """A whole short track from its blocks: float32 ``(samples,)``; AudioError for a bad block,
    no samples, or NaN or Inf (as the streaming path raises)."""
    return check_signal(np.concatenate([check_block(b) for b in blocks]) if blocks else np.zeros(0, np.float32))


class _Pack:
    """Short tracks held until they fill :data:`PACK_FRAMES` frames of a packed stream
    (:func:`pipeline.features.scattering.pack_span`)."""

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor
        self.held: list[tuple[str, str, np.ndarray]] = []
        self.next_start = 0  # frame where the next held track would start

    @staticmethod
    def takes(signal: np.ndarray) -> bool:
        """Whether a whole short track may share chunks with others (its peak is in range)."""
        return bool(np.abs(signal).max() <= PACK_MAX_PEAK)

    def add(self, track_id: str, path: str, signal: np.ndarray) -> bool:
        """Hold a track; True when the held tracks fill a pack (time to :meth:`compute`)."""
        self.held.append((track_id, path, signal))
        self.next_start += pack_span(signal.shape[0])
        return self.next_start >= PACK_FRAMES

    def compute(self) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
        """``(track_id, path, signal, features (7, 54, T))`` of every held track, computed in
        shared chunks; nothing is held afterwards."""
        held, self.held, self.next_start = self.held, [], 0
        if not held:
            return []
        features = self.extractor.packed([signal for _, _, signal in held])
        return [(track_id, path, signal, feats) for (track_id, path, signal), feats in zip(held, features)]


def _finite(pieces: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass feature pieces on; raise AudioError at the first that holds NaN or Inf."""
    for piece in pieces:
        if not np.isfinite(piece).all():
            raise audio.AudioError("features overflow to NaN or Inf: sample values far beyond full scale "
                                   "(corrupt float data?)", kind=rejects.NOT_FINITE)
        yield piece


class _Counter:
    """Counts the samples of the blocks passing through :meth:`count`."""

    def __init__(self) -> None:
        self.samples = 0

    def count(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            self.samples += np.asarray(block).shape[-1]
            yield block


def rejects_path(npy_path: Path) -> Path:
    return npy_path.with_name(npy_path.stem + ".rejects.parquet")


def read_feature_rejects(npy_path: Path) -> pd.DataFrame:
    """The tracks of a shard that the features stage rejected: ``path, track_id, stage, reason``."""
    return pd.read_parquet(rejects_path(npy_path))


def catalog_blocks(path: str, block_frames: int = STREAM_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """16 kHz mono blocks ``(samples,)`` float32 of a catalog file, decoded as a stream."""
    for block in audio.stream(path, block_frames=block_frames, sample_rate=FEATURE_RATE, mono=True):
        yield block[0]


def build_features_shard(tracks: pd.DataFrame, npy_path: Path, num_threads: int | None = None,
                         progress: Progress | None = None) -> StageResult:
    """Features of one catalog shard (rows with ``track_id, path``), each track streamed;
    counts and ``progress`` as in :func:`featurize`."""
    items = [(row.track_id, row.path, lambda path=row.path: catalog_blocks(path)) for row in tracks.itertuples()]
    return StageResult(featurize(items, npy_path, total=len(items), num_threads=num_threads, progress=progress))


def build_features(stem_root: str, split: str, npy_path: Path, num_threads: int | None = None) -> StageResult:
    """Features of the mixtures of one stem-set split (each mixture loaded whole: one block);
    counts as in :func:`featurize`."""
    def source(track: stemset.StemTrack) -> Callable[[], Iterable[np.ndarray]]:
        return lambda: [stemset.load_mixture(track, sample_rate=FEATURE_RATE, mono=True)[0][0]]

    tracks = stemset.list_tracks(stem_root, split)
    items = [(t.track_id, str(t.folder or t.stem_file), source(t)) for t in tracks]
    return StageResult(featurize(items, npy_path, total=len(items), num_threads=num_threads))
