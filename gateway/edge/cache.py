"""The edge cache at rest: spooled originals sealed with the box's cache key.

A blob whose name ends in ``.mgwc`` is sealed (``core.atrest``: streaming
AES-256-GCM, key from the key store, one derived key per file); anything else
is a plaintext blob from before encryption at rest was switched on, still
readable. Outbox files need nothing more: they hold chunk frames already sealed
to the cloud's envelope key, which the box itself cannot open.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from gateway.adapters import blobs, safefs
from gateway.core import atrest
from gateway.core.errors import IntegrityError, StorageError

KEY_NAME = "cache"
SEALED_SUFFIX = atrest.SUFFIX


def write_sealed(path: Path, key: bytes, pieces: Iterable[bytes]) -> int:
    """Seal ``pieces`` into ``path`` durably (tmp, fsync, rename, directory fsync)."""
    return blobs.write_atomic(path, atrest.seal_pieces(key, os.urandom(atrest.FILE_ID_BYTES), pieces))


def seal_in_place(path: Path, key: bytes) -> Path:
    """Seal a plaintext file (kept by a version that did not seal it) into ``<name>.mgwc``,
    durably; the caller deletes the plaintext once nothing names it any more."""
    target = path.with_name(path.name + SEALED_SUFFIX)
    write_sealed(target, key, blobs.read_pieces(path))
    return target


def plaintext_files(directory: Path) -> list[Path]:
    """Files of ``directory`` that are not sealed (scratch files of ``write_atomic`` excepted)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.endswith(SEALED_SUFFIX) and not p.name.startswith("."))


def read_blob(path: Path, key: bytes | None) -> Iterable[bytes]:
    """The original bytes of a spooled blob, sealed or not, in bounded pieces. Neither the file
    nor its folder is opened through a link (``safefs.open_regular``): the emergency export reads
    the spool as root. ``StorageError`` if it cannot be read."""
    if not path.name.endswith(SEALED_SUFFIX):
        return _pieces(path)
    if key is None:
        raise IntegrityError(f"{path.name} is sealed but encryption at rest is off: no cache key")
    return atrest.open_pieces(key, _pieces(path))


def _pieces(path: Path, piece_bytes: int = 1 << 20) -> Iterator[bytes]:
    try:
        with safefs.open_regular(path) as fh:
            while piece := fh.read(piece_bytes):
                yield piece
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
