"""The segmented payload of codecs PIXEL (format 1) and PIXEL2 (format 2): a Part 10 file in coded segments.

The edge cuts an object into consecutive byte ranges (the file up to the pixel data, strips of
pixel rows, whatever follows) and codes each one on its own; concatenating the decoded segments
gives back the original file, byte for byte. A segment is a 24-byte header then its coded bytes:

    offset size field
         0    1 kind        SegmentKind: 1 ZSTD, 2 SHUFFLE_ZSTD, 3 IMAGE
         1    1 width       SHUFFLE_ZSTD: element size in bytes; IMAGE: bytes per sample (1 or 2)
         2    1 image codec IMAGE only: ImageCodec (1 JPEG-LS; format 2 also 2 JPEG-XL,
                            3 HTJ2K, 4 JPEG 2000); else 0
         3    1 transform   IMAGE only: SampleTransform (0 NONE, 1 SIGNED_OFFSET); else 0
         4    1 bits        IMAGE only: the coded sample depth (2..16); else 0
         5    3 reserved    zero
         8    8 raw length  u64, bytes this segment decodes to
        16    8 coded len   u64, bytes of coded data that follow the header

Both formats share this layout; format 2 (codec PIXEL2) only widens the image codecs an IMAGE
segment may carry (``FORMAT_IMAGE_CODECS``), so a format 1 cloud refuses a format 2 object at
its manifest (unknown codec 3) rather than halfway through its segments.

This module is pure: it frames and parses segments and codes the byte-level kinds (zstd, and
byte-shuffle then zstd). Image codecs need native libraries, so they live outside
core and are passed in as ``ImageDecoder`` callables. Memory stays bounded: a segment's raw
length is at most ``MAX_SEGMENT_RAW_BYTES``, and ZSTD segments are decoded as a stream.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, cast

import zstandard

from gateway.core.errors import CodecError, IntegrityError

HEADER = struct.Struct(">BBBBB3xQQ")
MAX_SEGMENT_RAW_BYTES = 16 * 1024 * 1024
_OUTPUT_PIECE_BYTES = 64 * 1024


class SegmentKind(enum.IntEnum):
    ZSTD = 1
    SHUFFLE_ZSTD = 2
    IMAGE = 3


class ImageCodec(enum.IntEnum):
    JPEG_LS = 1    # ISO/IEC 14495-1 (CharLS); PIXEL formats 1 and 2
    JPEG_XL = 2    # ISO/IEC 18181 lossless (libjxl), naked codestream; PIXEL format 2 only
    HTJ2K = 3      # ISO/IEC 15444-15 reversible (OpenJPH), codestream; PIXEL format 2 only
    JPEG_2000 = 4  # ISO/IEC 15444-1 reversible 5/3 (OpenJPEG), codestream; PIXEL format 2 only


FORMAT_IMAGE_CODECS: dict[int, frozenset[int]] = {
    1: frozenset({ImageCodec.JPEG_LS}),
    2: frozenset(ImageCodec),
}
"""The image codecs each PIXEL format version may carry; another one in its payload is a CodecError."""


class SampleTransform(enum.IntEnum):
    NONE = 0
    SIGNED_OFFSET = 1  # two's complement samples of `bits` bits, stored offset by 2**(bits-1)


@dataclass(frozen=True)
class SegmentHeader:
    kind: SegmentKind
    raw_bytes: int
    coded_bytes: int
    width: int = 0
    image_codec: int = 0
    transform: int = 0
    bits: int = 0

    def encode(self) -> bytes:
        return HEADER.pack(self.kind, self.width, self.image_codec, self.transform, self.bits,
                           self.raw_bytes, self.coded_bytes)

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader:
        kind, width, image_codec, transform, bits, raw, coded = HEADER.unpack(data)
        if data[5:8] != b"\0\0\0":
            raise CodecError("segment header has non-zero reserved bytes")
        try:
            known = SegmentKind(kind)
        except ValueError as exc:
            raise CodecError(f"unknown segment kind {kind}") from exc
        if raw > MAX_SEGMENT_RAW_BYTES:
            raise CodecError(f"segment declares {raw} raw bytes, above {MAX_SEGMENT_RAW_BYTES}")
        if known is not SegmentKind.IMAGE and (image_codec or transform or bits):
            raise CodecError("image fields set on a byte-level segment")
        if known is SegmentKind.SHUFFLE_ZSTD and not 1 <= width <= 8:
            raise CodecError(f"shuffle element width {width} is not 1..8")
        if known is SegmentKind.IMAGE and (width not in (1, 2) or not 2 <= bits <= 8 * width):
            raise CodecError(f"image segment has width {width} and {bits} bits")
        return cls(known, raw, coded, width, image_codec, transform, bits)


ImageDecoder = Callable[[SegmentHeader, bytes], bytes]
"""Decode one IMAGE segment's coded bytes to exactly ``header.raw_bytes`` bytes (or raise CodecError)."""


# --- encoding (edge) -----------------------------------------------------------------------

def shuffle(data: bytes, width: int) -> bytes:
    """Byte k of every ``width``-byte element together, then the tail that is not a whole element."""
    whole = len(data) - len(data) % width
    return b"".join(data[k:whole:width] for k in range(width)) + data[whole:]


def unshuffle(data: bytes, width: int) -> bytes:
    whole = len(data) - len(data) % width
    count = whole // width
    out = bytearray(len(data))
    for k in range(width):
        out[k:whole:width] = data[k * count:(k + 1) * count]
    out[whole:] = data[whole:]
    return bytes(out)


def zstd_segment(raw: bytes, level: int = 3) -> bytes:
    coded = zstandard.ZstdCompressor(level=level).compress(raw)
    return SegmentHeader(SegmentKind.ZSTD, len(raw), len(coded)).encode() + coded


def shuffle_segment(raw: bytes, width: int, level: int = 3) -> bytes:
    coded = zstandard.ZstdCompressor(level=level).compress(shuffle(raw, width))
    return SegmentHeader(SegmentKind.SHUFFLE_ZSTD, len(raw), len(coded), width=width).encode() + coded


def image_segment(header: SegmentHeader, coded: bytes) -> bytes:
    assert header.kind is SegmentKind.IMAGE and header.coded_bytes == len(coded)
    return header.encode() + coded


def byte_segments(raw: bytes, level: int = 3, width: int = 0) -> Iterator[bytes]:
    """``raw`` as ZSTD segments (SHUFFLE_ZSTD when ``width`` > 1), each within the raw limit."""
    step = MAX_SEGMENT_RAW_BYTES - MAX_SEGMENT_RAW_BYTES % max(width, 1)
    for start in range(0, len(raw), step):
        piece = raw[start:start + step]
        yield shuffle_segment(piece, width, level) if width > 1 else zstd_segment(piece, level)


# --- decoding (cloud) ----------------------------------------------------------------------

class _Reader:
    """Exact reads over an iterator of byte strings."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._buf = memoryview(b"")

    def at_end(self) -> bool:
        while not self._buf:
            nxt = next(self._pieces, None)
            if nxt is None:
                return True
            self._buf = memoryview(nxt)
        return False

    def read_up_to(self, size: int) -> bytes:
        if self.at_end():
            return b""
        out, self._buf = self._buf[:size], self._buf[size:]
        return bytes(out)

    def read_exact(self, size: int) -> bytes:
        parts, want = [], size
        while want:
            part = self.read_up_to(want)
            if not part:
                raise CodecError("segmented payload is truncated")
            parts.append(part)
            want -= len(part)
        return b"".join(parts)


class _Limited:
    """``read(n)`` over the next ``remaining`` bytes of a ``_Reader``, as zstd's stream_reader wants."""

    def __init__(self, reader: _Reader, remaining: int) -> None:
        self._reader, self.remaining = reader, remaining

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        out = self._reader.read_up_to(size) if size else b""
        self.remaining -= len(out)
        return out


def decode_segments(
    pieces: Iterable[bytes], image_decoders: Mapping[int, ImageDecoder]
) -> Iterator[bytes]:
    """Yield the original bytes of a segmented payload, in pieces of at most 16 MiB.

    Raises ``CodecError`` on a malformed or truncated payload, an unknown image codec or a
    segment that does not decode to its declared length.
    """
    reader = _Reader(pieces)
    while not reader.at_end():
        header = SegmentHeader.decode(reader.read_exact(HEADER.size))
        if header.kind is SegmentKind.ZSTD:
            yield from _zstd_stream(reader, header)
            continue
        if header.coded_bytes > 2 * MAX_SEGMENT_RAW_BYTES:
            raise CodecError(f"segment declares {header.coded_bytes} coded bytes")
        coded = reader.read_exact(header.coded_bytes)
        if header.kind is SegmentKind.SHUFFLE_ZSTD:
            raw = unshuffle(_zstd_whole(coded, header.raw_bytes), header.width)
        else:
            decoder = image_decoders.get(header.image_codec)
            if decoder is None:
                raise CodecError(f"no decoder for image codec {header.image_codec}")
            raw = decoder(header, coded)
        if len(raw) != header.raw_bytes:
            raise CodecError(f"segment decodes to {len(raw)} bytes, not {header.raw_bytes}")
        yield raw


def _zstd_whole(coded: bytes, raw_bytes: int) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(coded, max_output_size=raw_bytes)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd segment is corrupt: {exc}") from exc


def _zstd_stream(reader: _Reader, header: SegmentHeader) -> Iterator[bytes]:
    limited = _Limited(reader, header.coded_bytes)
    stream = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], limited), read_across_frames=False)
    produced = 0
    try:
        while out := stream.read(_OUTPUT_PIECE_BYTES):
            produced += len(out)
            if produced > header.raw_bytes:
                raise IntegrityError("zstd segment expands beyond its declared length")
            yield out
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd segment is corrupt: {exc}") from exc
    if produced != header.raw_bytes or limited.remaining:
        raise CodecError("zstd segment does not match its declared lengths")
