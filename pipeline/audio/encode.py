"""Encoding float32 ``(channels, samples)`` audio with PyAV's encoders (MP3, AAC/M4A, Opus, WMA).

For formats libsndfile cannot write (AAC in an MP4/M4A container, WMA) and for multi-stream
containers (``.stem.mp4``: one audio stream per signal).  In-process: PyAV's wheels bundle
FFmpeg's libraries, no ffmpeg program is run.  The demo corpus writes its M4A catalog tracks
with it; the decoding tests encode their MP3, AAC, Opus, WMA and ``.stem.mp4`` inputs with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

# name -> (codec, container format, sample rate the codec takes), for :func:`encode_as`.
CODECS: dict[str, tuple[str, str, int]] = {
    "mp3": ("libmp3lame", "mp3", 44100),
    "m4a": ("aac", "ipod", 44100),
    "opus": ("libopus", "ogg", 48000),
    "wma": ("wmav2", "asf", 44100),
}


def audio_frame(chunk: np.ndarray, format_name: str, layout: str, rate: int) -> av.AudioFrame:
    """``(channels, n)`` float samples as an AudioFrame in the encoder's sample format
    (``flt``, ``s16`` or ``s32``, packed or planar), rate ``rate`` Hz."""
    base, planar = format_name.rstrip("p"), format_name.endswith("p")
    if base == "flt":
        data = chunk.astype(np.float32)
    elif base == "s16":
        data = np.clip(np.rint(chunk * 32767.0), -32768, 32767).astype(np.int16)
    elif base == "s32":
        data = np.clip(np.rint(chunk.astype(np.float64) * 2147483647.0), -2**31, 2**31 - 1).astype(np.int32)
    else:
        raise ValueError(f"no conversion to the sample format {format_name}")
    if not planar:
        data = data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=format_name, layout=layout)
    frame.sample_rate = rate
    return frame


def add_audio_streams(out: av.container.OutputContainer, signals: list[np.ndarray], rate: int, codec: str,
                      bit_rate: int) -> list:
    """Add one ``codec`` stream per ``(channels, n)`` signal to ``out``; return ``(stream, signal)`` pairs."""
    streams = []
    for signal in signals:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "stereo" if signal.shape[0] == 2 else "mono"
        stream.bit_rate = bit_rate
        streams.append((stream, signal))
    return streams


def mux_audio(out: av.container.OutputContainer, streams: list) -> None:
    """Encode and mux every ``(stream, signal)`` pair, in frames of the codec's frame size."""
    for stream, signal in streams:
        size = stream.codec_context.frame_size or 1024
        format_name, layout = stream.codec_context.format.name, stream.layout.name
        for first in range(0, signal.shape[1], size):
            frame = audio_frame(signal[:, first:first + size], format_name, layout, stream.codec_context.sample_rate)
            frame.pts = first
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def encode_audio(path: str | os.PathLike, signals: list[np.ndarray], rate: int, codec: str, container_format: str,
                 bit_rate: int = 192000, options: dict | None = None) -> Path:
    """Encode each float32 ``(channels, n)`` signal of ``signals`` (at ``rate`` Hz) as one audio
    stream of ``path`` (``container_format`` is FFmpeg's muxer name: ``mp3``, ``ipod``, ``ogg``,
    ``asf``, ``mp4``, ...)."""
    path = Path(path)
    with av.open(str(path), "w", format=container_format, options=options or {}) as out:
        mux_audio(out, add_audio_streams(out, signals, rate, codec, bit_rate))
    return path


def encode_as(path: str | os.PathLike, signal: np.ndarray, kind: str, **kwargs) -> Path:
    """``signal`` ``(channels, n)`` at ``CODECS[kind]``'s rate, encoded as ``kind`` (a key of CODECS)."""
    codec, container_format, rate = CODECS[kind]
    return encode_audio(path, [signal], rate, codec, container_format, **kwargs)
