"""blobs.SealedReader: seekable reads of a sealed file, decrypted segment by segment in memory."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters import blobs
from gateway.core import atrest
from gateway.core.errors import IntegrityError

KEY = bytes(range(32))


def _seal(data: bytes, piece: int = 4096) -> bytes:
    pieces = (data[i:i + piece] for i in range(0, len(data), piece))
    return b"".join(atrest.seal_pieces(KEY, bytes(16), pieces))


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=5000), st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 3000)), max_size=8))
def test_sealed_reader_returns_the_plaintext_when_reads_seek_anywhere(
        data: bytes, reads: list[tuple[int, int]]) -> None:
    reader = blobs.SealedReader(KEY, io.BytesIO(_seal(data)))
    assert reader.plain_size == len(data) and reader.seek(0, os.SEEK_END) == len(data)
    for start, length in reads:
        reader.seek(start)
        assert reader.read(length) == data[start:start + length]


def test_sealed_reader_reads_across_segments_when_the_file_spans_several() -> None:
    data = os.urandom(2 * atrest.SEGMENT_BYTES + 7)
    reader = blobs.SealedReader(KEY, io.BytesIO(_seal(data, 300_000)))
    reader.seek(atrest.SEGMENT_BYTES - 5)
    assert reader.read(12) == data[atrest.SEGMENT_BYTES - 5:atrest.SEGMENT_BYTES + 7]
    reader.seek(-3, os.SEEK_END)
    assert reader.read() == data[-3:]


def test_sealed_reader_raises_integrity_error_when_a_read_segment_was_altered() -> None:
    sealed = bytearray(_seal(os.urandom(atrest.SEGMENT_BYTES + 100)))
    sealed[-5] ^= 1  # in the final segment
    reader = blobs.SealedReader(KEY, io.BytesIO(bytes(sealed)))
    assert len(reader.read(10)) == 10  # the intact first segment reads
    reader.seek(atrest.SEGMENT_BYTES)
    with pytest.raises(IntegrityError):
        reader.read(10)

