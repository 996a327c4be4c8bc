"""Audio decoding (whole or as a stream of blocks), resampling, downmixing and file checksums.

Arrays are float32 ``(channels, samples)``; rates are in Hz.  Decoding tries soundfile
(libsndfile: wav, flac, ogg, aiff, ...) first and falls back to an ffmpeg pipe for anything
else (m4a, mp4, stem.mp4, ...) and for MP3 (libsndfile 1.2 returns zeros in places when an
MP3 is read in several blocks, so MP3s are decoded by ffmpeg when it is installed, by
:func:`load` as well as by :func:`stream`; without ffmpeg an MP3 is read whole).

:func:`stream` / :class:`AudioStream` yield blocks of ``block_frames`` samples per channel
read from the file (soundfile reads, or ffmpeg's stdout read in fixed-size chunks), checked
for NaN/Inf block by block, downmixed, then resampled with ``soxr.ResampleStream`` (HQ);
memory is bounded by a block whatever the file's length.  :func:`load` is the same stream
read in one block and concatenated: ``soxr.ResampleStream`` gives exactly the samples of the
one-shot ``soxr.resample`` whatever the block sizes (``tests/test_streaming.py`` checks it),
so a track's 16 kHz signal, and hence its features, are identical whether it was loaded whole
or streamed.  Every failure raises :class:`AudioError` with a reason a person understands,
so catalog runs can record it as a rejection and go on; a stream raises it when the bad
block arrives, after the blocks before it were yielded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr


# libsndfile's log line for a data chunk longer than the file: "data : 529200 (should be 264578)".
_SHORT_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # sizes written by encoders that stream to a pipe
BLOCK_FRAMES = 1 << 16  # samples per channel per block of stream() (1.5 s at 44.1 kHz)


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
    to the end).  ``sample_rate`` resamples (soxr HQ), ``mono`` averages channels to one.
    The samples are exactly those of ``np.concatenate(list(stream(...)), axis=1)`` with the
    same arguments (whatever ``block_frames``).  Raises :class:`AudioError` for unreadable,
    empty, truncated or non-finite audio.
    """
    with open_stream(path, block_frames=None, sample_rate=sample_rate, mono=mono,
                     start=start, frames=frames) as audio_stream:
        blocks = list(audio_stream)
        rate = audio_stream.sample_rate
        if not blocks:  # e.g. one sample at 96 kHz resampled to 16 kHz
            raise AudioError(f"no samples left at {rate} Hz: the file holds {audio_stream.samples_read} "
                             f"at {audio_stream.file_rate} Hz")
    audio = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    return np.ascontiguousarray(audio), int(rate)


def stream(
    path: str | os.PathLike,
    block_frames: int | None = BLOCK_FRAMES,
    sample_rate: int | None = None,
    mono: bool = False,
    start: int = 0,
    frames: int = -1,
) -> Iterator[np.ndarray]:
    """Decode ``path`` block by block: float32 ``(channels, n)`` arrays, ``n >= 1``.

    Arguments as :func:`load`; ``block_frames`` is the number of samples per channel read
    from the file per block (``None``: the whole span at once).  After resampling a block
    holds about ``block_frames * sample_rate / file_rate`` samples (soxr's streaming
    resampler gives the same samples as :func:`resample` on the whole signal).  Memory is
    bounded by the block whatever the file's length.  The file is opened on the first
    ``next()``, so :class:`AudioError` is raised while iterating; breaking out early closes
    the file and stops ffmpeg.  Use :func:`open_stream` to know the rate before the first block.
    """
    with open_stream(path, block_frames, sample_rate, mono, start, frames) as audio_stream:
        yield from audio_stream


class AudioStream:
    """An open decoder: iterate for float32 ``(channels, n)`` blocks (see :func:`stream`).

    ``sample_rate`` (Hz) and ``channels`` describe the blocks it yields, ``file_rate`` and
    ``file_channels`` the file; ``samples_read`` counts samples per channel decoded from
    the file so far (at ``file_rate``).  Use as a context manager, or call :meth:`close`.
    Iterate once.
    """

    def __init__(self, path: str | os.PathLike, block_frames: int | None = BLOCK_FRAMES,
                 sample_rate: int | None = None, mono: bool = False, start: int = 0, frames: int = -1):
        if block_frames is not None and block_frames < 1:
            raise ValueError(f"block_frames must be >= 1 or None, got {block_frames}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.path = Path(path)
        self.samples_read = 0
        self._closers: list = []
        _check_readable(self.path)
        handle = _open_soundfile(self.path)
        if isinstance(handle, sf.SoundFile):
            self._closers.append(handle.close)
            self.file_rate, self.file_channels = int(handle.samplerate), int(handle.channels)
            if handle.format == "MP3":
                block_frames = None  # no ffmpeg: one whole read, the only one libsndfile gets right
            self._raw = _soundfile_blocks(handle, start, frames, block_frames)
        else:
            info = _ffprobe(self.path)
            if info.sample_rate <= 0 or info.channels <= 0:
                raise AudioError(f"audio stream has no usable sample rate or channel count ({handle})")
            self.file_rate, self.file_channels = info.sample_rate, info.channels
            self._raw = _ffmpeg_blocks(self.path, info, start, frames, block_frames, self._closers)
        self.mono = mono
        self.channels = 1 if mono else self.file_channels
        self.sample_rate = int(sample_rate) if sample_rate is not None else self.file_rate
        self._iterated = False

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file / stop and reap ffmpeg (idempotent)."""
        self._raw.close()
        while self._closers:
            self._closers.pop()()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._iterated:
            raise RuntimeError("an AudioStream can be iterated only once")
        self._iterated = True
        resampler = None
        if self.sample_rate != self.file_rate:
            resampler = soxr.ResampleStream(self.file_rate, self.sample_rate, self.channels,
                                            dtype="float32", quality="HQ")
        try:
            for block in self._raw:  # (file_channels, n) float32, n >= 1
                if not np.isfinite(block).all():
                    raise AudioError("audio contains NaN or Inf samples")
                self.samples_read += block.shape[1]
                if self.mono:
                    block = to_mono(block)
                if resampler is not None:
                    block = _resample_chunk(resampler, block, last=False)
                if block.shape[1]:
                    yield block
            if self.samples_read == 0:
                raise AudioError("file holds no audio samples (truncated or empty stream)")
            if resampler is not None:
                tail = _resample_chunk(resampler, np.zeros((self.channels, 0), np.float32), last=True)
                if tail.shape[1]:
                    yield tail
        finally:
            self.close()


def open_stream(path: str | os.PathLike, block_frames: int | None = BLOCK_FRAMES,
                sample_rate: int | None = None, mono: bool = False, start: int = 0,
                frames: int = -1) -> AudioStream:
    """Open ``path`` for block decoding (arguments as :func:`stream`); raises :class:`AudioError`
    at once for files that cannot be opened, and while iterating for bad content."""
    return AudioStream(path, block_frames, sample_rate, mono, start, frames)


def _resample_chunk(resampler: soxr.ResampleStream, block: np.ndarray, last: bool) -> np.ndarray:
    out = resampler.resample_chunk(np.ascontiguousarray(block.T), last=last)
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, block.shape[0]).T)


def _open_soundfile(path: Path) -> sf.SoundFile | str:
    """An open ``SoundFile`` for what libsndfile streams correctly, else the reason to use ffmpeg.

    MPEG audio goes to ffmpeg when it is installed: libsndfile 1.2's MP3 decoder returns
    zeros in places when a file is read in several blocks (a whole read is right).
    """
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        return str(err)
    if handle.format == "MP3" and shutil.which("ffmpeg") is not None:
        handle.close()
        return "MPEG audio is decoded by ffmpeg"
    try:
        _check_not_truncated(handle)
    except AudioError:
        handle.close()
        raise
    return handle


def _soundfile_blocks(fh: sf.SoundFile, start: int, frames: int, block_frames: int | None) -> Iterator[np.ndarray]:
    """``(channels, n)`` float32 blocks of ``fh`` from sample ``start``, ``frames`` in all (-1: to the end)."""
    try:
        if start:
            fh.seek(start)
        remaining = frames if frames >= 0 else None
        while remaining is None or remaining > 0:
            want = -1 if block_frames is None else block_frames
            if remaining is not None:
                want = remaining if want < 0 else min(want, remaining)
            data = fh.read(want, dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                break
            if remaining is not None:
                remaining -= data.shape[0]
            yield np.ascontiguousarray(data.T)
            if block_frames is None and remaining is None:
                break
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"file is corrupt or truncated ({err})") from err


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
        if proc.returncode == 0:
            raise AudioError("no audio stream: the container holds no sound (a video-only or data file)")
        detail = "; ".join(re.sub(r" @ 0x[0-9a-f]+", "", line.replace(str(path), "").lstrip(": "))
                           for line in proc.stderr.strip().splitlines())[:200]
        raise AudioError("not an audio file, or one with a corrupt header: no decoder recognises its "
                         f"format (ffprobe: {detail or 'no details'})")
    stream = streams[0]
    rate = int(stream.get("sample_rate", 0))
    duration = float(stream.get("duration", 0.0) or 0.0)
    return AudioInfo(rate, int(stream.get("channels", 0)), int(round(duration * rate)), stream.get("codec_name", "?"))


def _ffmpeg_blocks(path: Path, info: AudioInfo, start: int, frames: int, block_frames: int | None,
                   closers: list) -> Iterator[np.ndarray]:
    """``(channels, n)`` float32 blocks decoded by an ffmpeg pipe, read incrementally.

    The span is cut by counting samples (exact, whatever the codec's seeking).  stderr goes
    to a temporary file, so ffmpeg never blocks on it; the process is killed and reaped
    when the generator is closed before the end.
    """
    if shutil.which("ffmpeg") is None:
        raise AudioError("not a format soundfile can read, and ffmpeg is not installed")
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
           "-acodec", "pcm_f32le", "-ar", str(info.sample_rate), "-ac", str(info.channels), "-"]
    errors = tempfile.TemporaryFile()
    closers.append(errors.close)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)

    def stop() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()

    closers.append(stop)
    frame_bytes = 4 * info.channels
    chunk = frame_bytes * (block_frames if block_frames is not None else 1 << 16)
    skip, remaining = start, frames if frames >= 0 else None
    pending = b""
    while remaining is None or remaining > 0:
        data = proc.stdout.read(chunk)
        if not data:
            break
        data = pending + data
        usable = len(data) - len(data) % frame_bytes
        pending = data[usable:]
        block = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, info.channels)
        if skip:
            dropped = min(skip, block.shape[0])
            block, skip = block[dropped:], skip - dropped
        if remaining is not None:
            block = block[:remaining]
            remaining -= block.shape[0]
        if block.shape[0]:
            yield np.ascontiguousarray(block.T, dtype=np.float32)
    if remaining is not None and remaining <= 0:
        return  # the span is complete: the rest of the file is not decoded (stop() kills ffmpeg)
    if proc.wait() != 0:
        errors.seek(0)
        reason = errors.read().decode(errors="replace").strip().splitlines()
        raise AudioError(f"ffmpeg could not decode the file: {reason[-1] if reason else 'unknown error'}")
