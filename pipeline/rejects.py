"""Why an input file is rejected: the kinds of reject, and the error that carries one.

Every error that rejects a file (:class:`pipeline.audio.common.AudioError`, the extraction's
``ExtractionError``) derives from :class:`Rejected` and names its kind where it is raised; the
rejects tables (:data:`REJECTS_SCHEMA`, written by the scan, the features and the extraction)
store it in their ``kind`` column, so counts by kind never depend on how a reason is worded.
"""

from __future__ import annotations

import pyarrow as pa

UNREADABLE = "unreadable"  # missing, permission denied, an I/O error
NOT_UTF8 = "file name not UTF-8"
NOT_REGULAR = "not a regular file"  # a named pipe, socket or device: never opened
DUPLICATE = "duplicate"  # the same bytes as a track already listed
EMPTY = "empty"  # 0 bytes
CORRUPT = "truncated or corrupt"
NO_AUDIO_STREAM = "no audio stream"  # a container without sound
NOT_AUDIO = "not audio"  # no decoder recognises the file
NOT_FINITE = "NaN or Inf audio"
NO_SAMPLES = "no samples"
TOO_SHORT = "too short"  # shorter than the minimum excerpt
TOO_MANY_CHANNELS = "too many channels"
CHANGED = "changed since scan"  # its checksum differs from the catalog scan's
DETECTOR_OUTPUT = "detector output"  # the detector's probabilities for it are missing or malformed
OTHER = "other"

KINDS: tuple[str, ...] = (UNREADABLE, NOT_UTF8, NOT_REGULAR, DUPLICATE, EMPTY, CORRUPT, NO_AUDIO_STREAM, NOT_AUDIO,
                          NOT_FINITE, NO_SAMPLES, TOO_SHORT, TOO_MANY_CHANNELS, CHANGED, DETECTOR_OUTPUT, OTHER)


# Rejected inputs, one row per (file, stage).
REJECTS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("track_id", pa.string()),  # empty when the file could not even be read
        ("stage", pa.string()),
        ("kind", pa.string()),  # one of KINDS, set where the error was raised
        ("reason", pa.string()),
    ]
)


class Rejected(Exception):
    """An input that cannot be used; ``str(err)`` is the reason for people, ``err.kind`` one of
    :data:`KINDS`."""

    def __init__(self, reason: str, kind: str = OTHER):
        if kind not in KINDS:
            raise ValueError(f"unknown reject kind {kind!r}; one of {KINDS}")
        super().__init__(reason)
        self.kind = kind


def kind_of(err: BaseException) -> str:
    """The kind of any error that rejected a file (:data:`OTHER` for one that names none)."""
    return getattr(err, "kind", OTHER) if isinstance(err, Rejected) else OTHER
