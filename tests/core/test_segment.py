"""The segmented PIXEL payload (gateway/core/segment.py): byte-level segments restore exactly,
and a malformed payload is a ``CodecError`` (or ``IntegrityError`` for overlong output), never
anything else and never wrong bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.codec import Codec, decompress_stream
from gateway.core.errors import CodecError, IntegrityError
from gateway.core.segment import (
    HEADER,
    MAX_SEGMENT_RAW_BYTES,
    ImageCodec,
    SegmentHeader,
    SegmentKind,
    byte_segments,
    decode_segments,
    shuffle,
    shuffle_segment,
    unshuffle,
    zstd_segment,
)


def restore(payload: bytes, size: int, decoders: dict | None = None) -> bytes:
    return b"".join(decompress_stream(Codec.PIXEL, [payload], size, decoders))


@given(st.binary(max_size=300), st.integers(1, 8))
def test_unshuffle_inverts_shuffle_when_given_any_bytes_and_width(data: bytes, width: int) -> None:
    assert unshuffle(shuffle(data, width), width) == data


def test_shuffle_groups_the_nth_byte_of_each_element_when_width_is_two() -> None:
    assert shuffle(b"\x01\xa0\x02\xa0\x03", 2) == b"\x01\x02\xa0\xa0\x03"


@given(st.lists(st.tuples(st.binary(max_size=500), st.sampled_from([0, 2, 3])), max_size=5),
       st.integers(1, 7))
def test_segments_restore_the_concatenation_when_split_into_any_pieces(parts: list, cut: int) -> None:
    payload = b"".join(b"".join(byte_segments(raw, 1, width)) for raw, width in parts)
    original = b"".join(raw for raw, _ in parts)
    pieces = [payload[i:i + cut] for i in range(0, len(payload), cut)]
    assert b"".join(decompress_stream(Codec.PIXEL, pieces, len(original))) == original


def test_byte_segments_stay_within_the_raw_limit_when_the_input_is_larger() -> None:
    raw = bytes(MAX_SEGMENT_RAW_BYTES + 10)
    segments = list(byte_segments(raw, 1, 2))
    assert [SegmentHeader.decode(s[:HEADER.size]).raw_bytes for s in segments] == [MAX_SEGMENT_RAW_BYTES, 10]
    assert restore(b"".join(segments), len(raw)) == raw


def header_bytes(kind: int = 1, width: int = 0, codec: int = 0, transform: int = 0, bits: int = 0,
                 raw: int = 4, coded: int = 4, reserved: bytes = b"\0\0\0") -> bytes:
    packed = HEADER.pack(kind, width, codec, transform, bits, raw, coded)
    return packed[:5] + reserved + packed[8:]


@pytest.mark.parametrize("header", [
    header_bytes(kind=9),
    header_bytes(reserved=b"\0\1\0"),
    header_bytes(raw=MAX_SEGMENT_RAW_BYTES + 1),
    header_bytes(kind=SegmentKind.ZSTD, bits=12),
    header_bytes(kind=SegmentKind.SHUFFLE_ZSTD, width=0),
    header_bytes(kind=SegmentKind.IMAGE, width=2, codec=ImageCodec.JPEG_LS, bits=17),
    header_bytes(kind=SegmentKind.IMAGE, width=3, codec=ImageCodec.JPEG_LS, bits=8),
], ids=["kind", "reserved", "too-large", "image-fields", "shuffle-width", "bits", "sample-width"])
def test_decode_raises_codec_error_when_a_segment_header_is_malformed(header: bytes) -> None:
    with pytest.raises(CodecError):
        restore(header + bytes(4), 4)


def test_decode_raises_codec_error_when_the_payload_is_truncated() -> None:
    segment = zstd_segment(b"pixel rows " * 50)
    for cut in (3, HEADER.size + 2, len(segment) - 1):
        with pytest.raises(CodecError):
            restore(segment[:cut], 550)


def test_decode_raises_codec_error_when_a_segment_is_shorter_than_declared() -> None:
    segment = bytearray(shuffle_segment(b"abcdefgh", 2))
    segment[8:16] = (9).to_bytes(8, "big")  # raw length 9, the data gives 8
    with pytest.raises(CodecError):
        restore(bytes(segment), 9)


def test_decode_raises_integrity_error_when_a_zstd_segment_expands_beyond_its_length() -> None:
    segment = bytearray(zstd_segment(bytes(1000)))
    segment[8:16] = (10).to_bytes(8, "big")
    with pytest.raises((IntegrityError, CodecError)):
        restore(bytes(segment), 1000)


def test_decode_raises_codec_error_when_no_decoder_is_given_for_an_image_segment() -> None:
    header = SegmentHeader(SegmentKind.IMAGE, 4, 4, width=1, image_codec=ImageCodec.JPEG_LS, bits=8)
    with pytest.raises(CodecError, match="no decoder"):
        list(decode_segments([header.encode() + bytes(4)], {}))


def test_decode_raises_codec_error_when_an_image_decoder_returns_the_wrong_length() -> None:
    header = SegmentHeader(SegmentKind.IMAGE, 4, 4, width=1, image_codec=ImageCodec.JPEG_LS, bits=8)
    with pytest.raises(CodecError, match="decodes to 3"):
        list(decode_segments([header.encode() + bytes(4)], {1: lambda h, c: c[:3]}))
