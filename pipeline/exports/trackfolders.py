"""Track folders: the MUSDB18-HQ-style trees that music-separation trainers read (``musdb`` and
``remix-pairs`` exports).

One tree per source ``s`` whose folders hold a target for it, each a MUSDB18-HQ-style root::

    <out>/<s>/<split>/<track>/mixture.wav    the input
    <out>/<s>/<split>/<track>/<s>.wav        the target (source s)
    <out>/<s>/<split>/<track>/no_<s>.wav     the sum of the other sources (Demucs' two-stem name)
    <out>/manifest.jsonl                     one line per track written, or skipped with a reason
    <out>/export-options.json                the options the tree was made with (resuming checks them)
    <out>/export.json                        written last

``split`` is ``train`` or ``valid`` (every trainer validates on a ``valid`` folder).  The files of
a track are float32 WAV (no clipping, so ``mixture == s + no_s`` holds to float32 rounding), at
one rate and channel count, all of one length (Demucs checks it).  Only leaf folders hold audio
and no name starts with a dot, as Demucs' and ZFTurbo's scanners expect.

A track folder appears whole: it is written under a hidden temporary name and renamed; its
manifest line is appended (and flushed to disk) after the rename.  A killed export resumes where
it stopped: :class:`TrackManifest` reads the whole lines back, and a track without its line is
made again, identically, since every track is a function of the options and its own key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from pipeline.storage.outputs import atomic_path, clean_temporaries, stable_hash, write_json_atomic

MIXTURE = "mixture"
SPLITS = ("train", "valid")
WAV_SUBTYPE = "FLOAT"  # float32 samples: a remixed pair may exceed full scale, and sums stay exact
MANIFEST_LINES = "manifest.jsonl"
OPTIONS_FILE = "export-options.json"
SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile's sf_command (sndfile.h)
VALID_FRACTION = 0.1  # share of catalog files whose excerpts go to the valid split


def rest_name(source: str) -> str:
    """The file stem of the sum of the sources other than ``source`` (``no_vocals``)."""
    return f"no_{source}"


def track_dir(source: str, split: str, track: str) -> str:
    """A track's folder relative to the export: ``<source>/<split>/<track>``."""
    return f"{source}/{split}/{track}"


def split_of(catalog_checksum: str, valid_fraction: float, seed: int) -> str:
    """``valid`` for about ``valid_fraction`` of the catalog files (chosen by a hash of ``seed``
    and the file's checksum), else ``train``: all excerpts of one song land in one split."""
    if not 0.0 <= valid_fraction <= 1.0:
        raise ValueError(f"valid_fraction must be within [0, 1], got {valid_fraction}")
    draw = int(hashlib.sha256(f"{seed}:{catalog_checksum}".encode()).hexdigest()[:13], 16) / 16**13
    return "valid" if draw < valid_fraction else "train"


def excerpts_key(records: list[dict[str, Any]]) -> str:
    """A hash of the excerpts an export reads (ids and audio checksums): a resumed export
    must read the same D_i."""
    return stable_hash([(r["excerpt_id"], r.get("audio_checksum")) for r in records])


def open_wav(path: Path, sample_rate: int, channels: int) -> sf.SoundFile:
    """A float WAV open for writing, without libsndfile's PEAK chunk: that chunk holds the time
    of writing, and a track's bytes must depend on its samples only."""
    fh = sf.SoundFile(path, "w", sample_rate, channels, subtype=WAV_SUBTYPE)
    sf._snd.sf_command(fh._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)  # soundfile has no public call for it
    return fh


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write ``(channels, samples)`` float32 audio as a float WAV (:func:`open_wav`)."""
    with open_wav(path, sample_rate, audio.shape[0]) as fh:
        fh.write(np.ascontiguousarray(audio.T))


def link_or_copy(existing: Path, new: Path) -> None:
    """Make ``new`` a hard link of ``existing`` (a copy where the filesystem cannot link)."""
    try:
        os.link(existing, new)
    except OSError:
        shutil.copyfile(existing, new)


@contextlib.contextmanager
def track_folder(final: Path) -> Iterator[Path]:
    """Yield an empty hidden folder to fill; on success it replaces ``final`` whole."""
    with atomic_path(final) as tmp:
        tmp.mkdir()
        yield tmp


class TrackManifest:
    """``manifest.jsonl`` of a track-folder export, appended one line per track.

    Opening it checks that ``out`` was started with the same ``options`` (``ValueError``
    otherwise: a tree never mixes two exports), removes the temporaries a killed writer left
    (open-unmix would take a hidden folder for a track), drops a last line cut short by a kill,
    and keeps the whole lines by their ``key``.
    """

    def __init__(self, out: Path, options: dict[str, Any]) -> None:
        self.out, self.path = out, out / MANIFEST_LINES
        options = json.loads(json.dumps(options))  # the JSON form, as written and read back
        stored = out / OPTIONS_FILE
        if stored.is_file():
            before = json.loads(stored.read_text())
            if before != options:
                changed = sorted(k for k in set(before) | set(options) if before.get(k) != options.get(k))
                raise ValueError(f"{out} holds an export made with other options ({', '.join(changed)}): "
                                 "give another --out, or remove that folder")
        else:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(stored, options)
        clean_temporaries(out)
        self.lines: dict[str, dict[str, Any]] = {}
        whole = b""
        if self.path.is_file():
            data = self.path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            for text in whole.decode("utf-8").splitlines():
                line = json.loads(text)
                self.lines[line["key"]] = line
            if len(whole) != len(data):  # a line cut short by a kill: drop it
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(whole))
        self._fh = open(self.path, "ab")

    def __contains__(self, key: str) -> bool:
        return key in self.lines

    def append(self, line: dict[str, Any]) -> None:
        """Add one track's line (it must hold ``key``), on disk before this returns."""
        self._fh.write((json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.lines[line["key"]] = line

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "TrackManifest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_manifest_lines(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a track-folder export's ``manifest.jsonl``, in the order they were written."""
    return [json.loads(t) for t in (Path(out) / MANIFEST_LINES).read_text().splitlines()]
