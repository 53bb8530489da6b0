"""Encryption at rest of the edge cache (pure): streaming AES-256-GCM segments.

A sealed blob is::

    b"MGWC" 0x01 | file_id (16) | record*          record = length (4, big endian) | ciphertext+tag

Each file gets its own key, HKDF-SHA256(cache key, salt=file_id). Segment ``i``
(at most ``SEGMENT_BYTES`` of plaintext) is sealed with nonce ``i`` (11 bytes,
big endian) followed by a final flag byte, and the 21-byte file header as
associated data. A reordered, dropped, truncated or altered segment, or a file
cut after a non-final segment, fails with ``IntegrityError``. Memory stays at
about one segment whatever the file size. The cache key itself lives in the
box's key store; erasing it makes every sealed blob unreadable (crypto-erase).

``Sealer`` is the incremental form (a file sealed as it is written, from its first
byte); ``SegmentOpener`` opens single segments, for a seekable reader.
The cloud archive uses the same format with its own key.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.core.errors import IntegrityError

MAGIC = b"MGWC\x01"
SUFFIX = ".mgwc"  # the file name ending of a sealed blob
FILE_ID_BYTES = 16
HEADER_BYTES = len(MAGIC) + FILE_ID_BYTES
SEGMENT_BYTES = 1 << 20
TAG_BYTES = 16
_LEN = struct.Struct(">I")


def _file_cipher(key: bytes, file_id: bytes) -> AESGCM:
    if len(key) != 32 or len(file_id) != FILE_ID_BYTES:
        raise ValueError("cache key must be 32 bytes and file id 16 bytes")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id, info=b"mgw cache v1").derive(key)
    return AESGCM(derived)


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class Sealer:
    """``seal_pieces`` fed incrementally (a sealing file writer): write ``header`` first, then
    what each ``update`` returns, then ``finish()``. Holds at most one segment of plaintext."""

    def __init__(self, key: bytes, file_id: bytes) -> None:
        self._cipher = _file_cipher(key, file_id)
        self.header = MAGIC + file_id
        self._buffer = bytearray()
        self._index = 0
        self._finished = False

    def update(self, piece: bytes | bytearray | memoryview) -> list[bytearray]:
        """The records completed by ``piece`` (one segment is kept back: the last one is final)."""
        self._buffer += piece
        if len(self._buffer) <= SEGMENT_BYTES:
            return []
        records, done = [], 0
        with memoryview(self._buffer) as view:
            while len(self._buffer) - done > SEGMENT_BYTES:
                records.append(self._record(view[done:done + SEGMENT_BYTES], final=False))
                done += SEGMENT_BYTES
        del self._buffer[:done]
        return records

    def finish(self) -> bytearray:
        """The final record; the sealer is spent."""
        if self._finished:
            raise ValueError("sealer already finished")
        self._finished = True
        record = self._record(self._buffer, final=True)
        self._buffer = bytearray()
        return record

    def _record(self, plain: bytes | bytearray | memoryview, final: bool) -> bytearray:
        out = bytearray(_LEN.size + len(plain) + TAG_BYTES)  # sealed in place: no concatenation copy
        _LEN.pack_into(out, 0, len(plain) + TAG_BYTES)
        with memoryview(out) as view:
            self._cipher.encrypt_into(_nonce(self._index, final), plain, self.header, view[_LEN.size:])
        self._index += 1
        return out


def seal_pieces(key: bytes, file_id: bytes, pieces: Iterable[bytes]) -> Iterator[bytes | bytearray]:
    """The sealed file, piece by piece, for plaintext ``pieces`` of any sizes."""
    sealer = Sealer(key, file_id)
    yield sealer.header
    for piece in pieces:
        yield from sealer.update(piece)
    yield sealer.finish()


def is_sealed(head: bytes) -> bool:
    """Whether a file starting with ``head`` (at least ``len(MAGIC)`` bytes) is a sealed blob."""
    return head[:len(MAGIC)] == MAGIC


def open_pieces(key: bytes, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The plaintext of a sealed file, segment by segment; ``IntegrityError`` on any tampering."""
    buffer = bytearray()
    cipher: AESGCM | None = None
    header = b""
    index = 0
    done = False
    for piece in pieces:
        buffer += piece
        if cipher is None:
            if len(buffer) < HEADER_BYTES:
                continue
            header = bytes(buffer[:HEADER_BYTES])
            if header[:len(MAGIC)] != MAGIC:
                raise IntegrityError("cache blob has no valid header")
            cipher = _file_cipher(key, header[len(MAGIC):])
            del buffer[:HEADER_BYTES]
        while len(buffer) >= _LEN.size:
            if done:
                raise IntegrityError("cache blob has data after its final segment")
            (length,) = _LEN.unpack_from(buffer)
            if not TAG_BYTES <= length <= SEGMENT_BYTES + TAG_BYTES:
                raise IntegrityError("cache blob segment has an impossible length")
            if len(buffer) < _LEN.size + length:
                break
            record = bytes(buffer[_LEN.size:_LEN.size + length])
            del buffer[:_LEN.size + length]
            plain, done = _open_segment(cipher, index, record, header)
            index += 1
            yield plain
    if cipher is None or not done or buffer:
        raise IntegrityError("cache blob is truncated")


def _open_segment(cipher: AESGCM, index: int, record: bytes, header: bytes) -> tuple[bytes, bool]:
    for final in (False, True):
        try:
            return cipher.decrypt(_nonce(index, final), record, header), final
        except InvalidTag:
            continue
    raise IntegrityError("cache blob segment fails authentication (altered, reordered or wrong key)")



RECORD_BYTES = _LEN.size + SEGMENT_BYTES + TAG_BYTES  # every record but the last has this size


class SegmentOpener:
    """Random access to the segments of one sealed file of ``sealed_size`` bytes starting with
    ``header`` (pure: the caller reads the bytes). Segment ``i`` is the record at
    ``HEADER_BYTES + i * RECORD_BYTES``; ``open`` authenticates it. Only ``open_pieces`` proves
    a whole file intact; this proves each segment it opens."""

    def __init__(self, key: bytes, header: bytes, sealed_size: int) -> None:
        if len(header) != HEADER_BYTES or not is_sealed(header):
            raise IntegrityError("cache blob has no valid header")
        self._header, self._cipher = header, _file_cipher(key, header[len(MAGIC):])
        body = sealed_size - HEADER_BYTES
        self.segments = max(1, -(-body // RECORD_BYTES))
        last = body - (self.segments - 1) * RECORD_BYTES - _LEN.size - TAG_BYTES
        if last < 0:
            raise IntegrityError("cache blob is truncated")
        self.plain_size = (self.segments - 1) * SEGMENT_BYTES + last

    def offset(self, index: int) -> int:
        return HEADER_BYTES + index * RECORD_BYTES

    def open(self, index: int, record: bytes) -> bytes:
        """The plaintext of segment ``index`` from its ``record`` (length prefix included)."""
        final = index == self.segments - 1
        (length,) = _LEN.unpack_from(record) if len(record) >= _LEN.size else (-1,)
        if length != len(record) - _LEN.size or (not final and length != SEGMENT_BYTES + TAG_BYTES):
            raise IntegrityError("cache blob segment has an impossible length")
        try:
            return self._cipher.decrypt(_nonce(index, final), record[_LEN.size:], self._header)
        except InvalidTag as exc:
            raise IntegrityError("cache blob segment fails authentication (altered or wrong key)") from exc
