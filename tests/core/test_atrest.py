"""Encryption at rest of the edge cache: round trip, and every tampering detected."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import atrest
from gateway.core.errors import IntegrityError

KEY = bytes(range(32))
FILE_ID = bytes(16)


def _seal(data: bytes, piece: int = 4096) -> bytes:
    return b"".join(atrest.seal_pieces(KEY, FILE_ID, (data[i:i + piece] for i in range(0, len(data), piece))))


def _open(sealed: bytes, piece: int = 777, key: bytes = KEY) -> bytes:
    return b"".join(atrest.open_pieces(key, (sealed[i:i + piece] for i in range(0, len(sealed), piece))))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=20_000), st.integers(1, 5000), st.integers(1, 5000))
def test_plaintext_round_trips_when_pieces_have_any_sizes(data: bytes, w: int, r: int) -> None:
    assert _open(_seal(data, w), r) == data


def test_plaintext_round_trips_when_the_file_spans_several_segments() -> None:
    data = os.urandom(2 * atrest.SEGMENT_BYTES + 12345)
    sealed = _seal(data, 65536)
    assert _open(sealed, 100_000) == data
    assert data[:64] not in sealed


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.data())
def test_open_raises_integrity_error_when_any_bit_is_flipped(data: bytes, draw: st.DataObject) -> None:
    sealed = bytearray(_seal(data))
    bit = draw.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        _open(bytes(sealed))


def test_open_raises_integrity_error_when_truncated_at_a_segment_boundary() -> None:
    data = os.urandom(atrest.SEGMENT_BYTES + 10)
    sealed = _seal(data, 65536)
    first_record_end = atrest.HEADER_BYTES + 4 + atrest.SEGMENT_BYTES + atrest.TAG_BYTES
    with pytest.raises(IntegrityError, match="truncated"):
        _open(sealed[:first_record_end])


def test_open_raises_integrity_error_when_the_key_is_wrong() -> None:
    with pytest.raises(IntegrityError):
        _open(_seal(b"patient data"), key=bytes(32))


def test_sealer_output_equals_seal_pieces_when_fed_the_same_pieces() -> None:
    data = os.urandom(atrest.SEGMENT_BYTES * 2 + 99)
    sealer = atrest.Sealer(KEY, FILE_ID)
    out = [sealer.header]
    for i in range(0, len(data), 70_000):
        out += sealer.update(memoryview(data)[i:i + 70_000])
    out.append(sealer.finish())
    assert b"".join(out) == _seal(data)
    assert _open(b"".join(out)) == data
