"""Compressed test media made in-process with PyAV's encoders (no ffmpeg program).

:func:`encode_audio` (the library's :mod:`pipeline.audio.encode`, plus video) writes float32
``(channels, samples)`` signals as the audio streams of one
container (MP3, AAC/M4A, Opus, WMA, a ``.stem.mp4`` with five streams), optionally with a small
MPEG-4 video stream (a test pattern of ``seconds`` at 10 fps) so the file is a video container;
:func:`encode_video_only` writes a video without sound.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from pipeline.audio import encode
from pipeline.audio.encode import CODECS  # noqa: F401  (the tests' codec table)


def _add_video(container: av.container.OutputContainer) -> av.video.stream.VideoStream:
    video = container.add_stream("mpeg4", rate=10)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    return video


def _write_video(container, video, seconds: float) -> None:
    for i in range(max(1, int(round(seconds * 10)))):
        picture = np.zeros((48, 64, 3), np.uint8)
        picture[:, (i * 4) % 64 :, 1] = 200
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = i
        container.mux(video.encode(frame))
    container.mux(video.encode(None))


def encode_audio(
    path: str | Path,
    signals: list[np.ndarray],
    rate: int,
    codec: str,
    container_format: str,
    bit_rate: int = 192000,
    video: bool = False,
    options: dict | None = None,
) -> Path:
    """Encode each ``(channels, n)`` float signal of ``signals`` as one audio stream of ``path``,
    with a small video stream too when ``video``."""
    if not video:
        return encode.encode_audio(path, signals, rate, codec, container_format, bit_rate, options)
    path = Path(path)
    with av.open(str(path), "w", format=container_format, options=options or {}) as out:
        picture = _add_video(out)
        encode.mux_audio(out, encode.add_audio_streams(out, signals, rate, codec, bit_rate))
        _write_video(out, picture, max(s.shape[1] for s in signals) / rate)
    return path


def encode_as(path: str | Path, signal: np.ndarray, kind: str, **kwargs) -> Path:
    """``signal`` ``(channels, n)`` at ``CODECS[kind]``'s rate, encoded as ``kind`` (a key of CODECS)."""
    codec, container_format, rate = CODECS[kind]
    return encode_audio(path, [signal], rate, codec, container_format, **kwargs)


def encode_video_only(path: str | Path, seconds: float = 2.0) -> Path:
    """An MP4 holding one MPEG-4 video stream and no audio."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        _write_video(out, _add_video(out), seconds)
    return path


def tones(rate: int, seconds: float, channels: int = 2) -> np.ndarray:
    """float32 ``(channels, n)``: two sines per channel under a slow swell, within +-0.4.

    Tonal content is what perceptual codecs keep close to the waveform; the swell makes the
    signal non-periodic, so a misalignment of even one sample shows as error.
    """
    t = np.arange(int(round(rate * seconds))) / rate
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)
    rows = [
        (0.3 * np.sin(2 * np.pi * (440 - 110 * c) * t) + 0.1 * np.sin(2 * np.pi * (1250 + 750 * c) * t)) * swell
        for c in range(channels)
    ]
    return np.stack(rows).astype(np.float32)
