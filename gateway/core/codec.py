"""Lossless codecs for the object payload.

The codec id travels inside the sealed manifest, so new (pixel-aware) codecs
can be added without a protocol break: an old cloud refuses an unknown id
with a clear error instead of producing a wrong file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator

import zstandard

from gateway.core.errors import CodecError, FrameError, IntegrityError


class Codec(enum.IntEnum):
    IDENTITY = 0
    ZSTD = 1


def compress_stream(
    codec: Codec, pieces: Iterable[bytes], piece_bytes: int, level: int = 3
) -> Iterator[bytes]:
    """Yield the compressed stream cut into pieces of exactly ``piece_bytes``
    (the last one may be shorter, and is never omitted: at least one piece)."""
    if piece_bytes <= 0:
        raise ValueError("piece_bytes must be positive")
    if codec is Codec.ZSTD:
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        chunker = cctx.chunker(chunk_size=piece_bytes)
        emitted = False
        for data in pieces:
            for out in chunker.compress(data):
                emitted = True
                yield out
        for out in chunker.finish():
            emitted = True
            yield out
        if not emitted:  # pragma: no cover - zstd always emits a frame header
            yield b""
        return
    if codec is Codec.IDENTITY:
        yield from _rechunk(pieces, piece_bytes)
        return
    raise FrameError(f"unknown codec {codec!r}")


def _rechunk(pieces: Iterable[bytes], piece_bytes: int) -> Iterator[bytes]:
    buf = bytearray()
    emitted = False
    for data in pieces:
        buf += data
        while len(buf) >= piece_bytes:
            emitted = True
            yield bytes(buf[:piece_bytes])
            del buf[:piece_bytes]
    if buf or not emitted:
        yield bytes(buf)


class Decompressor:
    """Incremental decompressor that refuses to produce more than ``max_bytes``."""

    def __init__(self, codec: int, max_bytes: int) -> None:
        try:
            self.codec = Codec(codec)
        except ValueError as exc:
            raise FrameError(f"unknown codec id {codec}") from exc
        self._max_bytes = max_bytes
        self._produced = 0
        self._zstd = (
            zstandard.ZstdDecompressor().decompressobj() if self.codec is Codec.ZSTD else None
        )

    def feed(self, data: bytes) -> bytes:
        if self._zstd is None:
            out = data
        else:
            try:
                out = self._zstd.decompress(data)
            except zstandard.ZstdError as exc:
                raise CodecError(f"zstd stream is corrupt: {exc}") from exc
        self._produced += len(out)
        if self._produced > self._max_bytes:
            raise IntegrityError(
                f"payload expands beyond the declared {self._max_bytes} bytes"
            )
        return out

    def finish(self) -> None:
        if self._zstd is not None and not self._zstd.eof:
            raise CodecError("zstd stream is truncated")
