"""Audio decoding (whole or as a stream of blocks), resampling, downmixing and file checksums.

Arrays are float32 ``(channels, samples)``; rates are in Hz.  Two decoders, both in-process
(no ffmpeg or ffprobe program is ever run):

* soundfile (libsndfile) for what it decodes correctly: WAV, FLAC, Ogg Vorbis, AIFF and the
  other PCM containers;
* PyAV (FFmpeg's libraries, bundled in its wheels; :mod:`pipeline.audio.pyav`) for everything
  else: MP3 (libsndfile 1.2 returns zeros in places when an MP3 is read in several blocks),
  Opus, AAC/M4A, MP4 and other video containers (their first audio stream), WMA, and each of
  the five streams of a ``.stem.mp4`` (``audio_stream=k``).

:func:`stream` / :class:`AudioStream` yield blocks of ``block_frames`` samples per channel
read from the file, checked for NaN/Inf block by block, downmixed, then resampled with
``soxr.ResampleStream`` (HQ); memory is bounded by a block whatever the file's length.
:func:`load` is the same stream read in one block and concatenated: ``soxr.ResampleStream``
gives exactly the samples of the one-shot ``soxr.resample`` whatever the block sizes
(``tests/test_streaming.py`` checks it), so a track's 16 kHz signal, and hence its features,
are identical whether it was loaded whole or streamed.  Every failure raises
:class:`AudioError` with a reason a person understands, so catalog runs can record it as a
rejection and go on; a stream raises it when the bad block arrives, after the blocks before
it were yielded.  :func:`decoder_fingerprint` names the decoders' versions, for manifests and
the keys of stages that decode audio.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from pipeline import rejects
from pipeline.audio import pyav
from pipeline.audio.common import AudioError, AudioInfo

__all__ = ["AudioError", "AudioInfo", "AudioStream", "BLOCK_FRAMES", "decoder_fingerprint", "file_checksum",
           "load", "match_channels", "open_stream", "probe", "resample", "stream", "to_mono"]

# libsndfile's log line for a data chunk longer than the file: "data : 529200 (should be 264578)".
_SHORT_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # sizes written by encoders that stream to a pipe
BLOCK_FRAMES = 1 << 16  # samples per channel per block of stream() (1.5 s at 44.1 kHz)
# What libsndfile opens but PyAV decodes: MPEG audio (block reads give zeros in places) and Opus.
_PYAV_FORMATS = {"MP3"}
_PYAV_SUBTYPES = {"MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III", "OPUS"}


@functools.lru_cache(maxsize=None)
def _fingerprint() -> dict:
    return {"soundfile": sf.__version__, "libsndfile": sf.__libsndfile_version__, "soxr": soxr.__version__,
            **pyav.library_versions()}


def decoder_fingerprint() -> dict:
    """What turns files into samples here: versions of soundfile, libsndfile, soxr (the
    resampler of :func:`stream`), PyAV, and the FFmpeg release and libraries PyAV runs
    (``libavcodec`` ...), as ``{name: version string}``."""
    return copy.deepcopy(_fingerprint())


def file_checksum(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes as hex, read in ``chunk_bytes`` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError("file does not exist", kind=rejects.UNREADABLE)
    if not os.access(path, os.R_OK):
        raise AudioError("file is not readable (permission denied)", kind=rejects.UNREADABLE)
    if path.stat().st_size == 0:
        raise AudioError("file is empty (0 bytes)", kind=rejects.EMPTY)


def probe(path: str | os.PathLike, audio_stream: int = 0) -> AudioInfo:
    """Sample rate, channels, length and codec of ``path`` without decoding it all.

    soundfile's formats: the exact length from the header.  PyAV's: the container's duration
    (see :func:`pipeline.audio.pyav.probe`: within the codec's priming/padding of the decoded
    count; decoded once only when the container states no duration).  ``audio_stream`` picks
    one stream of a multi-stream file (a ``.stem.mp4``: 0 = mixture, 1..4 = the sources).
    """
    path = Path(path)
    _check_readable(path)
    handle = _open_soundfile(path, check=False)
    if handle is None:
        return pyav.probe(path, audio_stream)
    with handle:
        _only_stream(audio_stream)
        return AudioInfo(int(handle.samplerate), int(handle.channels), int(handle.frames), handle.format.lower())


def load(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    mono: bool = False,
    start: int = 0,
    frames: int = -1,
    audio_stream: int = 0,
) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 ``(channels, samples)`` and return it with its rate in Hz.

    ``start``/``frames`` select a span in samples at the file's own rate (``frames=-1``:
    to the end).  ``sample_rate`` resamples (soxr HQ), ``mono`` averages channels to one.
    ``audio_stream`` picks a stream of a multi-stream file (see :func:`probe`).
    The samples are exactly those of ``np.concatenate(list(stream(...)), axis=1)`` with the
    same arguments (whatever ``block_frames``).  Raises :class:`AudioError` for unreadable,
    empty, truncated or non-finite audio.
    """
    with open_stream(path, block_frames=None, sample_rate=sample_rate, mono=mono,
                     start=start, frames=frames, audio_stream=audio_stream) as audio_stream_:
        blocks = list(audio_stream_)
        rate = audio_stream_.sample_rate
        if not blocks:  # e.g. one sample at 96 kHz resampled to 16 kHz
            raise AudioError(f"no samples left at {rate} Hz: the file holds {audio_stream_.samples_read} "
                             f"at {audio_stream_.file_rate} Hz", kind=rejects.NO_SAMPLES)
    audio = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    return np.ascontiguousarray(audio), int(rate)


def stream(
    path: str | os.PathLike,
    block_frames: int | None = BLOCK_FRAMES,
    sample_rate: int | None = None,
    mono: bool = False,
    start: int = 0,
    frames: int = -1,
    audio_stream: int = 0,
) -> Iterator[np.ndarray]:
    """Decode ``path`` block by block: float32 ``(channels, n)`` arrays, ``n >= 1``.

    Arguments as :func:`load`; ``block_frames`` is the number of samples per channel read
    from the file per block (``None``: the whole span at once).  After resampling a block
    holds about ``block_frames * sample_rate / file_rate`` samples (soxr's streaming
    resampler gives the same samples as :func:`resample` on the whole signal).  Memory is
    bounded by the block whatever the file's length.  The file is opened on the first
    ``next()``, so :class:`AudioError` is raised while iterating; breaking out early closes
    the file.  Use :func:`open_stream` to know the rate before the first block.
    """
    with open_stream(path, block_frames, sample_rate, mono, start, frames, audio_stream) as opened:
        yield from opened


class AudioStream:
    """An open decoder: iterate for float32 ``(channels, n)`` blocks (see :func:`stream`).

    ``sample_rate`` (Hz) and ``channels`` describe the blocks it yields, ``file_rate`` and
    ``file_channels`` the file; ``samples_read`` counts samples per channel decoded from
    the file so far (at ``file_rate``); ``decoder`` is ``"soundfile"`` or ``"pyav"``.  Use as
    a context manager, or call :meth:`close`.  Iterate once.
    """

    def __init__(self, path: str | os.PathLike, block_frames: int | None = BLOCK_FRAMES,
                 sample_rate: int | None = None, mono: bool = False, start: int = 0, frames: int = -1,
                 audio_stream: int = 0):
        if block_frames is not None and block_frames < 1:
            raise ValueError(f"block_frames must be >= 1 or None, got {block_frames}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.path = Path(path)
        self.samples_read = 0
        self._closers: list = []
        _check_readable(self.path)
        handle = _open_soundfile(self.path)
        if handle is not None:
            self._closers.append(handle.close)
            try:
                _only_stream(audio_stream)
            except AudioError:
                self._close_files()
                raise
            self.decoder = "soundfile"
            self.file_rate, self.file_channels = int(handle.samplerate), int(handle.channels)
            self._raw = _soundfile_blocks(handle, start, frames, block_frames)
        else:
            decoder = pyav.Decoder(self.path, audio_stream)
            self._closers.append(decoder.close)
            self.decoder = "pyav"
            self.file_rate, self.file_channels = decoder.rate, decoder.channels
            self._raw = decoder.blocks(start, frames, block_frames)
        self.mono = mono
        self.channels = 1 if mono else self.file_channels
        self.sample_rate = int(sample_rate) if sample_rate is not None else self.file_rate
        self._iterated = False

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _close_files(self) -> None:
        while self._closers:
            self._closers.pop()()

    def close(self) -> None:
        """Stop decoding and close the file (idempotent)."""
        self._raw.close()
        self._close_files()

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
                    raise AudioError("audio contains NaN or Inf samples", kind=rejects.NOT_FINITE)
                self.samples_read += block.shape[1]
                if self.mono:
                    block = to_mono(block)
                if resampler is not None:
                    block = _resample_chunk(resampler, block, last=False)
                if block.shape[1]:
                    yield block
            if self.samples_read == 0:
                raise AudioError("file holds no audio samples (truncated or empty stream)", kind=rejects.NO_SAMPLES)
            if resampler is not None:
                tail = _resample_chunk(resampler, np.zeros((self.channels, 0), np.float32), last=True)
                if tail.shape[1]:
                    yield tail
        finally:
            self.close()


def open_stream(path: str | os.PathLike, block_frames: int | None = BLOCK_FRAMES,
                sample_rate: int | None = None, mono: bool = False, start: int = 0,
                frames: int = -1, audio_stream: int = 0) -> AudioStream:
    """Open ``path`` for block decoding (arguments as :func:`stream`); raises :class:`AudioError`
    at once for files that cannot be opened, and while iterating for bad content."""
    return AudioStream(path, block_frames, sample_rate, mono, start, frames, audio_stream)


def _only_stream(audio_stream: int) -> None:
    """soundfile's formats hold one audio stream."""
    if audio_stream != 0:
        raise AudioError(f"the file holds 1 audio stream; stream {audio_stream} was asked for", kind=rejects.OTHER)


def _resample_chunk(resampler: soxr.ResampleStream, block: np.ndarray, last: bool) -> np.ndarray:
    out = resampler.resample_chunk(np.ascontiguousarray(block.T), last=last)
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, block.shape[0]).T)


def _open_soundfile(path: Path, check: bool = True) -> sf.SoundFile | None:
    """An open ``SoundFile`` for what libsndfile decodes correctly, else None (PyAV's formats).

    None for files libsndfile cannot open and for MPEG audio and Opus, which it opens: its
    MP3 decoder returns zeros in places when a file is read in several blocks.  ``check``
    raises :class:`AudioError` for a WAV-family header that announces more than the file holds.
    """
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    if handle.format in _PYAV_FORMATS or handle.subtype in _PYAV_SUBTYPES:
        handle.close()
        return None
    if check:
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
        raise AudioError(f"file is corrupt or truncated ({err})", kind=rejects.CORRUPT) from err


def _check_not_truncated(fh: sf.SoundFile) -> None:
    """Raise if a WAV-family header announces more audio than the file holds."""
    match = _SHORT_CHUNK.search(fh.extra_info)
    if match and int(match.group(1)) not in _STREAMING_SIZES and int(match.group(2)) < int(match.group(1)):
        raise AudioError(f"file is truncated: its header announces {match.group(1)} bytes of audio, "
                         f"the file holds {match.group(2)}", kind=rejects.CORRUPT)


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
