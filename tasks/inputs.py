"""Fingerprints of the pipeline's external inputs, computed once per input generation.

Luigi keeps one task instance per parameter set for the life of a process, so what a stage
learns about its inputs (its key, the shards of a catalog scan) is remembered per
*generation*: :func:`forget_inputs` starts a new one, after which every stage looks again.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipeline.corpora import catalog, stemset

_generation = 0


@lru_cache(maxsize=None)
def stem_set_fingerprint(stem_root: str, splits: tuple[str, ...]) -> str:
    """Changes when a track of one of ``splits`` is added, removed or resized."""
    return stemset.fingerprint([t for split in splits for t in stemset.list_tracks(stem_root, split)])


@lru_cache(maxsize=None)
def catalog_fingerprint(catalog_path: str) -> str:
    """Changes when a catalog file is added, removed, resized or touched."""
    return catalog.listing_fingerprint(catalog.listing(catalog_path))


def resolved(path: str) -> str:
    return str(Path(path).resolve())


def generation() -> int:
    """The current input generation: what stages remember is valid while it lasts."""
    return _generation


def forget_inputs() -> None:
    """Start a new input generation: the next look at the stem set, the catalog, the scans and
    the options (keys, shard lists) sees them as they are now."""
    global _generation
    stem_set_fingerprint.cache_clear()
    catalog_fingerprint.cache_clear()
    _generation += 1
