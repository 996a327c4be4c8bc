"""A fixed stream serial number for Ogg files, so that writing the same audio twice gives the same bytes.

libsndfile (and libogg under it) gives every Ogg stream it writes a random 32-bit serial
number, stored in each page header.  The audio is the same each time, but the file's
checksum, hence a catalog's track ids (``pipeline.corpora.catalog``), excerpt ids and the
order in which training reads them, is not.  :func:`with_stream_serial` rewrites the serial of a
single-stream Ogg file and recomputes each page's CRC; nothing else changes, so a
decoder gives the same samples as before.

Page layout (RFC 3533, section 6): ``"OggS"``, version, header type, granule position
(8 bytes), serial (4 bytes, little endian, offset 14), page sequence (4), CRC (4, offset 22),
segment count ``n`` (offset 26), ``n`` lacing values, then a body of their sum in bytes.  The CRC
is CRC-32 with polynomial 0x04C11DB7, initial value 0, not reflected and not inverted, over the
whole page with its CRC field zeroed.
"""

from __future__ import annotations

CAPTURE = b"OggS"
_HEADER_BYTES = 27
_SERIAL = slice(14, 18)
_CRC = slice(22, 26)
_POLYNOMIAL = 0x04C11DB7


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ _POLYNOMIAL) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return table


_TABLE = _crc_table()


def page_crc(page: bytes | bytearray) -> int:
    """The Ogg CRC of ``page`` (the whole page, its CRC field zeroed)."""
    crc = 0
    table = _TABLE
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


def page_spans(data: bytes | bytearray) -> list[tuple[int, int]]:
    """``(start, stop)`` byte offsets of every page of an Ogg stream; ``ValueError`` if ``data``
    is not a sequence of whole pages."""
    spans, offset = [], 0
    while offset < len(data):
        if data[offset:offset + 4] != CAPTURE or offset + _HEADER_BYTES > len(data):
            raise ValueError(f"no Ogg page at byte {offset}")
        segments = data[offset + 26]
        body = sum(data[offset + _HEADER_BYTES:offset + _HEADER_BYTES + segments])
        stop = offset + _HEADER_BYTES + segments + body
        if stop > len(data):
            raise ValueError(f"the Ogg page at byte {offset} is truncated")
        spans.append((offset, stop))
        offset = stop
    if not spans:
        raise ValueError("no Ogg pages")
    return spans


def with_stream_serial(data: bytes, serial: int) -> bytes:
    """``data`` (one logical Ogg stream) with every page's serial set to ``serial`` (0 .. 2**32 - 1)
    and its CRC recomputed; ``ValueError`` for a file of several streams or a page whose CRC is
    wrong before the rewrite."""
    if not 0 <= serial < 2**32:
        raise ValueError(f"an Ogg serial number is 32 bits, got {serial}")
    out = bytearray(data)
    spans = page_spans(out)
    serials = {bytes(out[start + _SERIAL.start:start + _SERIAL.stop]) for start, _ in spans}
    if len(serials) != 1:
        raise ValueError(f"expected one Ogg stream, found {len(serials)} serial numbers")
    for start, stop in spans:
        page = out[start:stop]
        stored = int.from_bytes(page[_CRC], "little")
        page[_CRC] = b"\0\0\0\0"
        if page_crc(page) != stored:
            raise ValueError(f"the Ogg page at byte {start} has a wrong CRC")
        page[_SERIAL] = serial.to_bytes(4, "little")
        page[_CRC] = page_crc(page).to_bytes(4, "little")
        out[start:stop] = page
    return bytes(out)
