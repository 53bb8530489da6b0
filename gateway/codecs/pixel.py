"""Choose a codec per object and produce its payload: PIXEL2 for uncompressed pixel data, else ZSTD.

``plan`` reads the dataset header up to the top-level Pixel Data (pydicom, no pixel values)
and says which bytes of the Part 10 file are pixel rows and how to read them. ``pixel_payload``
then streams the file into segments (``gateway/core/segment.py``): the bytes before the pixel
rows as zstd, the rows in strips of at most ``STRIP_RAW_BYTES``, each the smallest of its
byte-shuffle+zstd coding and the image codings the strip encoder's budget allows
(``imagecodecs_codec.StripEncoder``: JPEG-XL, HTJ2K, JPEG 2000, JPEG-LS), and whatever follows
as zstd. Every segment is decoded again and compared with the original bytes before it is
yielded (an image segment that does not restore exactly is dropped for the next smallest;
a byte-level one that does not is a ``CodecError``, and the item is not packed).
Memory: one strip, its candidate codestreams and one decoded copy.

Thread confinement: each thread gets its own ``StripEncoder`` (``encoder_for_thread``).
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from gateway.codecs.imagecodecs_codec import (
    DEFAULT_BUDGET_MS_PER_MB,
    DEFAULT_JPEGXL_EFFORT,
    IMAGE_DECODERS,
    Strip,
    StripEncoder,
    jpeg_ls_only,
)
from gateway.core.errors import CodecError
from gateway.core.segment import MAX_SEGMENT_RAW_BYTES, byte_segments, decode_segments

STRIP_RAW_BYTES = 4 * 1024 * 1024
HEAD_BYTES = 1024 * 1024  # a dataset header longer than this is packed ZSTD
MIN_PIXEL_BYTES = 64 * 1024
SMALL_SEGMENT_BYTES = 64 * 1024  # head and tail segments up to this size are zstd'd at SMALL_ZSTD_LEVEL
SMALL_ZSTD_LEVEL = 19
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


@dataclass(frozen=True)
class Effort:
    """How hard to code pixel strips: PIXEL format (1: JPEG-LS only, for a cloud older than
    codec 3; 2: best of), the encode-time budget per MB, the JPEG-XL effort, and the factor
    the budget is multiplied by now (raised by the packer while its queue is backlogged)."""

    pixel_format: int = 2
    budget_ms_per_mb: float = DEFAULT_BUDGET_MS_PER_MB
    jpegxl_effort: int = DEFAULT_JPEGXL_EFFORT
    scale: float = 1.0


_local = threading.local()


def encoder_for_thread(effort: Effort) -> StripEncoder:
    """This thread's strip encoder for ``effort`` (made on first use; never shared between threads)."""
    key = (effort.pixel_format, effort.budget_ms_per_mb, effort.jpegxl_effort)
    encoders: dict[tuple[int, float, int], StripEncoder] = _local.__dict__.setdefault("encoders", {})
    encoder = encoders.get(key)
    if encoder is None:
        encoder = (jpeg_ls_only() if effort.pixel_format == 1
                   else StripEncoder(effort.budget_ms_per_mb, effort.jpegxl_effort))
        encoders[key] = encoder
    encoder.scale = effort.scale
    return encoder


def _checked(raw: bytes, segments: list[bytes]) -> bytes:
    """The byte-level segments of ``raw``, joined, once they decode back to exactly ``raw``."""
    coded = b"".join(segments)
    if b"".join(decode_segments([coded], {})) != raw:
        raise CodecError("a byte-level segment does not restore its bytes")  # pragma: no cover - zstd defect
    return coded


def code_strip(strip: bytes, pixel: PixelPlan, level: int = 3, encoder: StripEncoder | None = None) -> bytes:
    """The smallest verified coding of a strip of pixel rows: an image segment or byte-shuffle+zstd.

    Image codecs win on real acquisitions; zstd wins on some synthetic flat images (secondary
    captures, overlays) and takes any strip no image codec restores exactly or can code at all.
    """
    fallback = _checked(strip, list(byte_segments(strip, level, pixel.sample_bytes)))
    if len(strip) <= MAX_SEGMENT_RAW_BYTES:
        coder = encoder or encoder_for_thread(Effort())
        image = coder.encode(Strip(strip, pixel.columns, pixel.components, pixel.sample_bytes, pixel.signed_bits),
                             len(fallback))
        if image is not None:
            return image
    return fallback


def pixel_payload(original: Iterable[bytes], pixel: PixelPlan, level: int = 3,
                  effort: Effort | None = None) -> Iterator[bytes]:
    """The PIXEL2 payload (PIXEL when ``effort.pixel_format`` is 1) of the file whose bytes
    ``original`` yields, in segments, each verified."""
    encoder = encoder_for_thread(effort or Effort())
    reader = _ExactReader(original)
    remaining = pixel.offset
    while remaining:
        head = reader.read(min(remaining, MAX_SEGMENT_RAW_BYTES))
        if not head:
            return  # the file is shorter than planned: the caller's hash check fails it
        remaining -= len(head)
        yield _checked(head, list(byte_segments(head, _small_level(head, level))))
    strip_rows = max(1, STRIP_RAW_BYTES // pixel.row_bytes)
    remaining = pixel.length
    while remaining > 0:
        strip = reader.read(min(remaining, strip_rows * pixel.row_bytes))
        if not strip:
            return
        remaining -= len(strip)
        yield code_strip(strip, pixel, level, encoder)
    while tail := reader.read(MAX_SEGMENT_RAW_BYTES):
        yield _checked(tail, list(byte_segments(tail, _small_level(tail, level))))


def _small_level(raw: bytes, level: int) -> int:
    """zstd's strongest level for a dataset header or trailer of a few KiB: one-shot, so zstd
    sizes its window to the input and it takes well under a millisecond (a streamed level 19
    allocates its full window and costs ~35 ms per object, so whole ZSTD objects keep their level)."""
    return max(level, SMALL_ZSTD_LEVEL) if len(raw) <= SMALL_SEGMENT_BYTES else level


__all__ = ["IMAGE_DECODERS", "Effort", "PixelPlan", "code_strip", "encoder_for_thread", "head_of",
           "pixel_payload", "plan"]
