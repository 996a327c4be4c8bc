"""What every decoding backend shares: the error type and the probe result."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.rejects import Rejected


class AudioError(Rejected):
    """A file that cannot be used as audio; ``str(err)`` is the human-readable reason and
    ``err.kind`` its kind (:mod:`pipeline.rejects`), set where it is raised."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: ``frames`` samples per channel at ``sample_rate`` Hz.

    ``codec`` names the format (soundfile: ``wav``, ``flac``, ...) or the codec (PyAV: ``mp3``,
    ``aac``, ``opus``, ...); ``streams`` counts the file's audio streams (5 in a ``.stem.mp4``).
    """

    sample_rate: int
    channels: int
    frames: int
    codec: str
    streams: int = 1

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0
