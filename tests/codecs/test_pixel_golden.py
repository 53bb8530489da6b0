"""Golden vectors of the segmented payloads: PIXEL (codec 2, format 1) and PIXEL2 (codec 3, format 2),
the plaintext segment streams a compatible cloud must restore. Chunk framing and encryption are
codec-independent and frozen by tests/core/golden/.

Encoders (zstd, CharLS, libjxl, OpenJPH, OpenJPEG) may change their output between versions, so a
vector is a decoder check: it must restore the fixed original, and each segment header must carry
the fixed fields. ``pixel_v1.txt`` was written by the retired pyjpegls encoder before format 2 and
is never regenerated: it proves that a cloud still restores what older edges send.

    python -m tests.codecs.test_pixel_golden --regenerate     (writes pixel_v2.txt only)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.codecs import pixel
from gateway.codecs.imagecodecs_codec import Strip, StripEncoder
from gateway.core.codec import Codec, decompress_stream
from gateway.core.errors import CodecError
from gateway.core.segment import HEADER, ImageCodec, SegmentHeader, SegmentKind, shuffle_segment, zstd_segment

GOLDEN_V1 = Path(__file__).parent / "golden" / "pixel_v1.txt"
GOLDEN_V2 = Path(__file__).parent / "golden" / "pixel_v2.txt"
REGENERATE = "python -m tests.codecs.test_pixel_golden --regenerate"

# --- fixed inputs: a 'file' of head bytes, 16x16 signed 12-bit rows, 8 noisy rows, a tail ---
HEAD = b"".join(b"golden head %02d|" % i for i in range(12))
ROWS = ((np.arange(256, dtype=np.int64).reshape(16, 16) * 13) % 4096 - 2048).astype("<i2").tobytes()
NOISE = bytes((i * 151 + 17) % 256 for i in range(8 * 16 * 2))
TAIL = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
ORIGINAL_V1 = HEAD + ROWS + NOISE + TAIL
EXPECTED_V1 = [
    (SegmentKind.ZSTD, len(HEAD), 0, 0, 0, 0),
    (SegmentKind.IMAGE, len(ROWS), 2, 1, 1, 12),  # JPEG-LS, SIGNED_OFFSET at 12 bits
    (SegmentKind.SHUFFLE_ZSTD, len(NOISE), 2, 0, 0, 0),
    (SegmentKind.ZSTD, len(TAIL), 0, 0, 0, 0),
]

# format 2 adds: the signed rows in each new image codec, and 8-bit RGB rows (colour transforms)
RGB = ((np.arange(16 * 16 * 3).reshape(16, 16, 3) * np.array([3, 5, 7])) % 256).astype("<u1").tobytes()
V2_STRIPS = [(ImageCodec.JPEG_XL, ROWS, 1, 2, 12), (ImageCodec.HTJ2K, ROWS, 1, 2, 12),
             (ImageCodec.JPEG_2000, ROWS, 1, 2, 12), (ImageCodec.JPEG_LS, ROWS, 1, 2, 12),
             (ImageCodec.JPEG_XL, RGB, 3, 1, 0), (ImageCodec.HTJ2K, RGB, 3, 1, 0), (ImageCodec.JPEG_2000, RGB, 3, 1, 0)]
ORIGINAL_V2 = HEAD + b"".join(raw for _, raw, _, _, _ in V2_STRIPS) + NOISE + TAIL
EXPECTED_V2 = [
    (SegmentKind.ZSTD, len(HEAD), 0, 0, 0, 0),
    *[(SegmentKind.IMAGE, len(raw), width, codec, 1 if signed else 0, 12 if signed else 8)
      for codec, raw, _, width, signed in V2_STRIPS],
    (SegmentKind.SHUFFLE_ZSTD, len(NOISE), 2, 0, 0, 0),
    (SegmentKind.ZSTD, len(TAIL), 0, 0, 0, 0),
]


def v2_segments() -> list[bytes]:
    images = []
    for codec, raw, components, width, signed in V2_STRIPS:
        coded = StripEncoder(budget_ms_per_mb=1e9, codecs=frozenset({codec})).encode(
            Strip(raw, 16, components, width, signed), 1 << 40)
        assert coded is not None
        images.append(coded)
    return [zstd_segment(HEAD), *images, shuffle_segment(NOISE, 2), zstd_segment(TAIL)]


def render() -> str:
    lines = [
        "# PIXEL2 payload golden vector (codec 3, format 2): the plaintext segment stream of one object.",
        "# Decoder check: the test restores it to the fixed original (tests/codecs/test_pixel_golden.py).",
        f"# Written by: {REGENERATE}. Do not edit the hex by hand.",
        f"# original: {len(ORIGINAL_V2)} bytes, sha256 {hashlib.sha256(ORIGINAL_V2).hexdigest()}",
        "# segment header (24 bytes, big-endian): kind u8, width u8, image codec u8, transform u8, bits u8,",
        "#   3 reserved zero bytes, raw length u64, coded length u64; then the coded bytes.",
    ]
    for index, segment in enumerate(v2_segments()):
        header = SegmentHeader.decode(segment[:HEADER.size])
        lines += ["", f"[segment {index}]",
                  f"{segment[:HEADER.size].hex(' ')}  # {header.kind.name} width {header.width} "
                  f"codec {header.image_codec} transform {header.transform} bits {header.bits} "
                  f"raw {header.raw_bytes} coded {header.coded_bytes}"]
        body = segment[HEADER.size:]
        lines += [body[i:i + 32].hex(" ") for i in range(0, len(body), 32)]
    return "\n".join(lines) + "\n"


def read_segments(golden: Path) -> list[bytes]:
    if not golden.exists():
        pytest.fail(f"{golden} is missing; create it deliberately with: {REGENERATE}")
    out: list[bytearray] = []
    for raw in golden.read_text(encoding="ascii").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            out.append(bytearray())
        elif line:
            out[-1] += bytes.fromhex(line)
    return [bytes(s) for s in out]


def restore(codec: Codec, segments: list[bytes], size: int) -> bytes:
    return b"".join(decompress_stream(codec, [b"".join(segments)], size, pixel.IMAGE_DECODERS))


def headers(segments: list[bytes]) -> list[tuple[int, ...]]:
    parsed = [SegmentHeader.decode(s[:HEADER.size]) for s in segments]
    return [(h.kind, h.raw_bytes, h.width, h.image_codec, h.transform, h.bits) for h in parsed]


def test_format_1_payload_of_the_retired_encoder_restores_the_original_when_decoded() -> None:
    assert restore(Codec.PIXEL, read_segments(GOLDEN_V1), len(ORIGINAL_V1)) == ORIGINAL_V1
    assert headers(read_segments(GOLDEN_V1)) == EXPECTED_V1


def test_format_2_golden_payload_restores_the_original_when_decoded() -> None:
    assert restore(Codec.PIXEL2, read_segments(GOLDEN_V2), len(ORIGINAL_V2)) == ORIGINAL_V2
    assert headers(read_segments(GOLDEN_V2)) == EXPECTED_V2


def test_current_encoder_output_restores_the_original_when_decoded() -> None:
    assert restore(Codec.PIXEL2, v2_segments(), len(ORIGINAL_V2)) == ORIGINAL_V2


def test_format_1_refuses_a_format_2_image_codec_when_one_is_in_its_payload() -> None:
    with pytest.raises(CodecError, match="no decoder for image codec 2"):
        restore(Codec.PIXEL, read_segments(GOLDEN_V2), len(ORIGINAL_V2))


def test_format_1_encoder_output_restores_as_codec_2_when_the_cloud_is_older() -> None:
    plan = pixel.PixelPlan(len(HEAD), len(ROWS), 16, 1, 2, 12)
    payload = b"".join(pixel.pixel_payload([ORIGINAL_V1], plan, effort=pixel.Effort(pixel_format=1)))
    kinds = [SegmentHeader.decode(s[:HEADER.size]) for s in _split(payload)]
    assert {h.image_codec for h in kinds if h.kind is SegmentKind.IMAGE} <= {ImageCodec.JPEG_LS}
    assert restore(Codec.PIXEL, [payload], len(ORIGINAL_V1)) == ORIGINAL_V1


def _split(payload: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(payload):
        header = SegmentHeader.decode(payload[pos:pos + HEADER.size])
        out.append(payload[pos:pos + HEADER.size + header.coded_bytes])
        pos += HEADER.size + header.coded_bytes
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: {REGENERATE}")
    GOLDEN_V2.write_text(render(), encoding="ascii")
    print(f"wrote {GOLDEN_V2}")
