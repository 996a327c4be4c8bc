"""Labelled stem sets: MUSDB18-HQ folder layout, or MUSDB18 through the ``musdb`` package.

Folder layout: ``<root>/<split>/<track>/{mixture,drums,bass,other,vocals}.wav``.  A root
with ``train/`` and ``test/`` but no ``valid/`` (the real MUSDB18-HQ) takes its validation
tracks out of ``train/`` with musdb's official split.  ``.stem.mp4`` sets (MUSDB18) are read
through ``musdb`` (which needs ffmpeg).  Audio is float32 ``(channels, samples)``; stems are
``(4, channels, samples)`` in the order of :data:`pipeline.sources.SOURCES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.audio import io as audio
from pipeline.sources import SOURCES
from pipeline.storage.outputs import stable_hash

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class StemTrack:
    """One labelled track; ``track_id`` is stable across machines (split, name, file sizes)."""

    name: str
    split: str
    track_id: str
    folder: Path | None = None  # folder layout
    stem_file: Path | None = None  # musdb .stem.mp4 layout
    sizes: tuple[int, ...] = field(default=(), compare=False)

    def path(self, part: str) -> Path:
        """Path of ``mixture`` or one source's wav in the folder layout."""
        if self.folder is None:
            raise ValueError(f"{self.name} is a .stem.mp4 track; it has no per-source files")
        return self.folder / f"{part}.wav"


def _is_musdb_mp4(root: Path) -> bool:
    return any(root.glob("*/*.stem.mp4"))


def _musdb_valid_names() -> set[str]:
    """Names of MUSDB18's official validation tracks (a subset of ``train``)."""
    import musdb
    import yaml

    setup = Path(musdb.__file__).parent / "configs" / "mus.yaml"
    with open(setup) as fh:
        return set(yaml.safe_load(fh)["validation_tracks"])


def list_tracks(root: str | os.PathLike, split: str) -> list[StemTrack]:
    """The tracks of ``split`` (``train``, ``valid`` or ``test``), sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"stem set root {root} does not exist")
    if _is_musdb_mp4(root):
        return _list_mp4(root, split)
    if (root / split).is_dir():
        folders, keep = sorted((root / split).iterdir()), None
    elif split in ("train", "valid") and (root / "train").is_dir():
        folders, valid = sorted((root / "train").iterdir()), _musdb_valid_names()
        keep = (lambda name: name in valid) if split == "valid" else (lambda name: name not in valid)
    else:
        return []
    tracks = []
    for folder in folders:
        if not folder.is_dir() or folder.name.startswith(".") or (keep and not keep(folder.name)):
            continue
        files = [folder / f"{part}.wav" for part in ("mixture", *SOURCES)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"stem track {folder} lacks {', '.join(missing)}")
        sizes = tuple(f.stat().st_size for f in files)
        tracks.append(StemTrack(folder.name, split, stable_hash([split, folder.name, sizes]), folder=folder,
                                sizes=sizes))
    return tracks


def _list_mp4(root: Path, split: str) -> list[StemTrack]:
    subset = "test" if split == "test" else "train"
    valid = _musdb_valid_names() if subset == "train" else set()
    tracks = []
    for path in sorted((root / subset).glob("*.stem.mp4")):
        name = path.name[: -len(".stem.mp4")]
        if subset == "train" and ((split == "valid") != (name in valid)):
            continue
        size = path.stat().st_size
        tracks.append(StemTrack(name, split, stable_hash([split, name, size]), stem_file=path, sizes=(size,)))
    return tracks


def fingerprint(tracks: list[StemTrack]) -> str:
    """A key that changes when any track of the list is added, removed or resized."""
    return stable_hash([(t.split, t.name, t.sizes) for t in tracks])


def load_stems(track: StemTrack, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Return the sources as float32 ``(4, channels, samples)`` and their rate in Hz."""
    if track.stem_file is not None:
        stems, rate = _load_mp4(track)
        stems = stems[1:]
    else:
        loaded = [audio.load(track.path(name)) for name in SOURCES]
        rate = loaded[0][1]
        length = min(x.shape[1] for x, _ in loaded)
        stems = np.stack([x[:, :length] for x, _ in loaded])
    if sample_rate is not None and sample_rate != rate:
        flat = stems.reshape(-1, stems.shape[-1])
        stems = audio.resample(flat, rate, sample_rate).reshape(*stems.shape[:2], -1)
        rate = sample_rate
    return stems, rate


def load_mixture(track: StemTrack, sample_rate: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    """Return the mixture as float32 ``(channels, samples)`` and its rate in Hz."""
    if track.stem_file is not None:
        stems, rate = _load_mp4(track)
        mix = stems[0]
        if mono:
            mix = audio.to_mono(mix)
        if sample_rate is not None and sample_rate != rate:
            mix, rate = audio.resample(mix, rate, sample_rate), sample_rate
        return mix, rate
    return audio.load(track.path("mixture"), sample_rate=sample_rate, mono=mono)


def _load_mp4(track: StemTrack) -> tuple[np.ndarray, int]:
    """All five streams of a ``.stem.mp4`` (mixture first) as ``(5, channels, samples)``."""
    import stempeg

    stems, rate = stempeg.read_stems(str(track.stem_file), dtype=np.float32)
    return np.ascontiguousarray(np.transpose(stems, (0, 2, 1))), int(rate)
