"""Fixed Ogg stream serial numbers (pipeline.audio.ogg) on files libsndfile writes."""

import io

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio.ogg import page_crc, page_spans, with_stream_serial

RATE = 22050


def _vorbis(seconds: float = 2.0) -> tuple[bytes, np.ndarray]:
    """An Ogg Vorbis file of a stereo tone (libsndfile: a random serial) and its decoded samples."""
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, tone.astype(np.float32), RATE, format="OGG", subtype="VORBIS")
    data = buffer.getvalue()
    return data, sf.read(io.BytesIO(data), dtype="float32")[0]


def _serials(data: bytes) -> set[int]:
    return {int.from_bytes(data[a + 14:a + 18], "little") for a, _ in page_spans(data)}


def test_fixed_serial_gives_identical_bytes_and_the_same_audio():
    first, audio = _vorbis()
    second, _ = _vorbis()
    assert len(page_spans(first)) > 2
    fixed_first, fixed_second = with_stream_serial(first, 1234), with_stream_serial(second, 1234)
    assert fixed_first == fixed_second
    assert _serials(fixed_first) == {1234}
    assert len(fixed_first) == len(first)
    # libogg checks each page's CRC when it reads: a wrong one would drop pages and samples
    decoded = sf.read(io.BytesIO(fixed_first), dtype="float32")[0]
    np.testing.assert_array_equal(decoded, audio)
    # only the serial and CRC fields of each page changed
    changed = {i for i, (a, b) in enumerate(zip(first, fixed_first)) if a != b}
    allowed = {start + k for start, _ in page_spans(first) for k in (*range(14, 18), *range(22, 26))}
    assert changed <= allowed
    assert with_stream_serial(fixed_first, int.from_bytes(first[14:18], "little")) == first


def test_page_crc_matches_libogg():
    data, _ = _vorbis(0.5)
    for start, stop in page_spans(data):
        page = bytearray(data[start:stop])
        stored = int.from_bytes(page[22:26], "little")
        page[22:26] = b"\0\0\0\0"
        assert page_crc(page) == stored


def test_bad_input_is_refused():
    data, _ = _vorbis(0.5)
    with pytest.raises(ValueError, match="truncated"):
        with_stream_serial(data[:-10], 1)
    with pytest.raises(ValueError, match="no Ogg page"):
        with_stream_serial(b"RIFF" + data[4:], 1)
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    with pytest.raises(ValueError, match="wrong CRC"):
        with_stream_serial(bytes(corrupt), 1)
    chained = data + with_stream_serial(data, (int.from_bytes(data[14:18], "little") + 1) % 2**32)
    with pytest.raises(ValueError, match="one Ogg stream"):
        with_stream_serial(chained, 1)
    with pytest.raises(ValueError, match="32 bits"):
        with_stream_serial(data, 2**32)
