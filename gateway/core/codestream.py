"""How many samples an image codestream declares, read from its frame header before any decoding.

The cloud decodes IMAGE segments from hostile boxes. A codestream can declare a picture far
larger than the segment's raw length, and a native decoder allocates for the declared size
before it finds out; so ``declared_samples`` reads the few header bytes that give the size
(JPEG-LS SOF55, JPEG 2000 / HTJ2K SIZ, JPEG-XL SizeHeader) and the decoder refuses a stream
that would not fit. Pure: bytes in, an int out, None when the header is not one we write.
"""

from __future__ import annotations

import struct

# ImageCodec values (gateway/core/segment.py), repeated to keep this module free of imports
_JPEG_LS, _JPEG_XL, _HTJ2K, _JPEG_2000 = 1, 2, 3, 4


def declared_samples(image_codec: int, coded: bytes) -> int | None:
    """Width x height x components the codestream declares, or None if unreadable.

    JPEG-XL's SizeHeader does not carry the channel count (that is in the image metadata that
    follows), so for it this is width x height: a stream that passes the check can still make
    the decoder allocate a few times the raw length (colour, extra channels), never more."""
    try:
        if image_codec == _JPEG_LS:
            return _jpeg_ls(coded)
        if image_codec in (_HTJ2K, _JPEG_2000):
            return _j2k(coded)
        if image_codec == _JPEG_XL:
            return _jxl(coded)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_ls(coded: bytes) -> int | None:
    """Walk the markers after SOI to SOF55 (0xFFF7): P, Y, X, Nf."""
    if coded[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(coded):
        if coded[at] != 0xFF:
            return None
        marker, length = coded[at + 1], struct.unpack_from(">H", coded, at + 2)[0]
        if marker == 0xF7:
            _precision, rows, columns, components = struct.unpack_from(">BHHB", coded, at + 4)
            return int(rows * columns * components)
        at += 2 + length
    return None


def _j2k(coded: bytes) -> int | None:
    """SOC (0xFF4F) then SIZ (0xFF51): Xsiz, Ysiz, XOsiz, YOsiz, ..., Csiz."""
    if coded[:4] != b"\xff\x4f\xff\x51":
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHIIII", coded, 4)
    components = struct.unpack_from(">H", coded, 4 + 36)[0]
    if xsiz < xosiz or ysiz < yosiz:
        return None
    return int((xsiz - xosiz) * (ysiz - yosiz) * components)


class _Bits:
    """LSB-first bit reader (JPEG-XL, ISO/IEC 18181-1)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def u(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self._data[(self._at + i) >> 3]
            value |= ((byte >> ((self._at + i) & 7)) & 1) << i
        self._at += n
        return value

    def u32_size(self) -> int:
        return 1 + self.u((9, 13, 18, 30)[self.u(2)])


_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _jxl_codestream(coded: bytes) -> bytes:
    """The start of the codestream: the bytes themselves, or the first jxlc/jxlp box of a container."""
    if coded[:12] != b"\0\0\0\x0cJXL \r\n\x87\n":
        return coded
    at = 0
    while at + 8 <= len(coded):
        size, kind = struct.unpack_from(">I4s", coded, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", coded, at + 8)[0], 16
        if kind == b"jxlc":
            return coded[at + header:at + header + 16]
        if kind == b"jxlp":
            return coded[at + header + 4:at + header + 20]
        if size < header:
            return b""
        at += size
    return b""


def _jxl(coded: bytes) -> int | None:
    """The codestream's signature (0xFF0A) and SizeHeader: width x height."""
    coded = _jxl_codestream(coded)
    if coded[:2] != b"\xff\x0a":
        return None
    bits = _Bits(coded[2:14])
    small = bits.u(1)
    height = 8 * (1 + bits.u(5)) if small else bits.u32_size()
    ratio = bits.u(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio]
        width = height * num // den
    else:
        width = 8 * (1 + bits.u(5)) if small else bits.u32_size()
    return width * height
