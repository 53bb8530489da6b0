"""Golden vector of a PIXEL (codec 2) payload: the plaintext segment stream a compatible cloud must
restore. Chunk framing and encryption are codec-independent and frozen by tests/core/golden/.

Encoders (zstd, CharLS) may change their output between versions, so the vector is a decoder
check: it must restore the fixed original, and each segment header must carry the fixed fields.

    python -m tests.codecs.test_pixel_golden --regenerate
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.codecs import jpegls
from gateway.core.codec import Codec, decompress_stream
from gateway.core.segment import HEADER, SegmentHeader, SegmentKind, shuffle_segment, zstd_segment

GOLDEN = Path(__file__).parent / "golden" / "pixel_v1.txt"
REGENERATE = "python -m tests.codecs.test_pixel_golden --regenerate"

# --- fixed inputs: a 'file' of head bytes, 16x16 signed 12-bit rows, 8 noisy rows, a tail ---
HEAD = b"".join(b"golden head %02d|" % i for i in range(12))
ROWS = ((np.arange(256, dtype=np.int64).reshape(16, 16) * 13) % 4096 - 2048).astype("<i2").tobytes()
NOISE = bytes((i * 151 + 17) % 256 for i in range(8 * 16 * 2))
TAIL = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
ORIGINAL = HEAD + ROWS + NOISE + TAIL
EXPECTED_HEADERS = [
    (SegmentKind.ZSTD, len(HEAD), 0, 0, 0, 0),
    (SegmentKind.IMAGE, len(ROWS), 2, 1, 1, 12),  # JPEG-LS, SIGNED_OFFSET at 12 bits
    (SegmentKind.SHUFFLE_ZSTD, len(NOISE), 2, 0, 0, 0),
    (SegmentKind.ZSTD, len(TAIL), 0, 0, 0, 0),
]


def golden_segments() -> list[bytes]:
    image = jpegls.encode_strip(ROWS, 16, 1, 2, 12)
    assert image is not None
    return [zstd_segment(HEAD), image, shuffle_segment(NOISE, 2), zstd_segment(TAIL)]


def render() -> str:
    lines = [
        "# PIXEL payload golden vector (codec 2): the plaintext segment stream of one object.",
        "# Decoder check: the test restores it to the fixed original (tests/codecs/test_pixel_golden.py).",
        f"# Written by: {REGENERATE}. Do not edit the hex by hand.",
        f"# original: {len(ORIGINAL)} bytes, sha256 {hashlib.sha256(ORIGINAL).hexdigest()}",
        "# segment header (24 bytes, big-endian): kind u8, width u8, image codec u8, transform u8, bits u8,",
        "#   3 reserved zero bytes, raw length u64, coded length u64; then the coded bytes.",
    ]
    for index, segment in enumerate(golden_segments()):
        header = SegmentHeader.decode(segment[:HEADER.size])
        lines += ["", f"[segment {index}]",
                  f"{segment[:HEADER.size].hex(' ')}  # {header.kind.name} width {header.width} "
                  f"codec {header.image_codec} transform {header.transform} bits {header.bits} "
                  f"raw {header.raw_bytes} coded {header.coded_bytes}"]
        body = segment[HEADER.size:]
        lines += [body[i:i + 32].hex(" ") for i in range(0, len(body), 32)]
    return "\n".join(lines) + "\n"


def read_segments() -> list[bytes]:
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; create it deliberately with: {REGENERATE}")
    out: list[bytearray] = []
    for raw in GOLDEN.read_text(encoding="ascii").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            out.append(bytearray())
        elif line:
            out[-1] += bytes.fromhex(line)
    return [bytes(s) for s in out]


def test_golden_pixel_payload_restores_the_original_when_decoded() -> None:
    payload = b"".join(read_segments())
    restored = b"".join(decompress_stream(Codec.PIXEL, [payload], len(ORIGINAL), jpegls.IMAGE_DECODERS))
    assert restored == ORIGINAL


def test_golden_segment_headers_carry_the_fixed_fields_when_parsed() -> None:
    headers = [SegmentHeader.decode(s[:HEADER.size]) for s in read_segments()]
    got = [(h.kind, h.raw_bytes, h.width, h.image_codec, h.transform, h.bits) for h in headers]
    assert got == EXPECTED_HEADERS


def test_current_encoder_output_restores_the_original_when_decoded() -> None:
    payload = b"".join(golden_segments())
    assert b"".join(decompress_stream(Codec.PIXEL, [payload], len(ORIGINAL), jpegls.IMAGE_DECODERS)) == ORIGINAL


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: {REGENERATE}")
    GOLDEN.write_text(render(), encoding="ascii")
    print(f"wrote {GOLDEN}")
