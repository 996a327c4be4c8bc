"""The Features stage body: decode, downmix, resample to 16 kHz, scatter, store per shard.

A shard's features go to one ``<name>.npy`` plus ``<name>.index.parquet``
(:mod:`pipeline.feature_store`); tracks that cannot be decoded go to
``<name>.rejects.parquet`` with the reason, and the shard goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import audio, stemset
from pipeline.dataset_index import REJECTS_SCHEMA
from pipeline.feature_store import FeatureShardWriter
from pipeline.features import FeatureExtractor
from pipeline.sources import FEATURE_RATE
from pipeline.storage import write_parquet_atomic

STAGE = "features"

# One item per track: (track_id, path shown in rejects, loader -> 16 kHz mono (samples,)).
Item = tuple[str, str, Callable[[], np.ndarray]]


def featurize(items: Iterable[Item], npy_path: Path, total: int | None = None,
              num_threads: int | None = None) -> dict[str, int]:
    """Write the features of ``items`` to ``npy_path`` (+ index, + rejects); return counts."""
    extractor = FeatureExtractor(num_threads=num_threads)
    rejects, seconds = [], 0.0
    with FeatureShardWriter(npy_path) as writer:
        for track_id, path, load in tqdm(items, total=total, desc=f"features {npy_path.stem}", unit="track",
                                         leave=False):
            try:
                mono = load()
            except audio.AudioError as err:
                rejects.append((path, track_id, STAGE, str(err)))
                continue
            writer.add(track_id, extractor(mono))
            seconds += mono.shape[0] / FEATURE_RATE
    frame = pd.DataFrame(rejects, columns=REJECTS_SCHEMA.names)
    write_parquet_atomic(frame.astype(str), rejects_path(npy_path))
    return {"tracks": len(writer.index_frame()), "rejects": len(rejects), "audio_seconds": round(seconds, 1)}


def rejects_path(npy_path: Path) -> Path:
    return npy_path.with_name(npy_path.stem + ".rejects.parquet")


def read_feature_rejects(npy_path: Path) -> pd.DataFrame:
    """The tracks of a shard that the features stage rejected: ``path, track_id, stage, reason``."""
    return pd.read_parquet(rejects_path(npy_path))


def _catalog_loader(path: str) -> Callable[[], np.ndarray]:
    return lambda: audio.load(path, sample_rate=FEATURE_RATE, mono=True)[0][0]


def featurize_catalog_shard(tracks: pd.DataFrame, npy_path: Path, num_threads: int | None = None) -> dict[str, int]:
    """Features of one catalog shard (rows with ``track_id, path``)."""
    items = [(row.track_id, row.path, _catalog_loader(row.path)) for row in tracks.itertuples()]
    return featurize(items, npy_path, total=len(items), num_threads=num_threads)


def featurize_stem_split(stem_root: str, split: str, npy_path: Path, num_threads: int | None = None) -> dict[str, int]:
    """Features of the mixtures of one stem-set split."""
    def loader(track: stemset.StemTrack) -> Callable[[], np.ndarray]:
        return lambda: stemset.load_mixture(track, sample_rate=FEATURE_RATE, mono=True)[0][0]

    tracks = stemset.list_tracks(stem_root, split)
    items = [(t.track_id, str(t.folder or t.stem_file), loader(t)) for t in tracks]
    return featurize(items, npy_path, total=len(items), num_threads=num_threads)
