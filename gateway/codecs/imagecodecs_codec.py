"""Lossless image codecs through imagecodecs: JPEG-XL, HTJ2K, JPEG 2000 and JPEG-LS, best of per strip.

The only module that imports ``imagecodecs`` and ``numpy``. ``StripEncoder.encode`` codes one
strip of whole pixel rows with every candidate its encode-time budget allows, keeps the
smallest, and returns it only after decoding it again and comparing every byte; a candidate
that fails to encode, or does not restore exactly, is dropped and the next smallest is checked.
``None`` means "no image segment": the caller codes the strip byte-level.

Colour (3 interleaved samples, RGB or YBR_FULL) goes to the codecs' own reversible colour
transforms: JPEG-XL's modular RCT search, and the reversible component transform (RCT,
ISO/IEC 15444-1 Annex G) of JPEG 2000 and HTJ2K. JPEG-LS is tried for grey strips only.

Budget: a deterministic cost model (``COST_MS_PER_MB``, CPU milliseconds per MB of raw
pixels to encode and to verify, measured on the pydicom-data corpus) instead of a clock, so
the same input always gives the same payload. Each strip earns ``budget_ms_per_mb`` times
its size times ``scale`` (the packer raises ``scale`` when its queue is backlogged); what a
strip does not spend is carried to the next (up to ``CARRY_CAP_MS``).

Thread confinement: a ``StripEncoder`` belongs to the thread that made it (its carried
budget is per thread, and the native libraries are only ever driven from that thread);
using it from another thread is a programming error (``AssertionError``). The decoders are
plain functions with no shared state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np

from gateway.core.codestream import declared_samples
from gateway.core.errors import CodecError
from gateway.core.segment import ImageCodec, ImageDecoder, SampleTransform, SegmentHeader, SegmentKind

_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<u1"), 2: np.dtype("<u2")}
DEFAULT_BUDGET_MS_PER_MB = 65.0  # about 22 MB/s per core measured on pydicom-data
DEFAULT_JPEGXL_EFFORT = 3
CARRY_CAP_MS = 300.0  # about one 4 MiB strip's budget: unspent time evens out between strips, no more
BASE_COST_MS_PER_MB = 10.0  # what every strip costs besides the image codecs: shuffle+zstd, checks, copies
HIGH_JPEGXL_EFFORT = 7  # tried after the configured effort when the budget has room (a backlogged queue)
J2K_PREDICTED_GAIN = 0.93  # JPEG 2000 (EBCOT) codes about 7% smaller than HTJ2K on the same wavelet

# CPU ms per MB of raw pixels: encode plus the verifying decode (bench/compression.py, this machine class)
COST_MS_PER_MB: dict[str, float] = {
    "htj2k": 6.5, "jpegls": 15.5, "j2k": 81.0,
    "jxl1": 5.0, "jxl2": 19.5, "jxl3": 37.0, "jxl4": 60.0, "jxl5": 110.0, "jxl6": 190.0,
    "jxl7": 306.0, "jxl8": 700.0, "jxl9": 1600.0,
}


@dataclass(frozen=True)
class Strip:
    """Whole rows of ``columns`` pixels of ``components`` interleaved little-endian samples."""

    raw: bytes
    columns: int
    components: int
    sample_bytes: int
    signed_bits: int  # BitsStored for signed pixel data, else 0


@dataclass(frozen=True)
class _Prepared:
    samples: np.ndarray       # unsigned samples, shape (rows, columns[, 3])
    transform: SampleTransform
    bits: int


def _forward(samples: np.ndarray, bits: int) -> np.ndarray:
    # two's complement of `bits` bits -> offset binary: add 2**(bits-1) modulo 2**bits
    shifted: np.ndarray = (samples + samples.dtype.type(1 << (bits - 1))) & samples.dtype.type((1 << bits) - 1)
    return shifted


def _inverse(samples: np.ndarray, transform: SampleTransform, bits: int) -> np.ndarray:
    if transform is SampleTransform.NONE:
        return samples
    # subtract the offset modulo 2**(8*width): sign-extends to the stored width
    restored: np.ndarray = samples - samples.dtype.type(1 << (bits - 1))
    return restored


def _prepare(strip: Strip) -> _Prepared | None:
    dtype = _DTYPES.get(strip.sample_bytes)
    row_bytes = strip.columns * strip.components * strip.sample_bytes
    if dtype is None or strip.components not in (1, 3) or not strip.raw or len(strip.raw) % row_bytes:
        return None
    samples = np.frombuffer(strip.raw, dtype)
    transform = SampleTransform.NONE
    if 2 <= strip.signed_bits <= 8 * strip.sample_bytes:
        shifted = _forward(samples, strip.signed_bits)
        if np.array_equal(_inverse(shifted, SampleTransform.SIGNED_OFFSET, strip.signed_bits), samples):
            samples, transform = shifted, SampleTransform.SIGNED_OFFSET
    floor_bits = 9 if strip.sample_bytes == 2 else 2  # a 16-bit container is coded as such
    bits = max(floor_bits, int(samples.max()).bit_length())
    shape = (len(strip.raw) // row_bytes, strip.columns) + ((3,) if strip.components == 3 else ())
    return _Prepared(samples.reshape(shape), transform, bits)


Encoder = tuple[ImageCodec, Callable[[np.ndarray, int], bytes]]
"""An image codec and its encode function (unsigned samples, coded depth) -> codestream."""


def _jxl(effort: int) -> Encoder:
    return (ImageCodec.JPEG_XL, lambda a, bits: bytes(imagecodecs.jpegxl_encode(
        a, lossless=True, effort=effort, bitspersample=bits, usecontainer=False, numthreads=1)))


def _encoders(effort: int) -> dict[str, Encoder]:
    return {
        f"jxl{HIGH_JPEGXL_EFFORT}": _jxl(HIGH_JPEGXL_EFFORT),
        "htj2k": (ImageCodec.HTJ2K, lambda a, bits: bytes(imagecodecs.htj2k_encode(a, reversible=True))),
        f"jxl{effort}": _jxl(effort),
        "j2k": (ImageCodec.JPEG_2000, lambda a, bits: bytes(imagecodecs.jpeg2k_encode(
            a, level=0, codecformat="J2K", reversible=True, bitspersample=bits, numthreads=1))),
        "jpegls": (ImageCodec.JPEG_LS, lambda a, bits: bytes(imagecodecs.jpegls_encode(a))),
    }


class StripEncoder:
    """Best-of image coding of strips within an encode-time budget; confined to one thread."""

    def __init__(self, budget_ms_per_mb: float = DEFAULT_BUDGET_MS_PER_MB, jpegxl_effort: int = DEFAULT_JPEGXL_EFFORT,
                 codecs: frozenset[ImageCodec] = frozenset(ImageCodec), encoders: Mapping[str, Encoder] | None = None
                 ) -> None:
        """``codecs`` limits the candidates (PIXEL format 1: JPEG-LS only); ``encoders`` replaces some
        candidates' encode functions by name ("htj2k", "jxl3", "j2k", "jpegls"), a seam for tests."""
        if not 1 <= jpegxl_effort <= 9:
            raise ValueError(f"JPEG-XL effort {jpegxl_effort} is not 1..9")
        self._codecs = codecs
        self._owner = threading.get_ident()
        self._budget_ms_per_mb = budget_ms_per_mb
        self._effort = jpegxl_effort
        self._encoders = {**_encoders(jpegxl_effort), **(encoders or {})}
        self._credit_ms = 0.0
        self.scale = 1.0  # raised by the packer while its queue is backlogged

    def encode(self, strip: Strip, baseline_bytes: int) -> bytes | None:
        """The smallest verified IMAGE segment of ``strip`` if it is below ``baseline_bytes``
        (the size of its byte-level coding), else None."""
        assert threading.get_ident() == self._owner, "a StripEncoder is confined to the thread that made it"
        prepared = _prepare(strip)
        if prepared is None:
            return None
        mb = len(strip.raw) / 1e6
        available = self._budget_ms_per_mb * self.scale * mb + self._credit_ms
        spent = BASE_COST_MS_PER_MB * mb
        coded: dict[str, tuple[ImageCodec, bytes]] = {}
        for name in self._plan(prepared, coded, baseline_bytes):
            codec, encode = self._encoders[name]
            cost = COST_MS_PER_MB[name] * mb
            if codec not in self._codecs or (coded and spent + cost > available):
                continue
            spent += cost
            try:
                coded[name] = (codec, encode(prepared.samples, prepared.bits))
            except Exception:  # noqa: BLE001, S112 - a library refusal only means "not this codec"
                continue
        self._credit_ms = min(CARRY_CAP_MS, max(0.0, available - spent))
        return _smallest_verified(strip.raw, prepared, coded, baseline_bytes)

    def _plan(self, prepared: _Prepared, coded: dict[str, tuple[ImageCodec, bytes]], baseline: int) -> Iterator[str]:
        """Candidate names in order; later ones depend on what the earlier ones gave."""
        yield "htj2k"
        yield f"jxl{self._effort}"
        if self._effort < HIGH_JPEGXL_EFFORT:
            yield f"jxl{HIGH_JPEGXL_EFFORT}"  # only a backlog's budget affords it (306 ms/MB)
        best = min([baseline, *(len(c) for _, c in coded.values())])
        ht = coded.get("htj2k")
        if ht is None or len(ht[1]) * J2K_PREDICTED_GAIN < best:  # no HTJ2K to predict from: try it
            yield "j2k"
        if prepared.samples.ndim == 2 and (prepared.samples.itemsize == 1 or f"jxl{self._effort}" not in coded):
            yield "jpegls"  # it beats JPEG-XL only on 8-bit grey (palette, secondary captures) in our corpora


def jpeg_ls_only() -> StripEncoder:
    """The encoder of PIXEL format 1 (codec 2): JPEG-LS strips only, for a cloud older than codec 3."""
    return StripEncoder(codecs=frozenset({ImageCodec.JPEG_LS}))


def _smallest_verified(raw: bytes, prepared: _Prepared, coded: dict[str, tuple[ImageCodec, bytes]],
                       baseline: int) -> bytes | None:
    width = prepared.samples.dtype.itemsize
    for codec, stream in sorted(coded.values(), key=lambda c: len(c[1])):
        if len(stream) >= baseline:
            return None
        header = SegmentHeader(SegmentKind.IMAGE, len(raw), len(stream), width=width, image_codec=codec,
                               transform=prepared.transform, bits=prepared.bits)
        try:
            if decode_segment(header, stream) == raw:
                return header.encode() + stream
        except CodecError:
            continue
    return None


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    ImageCodec.JPEG_LS: imagecodecs.jpegls_decode,
    ImageCodec.JPEG_XL: lambda data: imagecodecs.jpegxl_decode(data, numthreads=1),
    ImageCodec.HTJ2K: imagecodecs.htj2k_decode,
    ImageCodec.JPEG_2000: lambda data: imagecodecs.jpeg2k_decode(data, numthreads=1),
}


def decode_segment(header: SegmentHeader, coded: bytes) -> bytes:
    """The raw bytes of one IMAGE segment (``core.segment.ImageDecoder``); CodecError if it does not decode
    to exactly ``header.raw_bytes`` samples of ``header.width`` bytes."""
    decode = _DECODERS.get(header.image_codec)
    if decode is None:
        raise CodecError(f"no decoder for image codec {header.image_codec}")
    _check_dimensions(header, coded)
    if header.image_codec == ImageCodec.JPEG_LS and not coded.endswith(b"\xff\xd9"):
        # a JPEG-LS stream ends with EOI; CharLS takes seconds to refuse some streams cut short
        raise CodecError("JPEG_LS segment does not end with EOI: truncated")
    try:
        transform = SampleTransform(header.transform)
        decoded = np.asarray(decode(coded))
    except Exception as exc:  # hostile codestreams: whatever the library raises is a corrupt payload
        name = ImageCodec(header.image_codec).name
        raise CodecError(f"{name} segment does not decode: {type(exc).__name__}") from exc
    dtype = _DTYPES[header.width]
    if decoded.dtype.kind not in "ui" or decoded.dtype.itemsize != dtype.itemsize:
        raise CodecError(f"image segment decodes to {decoded.dtype} samples, not {header.width}-byte ones")
    if decoded.nbytes != header.raw_bytes:
        raise CodecError(f"image segment decodes to {decoded.nbytes} bytes, not {header.raw_bytes}")
    samples = np.ascontiguousarray(decoded).view(dtype).reshape(-1)
    return _inverse(samples, transform, header.bits).tobytes()


def _check_dimensions(header: SegmentHeader, coded: bytes) -> None:
    """Refuse a codestream whose declared image is larger than the segment's raw length,
    before the library allocates for it (``core.codestream`` reads the frame header)."""
    declared = declared_samples(header.image_codec, coded)
    if declared is None or declared * header.width > header.raw_bytes:
        raise CodecError(f"{ImageCodec(header.image_codec).name} codestream declares an image that does not fit "
                         f"{header.raw_bytes} bytes")


IMAGE_DECODERS: dict[int, ImageDecoder] = {int(codec): decode_segment for codec in _DECODERS}
"""Decoders for every image codec of PIXEL format 2 (codec 3)."""
