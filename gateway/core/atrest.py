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


def seal_pieces(key: bytes, file_id: bytes, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The sealed file, piece by piece, for plaintext ``pieces`` of any sizes."""
    cipher = _file_cipher(key, file_id)
    header = MAGIC + file_id
    yield header
    buffer = bytearray()
    index = 0
    for piece in pieces:
        buffer += piece
        if len(buffer) <= SEGMENT_BYTES:
            continue
        done = 0
        with memoryview(buffer) as view:
            while len(buffer) - done > SEGMENT_BYTES:  # keep one segment back: the last one is final
                sealed = cipher.encrypt(_nonce(index, False), view[done:done + SEGMENT_BYTES], header)
                done += SEGMENT_BYTES
                index += 1
                yield _LEN.pack(len(sealed)) + sealed
        del buffer[:done]
    sealed = cipher.encrypt(_nonce(index, True), bytes(buffer), header)
    yield _LEN.pack(len(sealed)) + sealed


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
