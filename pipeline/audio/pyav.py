"""The PyAV backend: MP3, AAC/M4A, MP4 and other video containers, Opus, WMA, ``.stem.mp4``.

PyAV wraps FFmpeg's libraries in-process (its wheels bundle them): no ffmpeg or ffprobe
program is run.  :class:`Decoder` decodes one audio stream of a container (by default the
first; a ``.stem.mp4`` holds five) packet by packet, converts each decoded frame to float32
``(channels, n)`` exactly as FFmpeg's own sample-format conversion does (``s16 / 2**15``,
``s32 / 2**31``, ``(u8 - 128) / 128``, floats as they are) and regroups the frames into blocks
of a fixed number of samples, so memory is bounded by a block whatever the file's length.

FFmpeg applies the codec's gapless information itself: the encoder delay of MP3 (LAME/Xing
header), Opus (pre-skip) and AAC in MP4 (edit list) is removed, so sample ``k`` decoded here
is sample ``k`` of what was encoded (``tests/test_decoding.py`` checks it per codec).

Reasons for :class:`AudioError` are the ones :mod:`pipeline.mining.datasets` sorts into
kinds: "not an audio file ... corrupt header", "truncated", "corrupt", "no audio stream".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from pipeline import rejects
from pipeline.audio.common import AudioError, AudioInfo

# FFmpeg's messages go to the "libav" logger (shown by whatever logging the program set up,
# never printed otherwise); at ERROR level PyAV keeps the last one, which the reasons below
# quote.  Only errors are forwarded (PyAV's default is none, which leaves errors without detail).
logging.getLogger("libav").addHandler(logging.NullHandler())
av.logging.set_level(av.logging.ERROR)

# Demuxers whose stream duration comes from an index written after the audio (MP4's moov
# atom, Matroska's segment info), so a file cut short still announces its full length.
_INDEXED_DEMUXERS = {"mov", "mp4", "m4a", "matroska", "webm"}
_TRUNCATION_SLACK_S = 0.1  # codec padding and priming are far shorter


def _detail(err: av.error.FFmpegError) -> str:
    """FFmpeg's last error message for ``err`` (``"mp3: Header missing"``), else its strerror."""
    log = getattr(err, "log", None)
    if log and len(log) >= 3 and log[2]:
        return f"{log[1]}: {str(log[2]).strip()}" if log[1] else str(log[2]).strip()
    return str(err.strerror or err)


def open_container(path: str | os.PathLike) -> av.container.InputContainer:
    """Open ``path`` with PyAV for reading; :class:`AudioError` with a plain reason if it cannot."""
    try:
        return av.open(str(path), mode="r", metadata_errors="replace")
    except av.error.EOFError as err:
        raise AudioError(
            f"file is truncated: it ends inside its header ({_detail(err)})", kind=rejects.CORRUPT
        ) from err
    except av.error.InvalidDataError as err:
        detail = _detail(err)
        if "moov atom not found" in detail and _starts_like_mp4(path):
            raise AudioError(
                "file is truncated or unfinished: its MP4 index (moov atom) is missing", kind=rejects.CORRUPT
            ) from err
        raise AudioError(
            f"not an audio file, or one with a corrupt header: no decoder recognises its format ({detail})",
            kind=rejects.NOT_AUDIO,
        ) from err
    except av.error.FFmpegError as err:
        raise AudioError(f"could not decode the file ({_detail(err)})", kind=rejects.CORRUPT) from err


def _starts_like_mp4(path: str | os.PathLike) -> bool:
    """True if the file begins with an MP4 box (``ftyp``, ``mdat``, ...): an MP4 cut before its index."""
    with open(path, "rb") as fh:
        return fh.read(8)[4:8] in (b"ftyp", b"mdat", b"moov", b"free", b"wide", b"skip")


def _audio_stream(container: av.container.InputContainer, index: int) -> av.audio.stream.AudioStream:
    streams = container.streams.audio
    if not streams:
        raise AudioError(
            "no audio stream: the container holds no sound (a video-only or data file)", kind=rejects.NO_AUDIO_STREAM
        )
    if not 0 <= index < len(streams):
        raise AudioError(
            f"the file holds {len(streams)} audio stream(s); stream {index} was asked for", kind=rejects.OTHER
        )
    stream = streams[index]
    context = stream.codec_context
    if context.sample_rate <= 0 or context.channels <= 0:
        raise AudioError(
            f"could not decode the file: its audio stream {index} has no usable sample rate or "
            f"channel count ({context.name})",
            kind=rejects.CORRUPT,
        )
    return stream


def _announced_frames(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> int | None:
    """Samples per channel that the container says the stream lasts, or None if it does not say."""
    rate = stream.codec_context.sample_rate
    if stream.duration and stream.time_base:
        return int(round(stream.duration * stream.time_base * rate))
    if container.duration:
        return int(round(container.duration * rate / av.time_base))
    return None


def probe(path: str | os.PathLike, audio_stream: int = 0) -> AudioInfo:
    """Rate, channels, length and codec of audio stream ``audio_stream`` of ``path``.

    ``frames`` comes from the container's duration (MP4/Matroska index, MP3 Xing/LAME header
    or, without one, FFmpeg's estimate from the bitrate; Ogg's last granule position): no
    decoding.  It can differ from the decoded count by the codec's priming and padding (up to
    a few thousand samples, e.g. Opus's pre-skip) and, for a VBR MP3 without a Xing header, by
    the bitrate estimate's error.  Only a container that gives no duration at all (raw ADTS
    AAC streamed without a header, for instance) is decoded once to count its samples.
    """
    with open_container(path) as container:
        stream = _audio_stream(container, audio_stream)
        context = stream.codec_context
        frames = _announced_frames(container, stream)
        if frames is None:
            frames = sum(block.shape[1] for block in _decoded_frames(container, stream))
        return AudioInfo(
            int(context.sample_rate),
            int(context.channels),
            frames,
            context.codec.canonical_name,
            len(container.streams.audio),
        )


def _to_float(frame: av.AudioFrame, channels: int) -> np.ndarray:
    """One decoded frame as float32 ``(channels, samples)``, FFmpeg's scaling of integer formats."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
        data = data.reshape(-1, channels).T
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if data.dtype.kind == "i":
        return (data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


def _decoded_frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[np.ndarray]:
    """Float32 ``(channels, n)`` arrays, one per decoded frame, demuxing only ``stream``'s packets."""
    rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    decoded = 0
    try:
        for packet in container.demux(stream):  # ends with an empty packet that flushes the decoder
            for frame in packet.decode():
                if frame.sample_rate != rate:
                    raise AudioError(
                        f"could not decode the file as one signal: its sample rate changes from "
                        f"{rate} Hz to {frame.sample_rate} Hz after {decoded / rate:.2f} s",
                        kind=rejects.CORRUPT,
                    )
                if frame.layout.nb_channels != channels:
                    raise AudioError(
                        f"could not decode the file as one signal: its channel count changes from "
                        f"{channels} to {frame.layout.nb_channels} after {decoded / rate:.2f} s",
                        kind=rejects.CORRUPT,
                    )
                if frame.samples:
                    block = _to_float(frame, channels)
                    decoded += block.shape[1]
                    yield block
    except av.error.FFmpegError as err:
        raise AudioError(
            f"file is corrupt or truncated: decoding failed after {decoded / rate:.2f} s of audio ({_detail(err)})",
            kind=rejects.CORRUPT,
        ) from err


class Decoder:
    """Audio stream ``audio_stream`` of ``path`` opened with PyAV (``rate`` Hz, ``channels``).

    :meth:`blocks` decodes it; :meth:`close` closes the file (idempotent).
    """

    def __init__(self, path: str | os.PathLike, audio_stream: int = 0):
        self.path = Path(path)
        self.container = open_container(self.path)
        try:
            self.stream = _audio_stream(self.container, audio_stream)
        except AudioError:
            self.container.close()
            raise
        context = self.stream.codec_context
        self.rate, self.channels = int(context.sample_rate), int(context.channels)
        self.codec = context.codec.canonical_name

    def close(self) -> None:
        self.container.close()

    def blocks(self, start: int = 0, frames: int = -1, block_frames: int | None = 1 << 16) -> Iterator[np.ndarray]:
        """Float32 ``(channels, n)`` blocks of ``block_frames`` samples (the last may be shorter;
        ``None``: one block), from sample ``start``, ``frames`` in all (-1: to the end).

        The span is cut by counting decoded samples (exact, whatever the codec's seeking), so the
        samples before ``start`` are decoded and dropped.  Read to the end, a stream of an MP4 or
        Matroska file that holds more than 0.1 s less than its index announces raises "file is
        truncated" (their index is written after the audio; other containers' lengths are
        estimates or shrink with the file, so a cut MP3 or Ogg decodes to the audio it holds).
        """
        skip, remaining = start, (frames if frames >= 0 else None)
        pending: list[np.ndarray] = []
        pending_n = decoded = 0
        for block in _decoded_frames(self.container, self.stream):
            decoded += block.shape[1]
            if skip:
                dropped = min(skip, block.shape[1])
                block, skip = block[:, dropped:], skip - dropped
            if remaining is not None:
                block = block[:, :remaining]
                remaining -= block.shape[1]
            if block.shape[1]:
                pending.append(block)
                pending_n += block.shape[1]
            if block_frames is not None and pending_n >= block_frames:
                joined = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
                full = pending_n - pending_n % block_frames
                for first in range(0, full, block_frames):
                    yield np.ascontiguousarray(joined[:, first : first + block_frames])
                pending = [joined[:, full:]] if full < pending_n else []
                pending_n -= full
            if remaining == 0:
                break
        if pending_n:
            yield np.ascontiguousarray(np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0])
        if remaining is None:
            self._check_complete(decoded)

    def _check_complete(self, decoded: int) -> None:
        if not set(self.container.format.name.split(",")) & _INDEXED_DEMUXERS:
            return
        announced = _announced_frames(self.container, self.stream)
        if announced and announced - decoded > _TRUNCATION_SLACK_S * self.rate:
            raise AudioError(
                f"file is truncated: its container announces {announced / self.rate:.3f} s of "
                f"audio, it holds {decoded / self.rate:.3f} s",
                kind=rejects.CORRUPT,
            )


def library_versions() -> dict[str, str]:
    """PyAV's version and the FFmpeg release and library versions it was built with."""
    return {
        "av": av.__version__,
        "ffmpeg": str(av.ffmpeg_version_info),
        **{name: ".".join(map(str, version)) for name, version in sorted(av.library_versions.items())},
    }
