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
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from pipeline import rejects
from pipeline.audio import io as audio
from pipeline.corpora import stemset
from pipeline.features.scattering import FeatureExtractor
from pipeline.features.store import FeatureShardWriter
from pipeline.progress import progress_bar
from pipeline.sources import FEATURE_RATE
from pipeline.storage.journal import Progress
from pipeline.storage.outputs import StageResult, write_parquet_atomic

STAGE = "features"
STREAM_BLOCK_FRAMES = 1 << 17  # samples per channel decoded per block (3 s at 44.1 kHz)

# One item per track: (track_id, path shown in rejects, source -> 16 kHz mono blocks (samples,)).
# The source may raise pipeline.audio.io.AudioError, when called or while iterating.
Item = tuple[str, str, Callable[[], Iterable[np.ndarray]]]


def featurize(items: Iterable[Item], npy_path: Path, total: int | None = None,
              num_threads: int | None = None, progress: Progress | None = None) -> dict[str, int]:
    """Write the features of ``items`` to ``npy_path`` (+ index, + rejects); return counts:
    ``tracks`` (stored), ``rejects`` and ``audio_seconds`` (at 16 kHz, of the stored tracks).

    ``progress(tracks done, total, path)`` is called before each track and once at the end."""
    extractor = FeatureExtractor(num_threads=num_threads)
    rejected, samples, done = [], 0, 0
    with FeatureShardWriter(npy_path) as writer:
        for track_id, path, source in progress_bar(items, total=total, desc=f"features {npy_path.stem}", unit="track",
                                           leave=False):
            if progress:
                progress(done, total or 0, path)
            done += 1
            counter = _Counter()
            try:
                writer.add_pieces(track_id, _finite(extractor.stream(counter.count(source()))))
            except audio.AudioError as err:
                rejected.append((path, track_id, STAGE, err.kind, str(err)))
                continue
            samples += counter.samples
    if progress:
        progress(done, total or done, "")
    frame = pd.DataFrame(rejected, columns=rejects.REJECTS_SCHEMA.names)
    write_parquet_atomic(frame.astype(str), rejects_path(npy_path))
    return {"tracks": len(writer.index_frame()), "rejects": len(rejected),
            "audio_seconds": round(samples / FEATURE_RATE, 1)}


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
