"""Labelled stem sets: MUSDB18-HQ folder layout, or MUSDB18's ``.stem.mp4`` files.

Folder layout: ``<root>/<split>/<track>/{mixture,drums,bass,other,vocals}.wav``.  A root
with ``train/`` and ``test/`` but no ``valid/`` (the real MUSDB18-HQ) takes its validation
tracks out of ``train/`` with musdb's official split (:data:`MUSDB_VALIDATION_TRACKS`).
``.stem.mp4`` sets (MUSDB18: ``<root>/{train,test}/<track>.stem.mp4``) are decoded with PyAV
in-process, stream by stream: audio stream 0 is the mixture, 1..4 are drums, bass, other,
vocals (:data:`STEM_STREAMS`, MUSDB18's ``stem_ids``).  Audio is float32
``(channels, samples)``; stems are ``(4, channels, samples)`` in the order of
:data:`pipeline.sources.SOURCES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import rejects
from pipeline.audio import io as audio
from pipeline.sources import SOURCES
from pipeline.storage.outputs import stable_hash

SPLITS = ("train", "valid", "test")
# Audio stream of each part in a MUSDB18 .stem.mp4 ("stem_ids" in musdb's configs/mus.yaml).
STEM_STREAMS = {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4}
# MUSDB18's official validation tracks, a subset of train/: "validation_tracks" in
# configs/mus.yaml of the musdb package (0.4.x), copied so that musdb is never imported
# (it imports stempeg, which raises when no ffmpeg program is installed).
MUSDB_VALIDATION_TRACKS = frozenset({
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
})


@dataclass(frozen=True)
class StemTrack:
    """One labelled track; ``track_id`` is stable across machines (split, name, file sizes)."""

    name: str
    split: str
    track_id: str
    folder: Path | None = None  # folder layout
    stem_file: Path | None = None  # MUSDB18 .stem.mp4 layout
    sizes: tuple[int, ...] = field(default=(), compare=False)

    def path(self, part: str) -> Path:
        """Path of ``mixture`` or one source's wav in the folder layout."""
        if self.folder is None:
            raise ValueError(f"{self.name} is a .stem.mp4 track; it has no per-source files")
        return self.folder / f"{part}.wav"


def _is_musdb_mp4(root: Path) -> bool:
    return any(root.glob("*/*.stem.mp4"))


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
        folders, valid = sorted((root / "train").iterdir()), MUSDB_VALIDATION_TRACKS
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
    valid = MUSDB_VALIDATION_TRACKS if subset == "train" else set()
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
        stems, rate = _load_mp4(track, SOURCES)
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
        return audio.load(track.stem_file, sample_rate=sample_rate, mono=mono, audio_stream=STEM_STREAMS["mixture"])
    return audio.load(track.path("mixture"), sample_rate=sample_rate, mono=mono)


def _load_mp4(track: StemTrack, parts: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """The audio streams of ``parts`` (names of :data:`STEM_STREAMS`) of a ``.stem.mp4``, decoded
    one stream after the other, as ``(len(parts), channels, samples)`` cut to the shortest."""
    info = audio.probe(track.stem_file)
    if info.streams < len(STEM_STREAMS):
        raise audio.AudioError(f"{track.stem_file.name} holds {info.streams} audio stream(s); a .stem.mp4 "
                               f"needs {len(STEM_STREAMS)} (mixture, {', '.join(SOURCES)})", kind=rejects.OTHER)
    decoded = [audio.load(track.stem_file, audio_stream=STEM_STREAMS[part]) for part in parts]
    rates = {rate for _, rate in decoded}
    if len(rates) != 1:
        raise audio.AudioError(f"the streams of {track.stem_file.name} have different sample rates {sorted(rates)}",
                               kind=rejects.OTHER)
    channels = {x.shape[0] for x, _ in decoded}
    if len(channels) != 1:
        raise audio.AudioError(
            f"the streams of {track.stem_file.name} have different channel counts {sorted(channels)}",
            kind=rejects.OTHER,
        )
    length = min(x.shape[1] for x, _ in decoded)
    return np.stack([x[:, :length] for x, _ in decoded]), rates.pop()
