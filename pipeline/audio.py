"""Audio decoding, resampling, downmixing and file checksums.

Arrays are float32 ``(channels, samples)``; rates are in Hz.  Decoding tries soundfile
(libsndfile: wav, flac, ogg, mp3, aiff, ...) first and falls back to ffmpeg for anything
else (m4a, mp4, stem.mp4, ...).  Every failure raises :class:`AudioError` with a reason a
person understands, so catalog runs can record it as a rejection and go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


# libsndfile's log line for a data chunk longer than the file: "data : 529200 (should be 264578)".
_SHORT_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # sizes written by encoders that stream to a pipe


class AudioError(Exception):
    """A file that cannot be used as audio; ``str(err)`` is the human-readable reason."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: ``frames`` samples per channel at ``sample_rate`` Hz."""

    sample_rate: int
    channels: int
    frames: int
    codec: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def file_checksum(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes as hex, read in ``chunk_bytes`` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError("file does not exist")
    if not os.access(path, os.R_OK):
        raise AudioError("file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise AudioError("file is empty (0 bytes)")


def probe(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels, length and codec of ``path`` without decoding it all."""
    path = Path(path)
    _check_readable(path)
    try:
        info = sf.info(str(path))
        return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), info.format.lower())
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _ffprobe(path)


def load(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    mono: bool = False,
    start: int = 0,
    frames: int = -1,
) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 ``(channels, samples)`` and return it with its rate in Hz.

    ``start``/``frames`` select a span in samples at the file's own rate (``frames=-1``:
    to the end).  ``sample_rate`` resamples (soxr), ``mono`` averages channels to one.
    Raises :class:`AudioError` for unreadable, empty, truncated or non-finite audio.
    """
    path = Path(path)
    _check_readable(path)
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        audio, rate = _ffmpeg_decode(path, start, frames, soundfile_error=str(err))
    else:
        with handle as fh:
            _check_not_truncated(fh)
            try:
                if start:
                    fh.seek(start)
                data = fh.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise AudioError(f"file is corrupt or truncated ({err})") from err
            rate = fh.samplerate
        audio = np.ascontiguousarray(data.T)
    if audio.shape[1] == 0:
        raise AudioError("file holds no audio samples (truncated or empty stream)")
    if not np.isfinite(audio).all():
        raise AudioError("audio contains NaN or Inf samples")
    if mono:
        audio = to_mono(audio)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return audio, int(rate)


def _check_not_truncated(fh: sf.SoundFile) -> None:
    """Raise if a WAV-family header announces more audio than the file holds."""
    match = _SHORT_CHUNK.search(fh.extra_info)
    if match and int(match.group(1)) not in _STREAMING_SIZES and int(match.group(2)) < int(match.group(1)):
        raise AudioError(f"file is truncated: its header announces {match.group(1)} bytes of audio, "
                         f"the file holds {match.group(2)}")


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average ``(channels, samples)`` to ``(1, samples)``."""
    return audio.mean(axis=0, keepdims=True, dtype=np.float32)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``(channels, samples)`` from ``rate_in`` to ``rate_out`` Hz with soxr (HQ)."""
    if rate_in == rate_out:
        return audio
    out = soxr.resample(audio.T, rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[0]).T)


def match_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Return ``audio`` with ``channels`` channels: mono is duplicated, more are downmixed."""
    if audio.shape[0] == channels:
        return audio
    if channels == 1:
        return to_mono(audio)
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    return np.repeat(to_mono(audio), channels, axis=0)


def _ffprobe(path: Path) -> AudioInfo:
    if shutil.which("ffprobe") is None:
        raise AudioError("not a format soundfile can read, and ffprobe is not installed")
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,codec_name,duration_ts,time_base,duration",
           "-of", "json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    streams = json.loads(proc.stdout or "{}").get("streams", []) if proc.returncode == 0 else []
    if not streams:
        raise AudioError("not an audio file (no decoder recognises it, no audio stream)")
    stream = streams[0]
    rate = int(stream.get("sample_rate", 0))
    duration = float(stream.get("duration", 0.0) or 0.0)
    return AudioInfo(rate, int(stream.get("channels", 0)), int(round(duration * rate)), stream.get("codec_name", "?"))


def _ffmpeg_decode(path: Path, start: int, frames: int, soundfile_error: str) -> tuple[np.ndarray, int]:
    info = _ffprobe(path)
    if info.sample_rate <= 0 or info.channels <= 0:
        raise AudioError(f"audio stream has no usable sample rate or channel count ({soundfile_error})")
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
           "-acodec", "pcm_f32le", "-ar", str(info.sample_rate), "-ac", str(info.channels), "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"ffmpeg could not decode the file: {reason[-1] if reason else 'unknown error'}")
    audio = np.frombuffer(proc.stdout, dtype="<f4").reshape(-1, info.channels).T
    stop = None if frames < 0 else start + frames
    return np.ascontiguousarray(audio[:, start:stop]), info.sample_rate
