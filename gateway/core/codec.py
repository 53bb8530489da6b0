"""Lossless codecs for the object payload.

The codec id travels inside the sealed manifest, so new (pixel-aware) codecs
can be added without a protocol break: an old cloud refuses an unknown id
with a clear error instead of producing a wrong file.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, cast

import zstandard

from gateway.core.errors import CodecError, FrameError, IntegrityError
from gateway.core.segment import FORMAT_IMAGE_CODECS, ImageDecoder, decode_segments


class Codec(enum.IntEnum):
    IDENTITY = 0
    ZSTD = 1
    PIXEL = 2  # segmented payload, format 1 (gateway/core/segment.py): pixel strips JPEG-LS, the rest zstd
    PIXEL2 = 3  # segmented payload, format 2: image codecs JPEG-LS, JPEG-XL, HTJ2K, JPEG 2000 (best of per strip)


PIXEL_FORMATS = {Codec.PIXEL: 1, Codec.PIXEL2: 2}
"""The format version of each segmented codec; a format's image codecs are ``segment.FORMAT_IMAGE_CODECS``."""


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
        for out in chunker.finish():  # type: ignore[no-untyped-call]  # zstandard's stub lacks it
            emitted = True
            yield out
        if not emitted:  # pragma: no cover - zstd always emits a frame header
            yield b""
        return
    if codec is Codec.IDENTITY:
        yield from rechunk(pieces, piece_bytes)
        return
    if codec in PIXEL_FORMATS:
        raise ValueError("a PIXEL payload is coded by the caller (gateway/codecs): use transfer.seal_payload")
    raise FrameError(f"unknown codec {codec!r}")


def rechunk(pieces: Iterable[bytes], piece_bytes: int) -> Iterator[bytes]:
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


OUTPUT_PIECE_BYTES = 64 * 1024


def decompress_stream(
    codec: int, pieces: Iterable[bytes], max_bytes: int, image_decoders: Mapping[int, ImageDecoder] | None = None
) -> Iterator[bytes]:
    """Yield the original bytes in pieces of at most ``OUTPUT_PIECE_BYTES``.

    Pull-based, so memory stays bounded whatever the compression ratio (one
    128 KiB zstd chunk can expand to gigabytes). Raises ``IntegrityError`` as
    soon as the output exceeds ``max_bytes``, ``CodecError`` if the stream is
    corrupt; exceptions raised while iterating ``pieces`` propagate unchanged.
    ``image_decoders`` decode the IMAGE segments of a PIXEL payload (none: such a
    payload raises ``CodecError``); PIXEL output comes in pieces of at most one segment.
    """
    try:
        known = Codec(codec)
    except ValueError as exc:
        raise FrameError(f"unknown codec id {codec}") from exc
    produced = 0
    if known is Codec.ZSTD:
        outs = _zstd_pieces(pieces)
    elif known in PIXEL_FORMATS:
        allowed = FORMAT_IMAGE_CODECS[PIXEL_FORMATS[known]]
        outs = decode_segments(pieces, {k: v for k, v in (image_decoders or {}).items() if k in allowed})
    else:
        outs = rechunk(pieces, OUTPUT_PIECE_BYTES)
    for out in outs:
        produced += len(out)
        if produced > max_bytes:
            raise IntegrityError(f"payload expands beyond the declared {max_bytes} bytes")
        if out:
            yield out


class _PieceReader:
    """``read(n)`` over an iterator of byte strings, as zstd's stream_reader wants."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while not self._buf:
            nxt = next(self._pieces, None)
            if nxt is None:
                return b""
            self._buf = nxt
        if size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return out


def _zstd_pieces(pieces: Iterable[bytes]) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], _PieceReader(pieces)))
    try:
        while out := reader.read(OUTPUT_PIECE_BYTES):
            yield out
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd stream is corrupt: {exc}") from exc
