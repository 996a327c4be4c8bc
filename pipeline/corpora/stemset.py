"""Labelled stem sets: MUSDB18-HQ folder layout, or MUSDB18's ``.stem.mp4`` files.

Folder layout: ``<root>/<split>/<track>/{mixture,drums,bass,other,vocals}.wav``.  A root
with ``train/`` and ``test/`` but no ``valid/`` (the real MUSDB18-HQ) takes its validation
tracks out of ``train/`` with musdb's official split (:data:`MUSDB_VALIDATION_TRACKS`).

Splits (:data:`SPLITS`): ``train`` trains the detector and the separators, ``valid`` stops
their training early, ``calibration`` chooses the detector's thresholds and ``test`` is what
Evaluate scores.  A root with a ``calibration/`` folder (the demo's) lists it as it is.  A root
without one (MUSDB18, MUSDB18-HQ, any set in their layout) takes its calibration songs out of
``train/`` (after the validation songs are taken out), deterministically: the
``len(train) // CALIBRATION_SHARE`` songs whose :func:`calibration_rank` (a SHA-256 of the
song's name) is smallest; they leave ``train``, so neither the detector nor a separator trains
on them, and ``test`` is untouched, so Evaluate never scores them.  With fewer than
``CALIBRATION_SHARE`` training songs no song is taken (the calibration split is empty).
``.stem.mp4`` sets (MUSDB18: ``<root>/{train,test}/<track>.stem.mp4``) are decoded with PyAV
in-process, stream by stream: audio stream 0 is the mixture, 1..4 are drums, bass, other,
vocals (:data:`STEM_STREAMS`, MUSDB18's ``stem_ids``).  Audio is float32
``(channels, samples)``; stems are ``(4, channels, samples)`` in the order of
:data:`pipeline.sources.SOURCES`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import rejects
from pipeline.audio import io as audio
from pipeline.sources import SOURCES
from pipeline.storage.outputs import stable_hash

SPLITS = ("train", "valid", "calibration", "test")
TRAINING_SPLITS = ("train", "valid")  # what a separator trains and validates on (and remix-pairs reads)
CALIBRATION = "calibration"  # the split that chooses the thresholds p_i
# One training song in CALIBRATION_SHARE becomes a calibration song when the set has no
# calibration/ folder (MUSDB18: 86 training songs after the 14 validation songs -> 17).
CALIBRATION_SHARE = 5
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


def calibration_rank(name: str) -> str:
    """The order in which training songs are taken for calibration: hex SHA-256 of the name."""
    return hashlib.sha256(f"calibration:{name}".encode()).hexdigest()


def carved_calibration(names: list[str]) -> frozenset[str]:
    """The songs of ``names`` (a set's training songs, validation songs removed) that become its
    calibration split when it has no calibration folder: the ``len(names) // CALIBRATION_SHARE``
    of smallest :func:`calibration_rank`."""
    count = len(names) // CALIBRATION_SHARE
    return frozenset(sorted(names, key=calibration_rank)[:count])


def _split_of_train_song(name: str, valid: frozenset[str], calibration: frozenset[str]) -> str:
    """Which split a song of the ``train/`` folder belongs to in a set without ``valid/`` or
    ``calibration/`` folders."""
    return "valid" if name in valid else CALIBRATION if name in calibration else "train"


def _song_folders(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir()) if f.is_dir() and not f.name.startswith(".")]


def list_tracks(root: str | os.PathLike, split: str) -> list[StemTrack]:
    """The tracks of ``split`` (``train``, ``valid``, ``calibration`` or ``test``), sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"stem set root {root} does not exist")
    if _is_musdb_mp4(root):
        return _list_mp4(root, split)
    if (root / split).is_dir() and split != "train":
        folders = _song_folders(root / split)
    elif split != "test" and (root / "train").is_dir():
        folders = _song_folders(root / "train")
        valid = frozenset() if (root / "valid").is_dir() else MUSDB_VALIDATION_TRACKS
        names = [f.name for f in folders if f.name not in valid]
        calibration = frozenset() if (root / CALIBRATION).is_dir() else carved_calibration(names)
        folders = [f for f in folders if _split_of_train_song(f.name, valid, calibration) == split]
    else:
        return []
    tracks = []
    for folder in folders:
        files = [folder / f"{part}.wav" for part in ("mixture", *SOURCES)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"stem track {folder} lacks {', '.join(missing)}")
        sizes = tuple(f.stat().st_size for f in files)
        tracks.append(StemTrack(folder.name, split, stable_hash([split, folder.name, sizes]), folder=folder,
                                sizes=sizes))
    return tracks


def _list_mp4(root: Path, split: str) -> list[StemTrack]:
    """MUSDB18's ``train/`` holds the train, valid and calibration songs, ``test/`` the test songs."""
    subset = "test" if split == "test" else "train"
    paths = sorted((root / subset).glob("*.stem.mp4"))
    names = [path.name[: -len(".stem.mp4")] for path in paths]
    calibration = carved_calibration([n for n in names if n not in MUSDB_VALIDATION_TRACKS])
    tracks = []
    for path, name in zip(paths, names):
        if subset == "train" and _split_of_train_song(name, MUSDB_VALIDATION_TRACKS, calibration) != split:
            continue
        size = path.stat().st_size
        tracks.append(StemTrack(name, split, stable_hash([split, name, size]), stem_file=path, sizes=(size,)))
    return tracks


def calibration_tracks(root: str | os.PathLike, splits: tuple[str, ...], trained: tuple[str, ...] = ("train",),
                       evaluated: tuple[str, ...] = ("test",), allow_empty: bool = False) -> list[StemTrack]:
    """The songs of ``splits`` that calibrate the thresholds, after refusing a configuration in
    which they could overlap the songs the detector trains on (``trained``) or the songs Evaluate
    scores (``evaluated``): ``ValueError`` when a split is named in both, when a song's name
    appears in a calibration split and in one of the others, or (unless ``allow_empty``) when
    ``splits`` hold no song."""
    shared = sorted(set(splits) & (set(trained) | set(evaluated)))
    if shared:
        raise ValueError(f"calibration splits {list(splits)} include {shared}, which the detector trains on "
                         f"({list(trained)}) or Evaluate scores ({list(evaluated)}): calibrate on songs of "
                         f"neither (the {CALIBRATION!r} split)")
    tracks = [t for split in splits for t in list_tracks(root, split)]
    if not tracks and not allow_empty:
        raise ValueError(f"stem set {root} has no song in the calibration splits {list(splits)}")
    names = {t.name for t in tracks}
    for role, others in (("training", trained), ("evaluation", evaluated)):
        common = sorted(names & {t.name for split in others for t in list_tracks(root, split)})
        if common:
            raise ValueError(f"calibration songs {common[:5]}{' ...' if len(common) > 5 else ''} are also "
                             f"{role} songs ({list(others)}): calibration and {role} songs must be disjoint")
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
