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
byte); ``SealedReader`` a seekable view of a sealed file for readers that seek.
The cloud archive uses the same format with its own key.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

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


_RECORD_BYTES = _LEN.size + SEGMENT_BYTES + TAG_BYTES


class SealedReader(io.RawIOBase):
    """A seekable read-only file of the plaintext of the sealed file ``fh``, for readers that
    seek (a header walk over a received dataset). Segments are opened, and authenticated, only
    when read, one kept at a time: seeking over pixel data never decrypts them. Only
    ``open_pieces`` proves a whole file intact; this proves each segment it returns."""

    def __init__(self, key: bytes, fh: BinaryIO) -> None:
        super().__init__()
        fh.seek(0)
        self._header = fh.read(HEADER_BYTES)
        if len(self._header) != HEADER_BYTES or not is_sealed(self._header):
            raise IntegrityError("cache blob has no valid header")
        self._fh, self._cipher = fh, _file_cipher(key, self._header[len(MAGIC):])
        body = fh.seek(0, os.SEEK_END) - HEADER_BYTES
        self._segments = max(1, -(-body // _RECORD_BYTES))
        last = body - (self._segments - 1) * _RECORD_BYTES - _LEN.size - TAG_BYTES
        if last < 0:
            raise IntegrityError("cache blob is truncated")
        self.plain_size = (self._segments - 1) * SEGMENT_BYTES + last
        self._pos = 0
        self._cached: tuple[int, bytes] = (-1, b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.plain_size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        with memoryview(buffer) as out:
            filled = 0
            while filled < len(out) and self._pos < self.plain_size:
                index, offset = divmod(self._pos, SEGMENT_BYTES)
                plain = self._segment(index)
                n = min(len(out) - filled, len(plain) - offset)
                out[filled:filled + n] = plain[offset:offset + n]
                filled += n
                self._pos += n
            return filled

    def _segment(self, index: int) -> bytes:
        if self._cached[0] != index:
            final = index == self._segments - 1
            self._fh.seek(HEADER_BYTES + index * _RECORD_BYTES)
            record = self._fh.read(_RECORD_BYTES)
            (length,) = _LEN.unpack_from(record) if len(record) >= _LEN.size else (-1,)
            if length != len(record) - _LEN.size or (not final and length != SEGMENT_BYTES + TAG_BYTES):
                raise IntegrityError("cache blob segment has an impossible length")
            try:
                plain = self._cipher.decrypt(_nonce(index, final), record[_LEN.size:], self._header)
            except InvalidTag as exc:
                raise IntegrityError("cache blob segment fails authentication (altered or wrong key)") from exc
            self._cached = (index, plain)
        return self._cached[1]
