"""The folder contracts of the trainers a user feeds a track-folder export to, read file by file.

The trainers' own dataset classes cannot be imported here: open-unmix 1.3.0 (``openunmix.data``)
and Demucs v4 (``demucs.wav``) load audio with torchaudio, and no torchaudio release matches this
project's torch 2.13.0 (every torchaudio wheel pins its own torch), so installing either would
pull a second torch.  Each reader below follows its trainer's code step by step, with the names
of the code it mirrors, and loads with soundfile what the trainer loads with torchaudio:

- open-unmix ``AlignedDataset`` (``--dataset aligned``), ``FixedSourcesTrackFolderDataset``
  (``trackfolder_fix``) and ``VariableSourcesTrackFolderDataset`` (``trackfolder_var``):
  ``openunmix/data.py`` of openunmix 1.3.0;
- Demucs v4 ``build_metadata`` / ``Wavset`` (``dset.wav``): ``demucs/wav.py``;
- ZFTurbo's Music-Source-Separation-Training ``MSSDataset`` types 1 and 4 and its validation
  folders: ``dataset.py`` and ``docs/dataset_types.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf


def _load(path: Path) -> np.ndarray:
    """``(channels, samples)`` float32, as torchaudio.load gives it."""
    audio, _ = sf.read(path, dtype="float32", always_2d=True)
    return audio.T


def _duration(path: Path) -> float:
    info = sf.info(path)
    return info.frames / info.samplerate


def openunmix_aligned(root: Path, split: str, input_file: str, output_file: str,
                      seq_duration: float | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``AlignedDataset._get_paths`` then ``__getitem__`` (start 0): ``(x, y)`` of each track folder
    of ``root/split`` holding both files (globbed), longer than ``seq_duration`` when given."""
    items = []
    for track_path in (Path(root) / split).iterdir():  # p.iterdir(), hidden folders included
        if not track_path.is_dir():
            continue
        input_path, output_path = list(track_path.glob(input_file)), list(track_path.glob(output_file))
        if not (input_path and output_path):
            continue
        if seq_duration is not None and min(_duration(input_path[0]), _duration(output_path[0])) <= seq_duration:
            continue
        items.append((_load(input_path[0]), _load(output_path[0])))
    if not items:
        raise RuntimeError("Dataset is empty, please check parameters")
    return items


def openunmix_trackfolder_fix(root: Path, split: str, target_file: str, interferer_files: list[str],
                              seq_duration: float | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``FixedSourcesTrackFolderDataset.get_tracks`` then ``__getitem__`` (start 0, no augmentation):
    ``x`` = target + interferers, ``y`` = target; folders missing a file are excluded."""
    items = []
    for track_path in (Path(root) / split).iterdir():
        if not track_path.is_dir():
            continue
        source_paths = [track_path / s for s in [*interferer_files, target_file]]
        if not all(p.exists() for p in source_paths):
            continue  # "Exclude track"
        if seq_duration is not None and min(_duration(p) for p in source_paths) <= seq_duration:
            continue
        stems = [_load(track_path / target_file)] + [_load(track_path / s) for s in interferer_files]
        items.append((np.sum(stems, axis=0), stems[0]))
    if not items:
        raise RuntimeError("No tracks found")
    return items


def openunmix_trackfolder_var(root: Path, split: str, target_file: str, ext: str = ".wav",
                              silence_missing: bool = False) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """``VariableSourcesTrackFolderDataset`` (no interferer mix, start 0): ``x`` sums every ``*ext``
    file of the folder, ``y`` is the target file, or zeros with ``--silence-missing`` when it is
    missing.  Returns ``(folder, x, y)``."""
    items = []
    for track_path in (Path(root) / split).iterdir():
        if not track_path.is_dir():
            continue
        if not ((track_path / target_file).exists() or silence_missing):
            continue
        sources = sorted(track_path.glob("*" + ext))
        if not sources:
            continue
        x, audio = 0, None
        for source_path in sources:
            if source_path == track_path / target_file:
                continue
            audio = _load(source_path)
            x = x + audio
        if (track_path / target_file).exists():
            y = _load(track_path / target_file)
            x = x + y
        else:
            y = np.zeros(audio.shape, dtype=np.float32)
        items.append((track_path, x, y))
    return items


def demucs_wavset(path: Path, sources: list[str]) -> dict[str, np.ndarray]:
    """``build_metadata`` + ``Wavset`` of ``path`` (one of ``<dset.wav>/train``, ``/valid``):
    every leaf folder below it (not hidden, not ``path`` itself) must hold ``<source>.wav`` for
    each source and ``mixture.wav``, all of one length and rate (else ValueError, as
    ``_track_metadata``); returns ``name -> (sources, channels, samples)`` and checks nothing else."""
    found = {}
    for root, folders, _ in os.walk(path, followlinks=True):
        root = Path(root)
        if root.name.startswith(".") or folders or root == Path(path):
            continue
        length = rate = None
        for source in [*sources, "mixture"]:
            info = sf.info(root / f"{source}.wav")  # ta.info raises for a missing file
            if length is None:
                length, rate = info.frames, info.samplerate
            elif (info.frames, info.samplerate) != (length, rate):
                raise ValueError(f"Invalid length or sample rate for file {root / source}.wav")
        found[str(root.relative_to(path))] = np.stack([_load(root / f"{s}.wav") for s in sources])
    return found


def zfturbo_folders(data_path: Path, instruments: list[str], validation: bool = False) -> dict[str, dict]:
    """``MSSDataset.get_metadata`` for types 1 and 4 (and the validation folders when
    ``validation``): ``glob(data_path/*)`` folders, not hidden, each with ``<instrument>.wav`` or
    ``.flac`` for every instrument (``load_source`` reads a stale or no chunk otherwise), and
    ``mixture.wav`` for validation.  Returns ``folder -> {instrument: audio}``."""
    found = {}
    for track in sorted(Path(data_path).glob("*")):
        if track.name.startswith(".") or not track.is_dir():
            continue
        stems = {}
        for instrument in [*instruments, *(["mixture"] if validation else [])]:
            files = [track / f"{instrument}.{ext}" for ext in ("wav", "flac")
                     if (track / f"{instrument}.{ext}").is_file()]
            assert files, f"Cant find file {instrument!r} in folder {track}"
            stems[instrument] = _load(files[0])
        found[track.name] = stems
    return found
