"""Choose a codec per object and produce its payload: PIXEL for uncompressed pixel data, else ZSTD.

``plan`` reads the dataset header up to the top-level Pixel Data (pydicom, no pixel values)
and says which bytes of the Part 10 file are pixel rows and how to read them. ``pixel_payload``
then streams the file into PIXEL segments (``gateway/core/segment.py``): the bytes before the
pixel rows as zstd, the rows in strips of at most ``STRIP_RAW_BYTES`` as JPEG-LS (each strip
verified by decoding it again; a strip that does not restore exactly is byte-shuffled and
zstd'd instead), and whatever follows as zstd. Memory: one strip and its codestream.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from gateway.codecs import jpegls
from gateway.core.segment import MAX_SEGMENT_RAW_BYTES, byte_segments

STRIP_RAW_BYTES = 4 * 1024 * 1024
HEAD_BYTES = 1024 * 1024  # a dataset header longer than this is packed ZSTD
MIN_PIXEL_BYTES = 64 * 1024
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


@dataclass(frozen=True)
class PixelPlan:
    """Where the pixel rows are in the file, and their sample layout."""

    offset: int          # first byte of the Pixel Data value
    length: int          # bytes of whole rows (frames x rows x columns x samples x sample bytes)
    columns: int
    components: int      # interleaved samples per pixel coded together (1, or 3 colour-by-pixel)
    sample_bytes: int
    signed_bits: int     # BitsStored when PixelRepresentation is 1, else 0

    @property
    def row_bytes(self) -> int:
        return self.columns * self.components * self.sample_bytes


def head_of(pieces: Iterable[bytes], limit: int = HEAD_BYTES) -> bytes:
    """The first ``limit`` bytes of a file read as pieces (a sealed blob decrypts as it goes)."""
    out = bytearray()
    for piece in pieces:
        out += piece
        if len(out) >= limit:
            break
    return bytes(out[:limit])


def plan(head: bytes, transfer_syntax_uid: str, min_pixel_bytes: int = MIN_PIXEL_BYTES) -> PixelPlan | None:
    """The pixel plan of a Part 10 file from its first bytes (``head_of``), or None when PIXEL
    does not apply: compressed or big endian transfer syntax, no or unusual pixel data, a
    header unparseable or longer than ``head``, fewer pixel bytes than ``min_pixel_bytes``
    (there whole-file zstd is as small and has less overhead)."""
    if transfer_syntax_uid not in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
        return None
    try:
        fp = io.BytesIO(head)
        ds = dcmread(fp, stop_before_pixels=True)
        tag_at = fp.tell()
        head = fp.read(12)
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, allocated = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        planar = int(ds.get("PlanarConfiguration", 0) or 0)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        stored = int(ds.get("BitsStored", allocated) or allocated)
    except (InvalidDicomError, EOFError):
        return None
    except Exception:  # pydicom raises many other kinds on a malformed header: the object goes ZSTD
        return None
    if allocated not in (8, 16) or samples not in (1, 3) or min(rows, columns, frames) <= 0:
        return None
    if not head.startswith(PIXEL_DATA_TAG):
        return None
    if transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN:
        if head[4:6] not in (b"OB", b"OW"):
            return None
        offset, value_length = tag_at + 12, struct.unpack_from("<I", head, 8)[0]
    else:
        offset, value_length = tag_at + 8, struct.unpack_from("<I", head, 4)[0]
    length = frames * rows * columns * samples * (allocated // 8)
    if value_length == 0xFFFFFFFF or value_length < length or length < min_pixel_bytes:
        return None
    # colour-by-plane rows are single-sample rows: code them as a taller grey image
    components = 1 if planar == 1 else samples
    return PixelPlan(offset, length, columns, components, allocated // 8, stored if signed else 0)


class _ExactReader:
    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces, self._buf = iter(pieces), bytearray()

    def read(self, size: int) -> bytes:
        while len(self._buf) < size:
            nxt = next(self._pieces, None)
            if nxt is None:
                break
            self._buf += nxt
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out


def code_strip(strip: bytes, pixel: PixelPlan, level: int = 3) -> bytes:
    """The smaller of the strip's verified JPEG-LS segment and its byte-shuffle+zstd segment(s).

    JPEG-LS wins on real acquisitions; zstd wins on synthetic flat images (secondary captures,
    overlays) and takes any strip JPEG-LS cannot restore exactly or cannot code at all.
    """
    image = None
    if len(strip) <= MAX_SEGMENT_RAW_BYTES:
        image = jpegls.encode_strip(strip, pixel.columns, pixel.components, pixel.sample_bytes, pixel.signed_bits)
    fallback = b"".join(byte_segments(strip, level, pixel.sample_bytes))
    return image if image is not None and len(image) < len(fallback) else fallback


def pixel_payload(original: Iterable[bytes], pixel: PixelPlan, level: int = 3) -> Iterator[bytes]:
    """The PIXEL payload of the file whose bytes ``original`` yields, in segments."""
    reader = _ExactReader(original)
    remaining = pixel.offset
    while remaining:
        head = reader.read(min(remaining, MAX_SEGMENT_RAW_BYTES))
        if not head:
            return  # the file is shorter than planned: the caller's hash check fails it
        remaining -= len(head)
        yield from byte_segments(head, level)
    strip_rows = max(1, STRIP_RAW_BYTES // pixel.row_bytes)
    remaining = pixel.length
    while remaining > 0:
        strip = reader.read(min(remaining, strip_rows * pixel.row_bytes))
        if not strip:
            return
        remaining -= len(strip)
        yield code_strip(strip, pixel, level)
    while tail := reader.read(MAX_SEGMENT_RAW_BYTES):
        yield from byte_segments(tail, level)
