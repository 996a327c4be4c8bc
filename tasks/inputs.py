"""Fingerprints of the pipeline's external inputs, computed once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipeline.corpora import catalog, stemset


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


def forget_inputs() -> None:
    """Drop cached fingerprints and task instances, so the next run sees the inputs as they are."""
    import luigi.task_register

    stem_set_fingerprint.cache_clear()
    catalog_fingerprint.cache_clear()
    luigi.task_register.Register.clear_instance_cache()
