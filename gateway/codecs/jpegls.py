"""JPEG-LS lossless (ISO 14495-1, CharLS via pyjpegls) for strips of uncompressed pixel rows.

The only module that imports ``jpeg_ls`` and ``numpy``. ``encode_strip`` returns the IMAGE
segment for a strip only after decoding it again and comparing every byte, so a strip that
JPEG-LS would not restore exactly (bits above BitsStored that the sample transform cannot
carry, a CharLS error) is reported as ``None`` and the caller codes it byte-level instead.
"""

from __future__ import annotations

from typing import Any

import jpeg_ls
import numpy as np

from gateway.core.errors import CodecError
from gateway.core.segment import ImageCodec, SampleTransform, SegmentHeader, SegmentKind

_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<u1"), 2: np.dtype("<u2")}


def _forward(samples: np.ndarray, transform: SampleTransform, bits: int) -> np.ndarray:
    if transform is SampleTransform.NONE:
        return samples
    # two's complement of `bits` bits -> offset binary: add 2**(bits-1) modulo 2**bits
    shifted: np.ndarray = (samples + samples.dtype.type(1 << (bits - 1))) & samples.dtype.type((1 << bits) - 1)
    return shifted


def _inverse(samples: np.ndarray, transform: SampleTransform, bits: int) -> np.ndarray:
    if transform is SampleTransform.NONE:
        return samples
    # subtract the offset modulo 2**(8*width): sign-extends to the stored width
    restored: np.ndarray = samples - samples.dtype.type(1 << (bits - 1))
    return restored


def encode_strip(
    raw: bytes, columns: int, components: int, sample_bytes: int, signed_bits: int
) -> bytes | None:
    """The IMAGE segment (header + codestream) for ``raw``, or None if it would not restore exactly.

    ``raw`` is whole rows of ``columns`` pixels of ``components`` interleaved samples of
    ``sample_bytes`` little-endian bytes. ``signed_bits`` is BitsStored for signed pixel
    data (PixelRepresentation 1), else 0.
    """
    dtype = _DTYPES.get(sample_bytes)
    row_bytes = columns * components * sample_bytes
    if dtype is None or components not in (1, 3) or not raw or len(raw) % row_bytes:
        return None
    samples = np.frombuffer(raw, dtype)
    transform = SampleTransform.NONE
    if 2 <= signed_bits <= 8 * sample_bytes:
        shifted = _forward(samples, SampleTransform.SIGNED_OFFSET, signed_bits)
        if np.array_equal(_inverse(shifted, SampleTransform.SIGNED_OFFSET, signed_bits), samples):
            samples, transform = shifted, SampleTransform.SIGNED_OFFSET
    floor_bits = 9 if sample_bytes == 2 else 2  # CharLS picks the output width from the depth
    bits = max(floor_bits, int(samples.max()).bit_length())
    try:
        coded = bytes(jpeg_ls.encode_buffer(
            samples.tobytes() if transform is not SampleTransform.NONE else raw,
            len(raw) // row_bytes, columns, components, bits,
            interleave_mode=2 if components == 3 else 0))
    except Exception:  # CharLS is a black box here: any refusal means "code it byte-level"
        return None
    header = SegmentHeader(SegmentKind.IMAGE, len(raw), len(coded), width=sample_bytes,
                           image_codec=ImageCodec.JPEG_LS, transform=transform, bits=bits)
    try:
        restored = decode_segment(header, coded)
    except CodecError:
        return None
    return header.encode() + coded if restored == raw else None


def decode_segment(header: SegmentHeader, coded: bytes) -> bytes:
    """The raw bytes of one JPEG-LS IMAGE segment (``core.segment.ImageDecoder``)."""
    try:
        transform = SampleTransform(header.transform)
        decoded, _meta = jpeg_ls.decode_buffer(coded)
    except Exception as exc:  # hostile codestreams: whatever CharLS raises is a corrupt payload
        raise CodecError(f"JPEG-LS segment does not decode: {type(exc).__name__}") from exc
    if len(decoded) != header.raw_bytes:
        raise CodecError(f"JPEG-LS segment decodes to {len(decoded)} bytes, not {header.raw_bytes}")
    if transform is SampleTransform.NONE:
        return bytes(decoded)
    samples = np.frombuffer(decoded, _DTYPES[header.width])
    return _inverse(samples, transform, header.bits).tobytes()


IMAGE_DECODERS = {int(ImageCodec.JPEG_LS): decode_segment}
