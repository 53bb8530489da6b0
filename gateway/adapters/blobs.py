"""Durable files: write to a temporary name, fsync, rename, fsync the directory.

After ``write_atomic`` returns, the file survives a power cut with exactly the
bytes given; before, it is either absent or complete under its final name.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from gateway.core import atrest
from gateway.core.errors import SpoolFullError, StorageError


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir_durable(directory: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory that was missing,
    so a power cut cannot lose a freshly created directory with its files."""
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)  # another process may have won the race: fine
        fsync_dir(new.parent)


def _translate(exc: OSError, path: Path) -> Exception:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFullError(f"no space left writing {path}")
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (made 0600 if absent) while the block runs: one
    process at a time, for work that must happen once (making the fleet CA, which two cloud
    services starting together would otherwise both do)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise _translate(exc, path) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_atomic(path: Path, pieces: Iterable[bytes | bytearray] | bytes, mode: int = 0o600) -> int:
    """Write ``pieces`` to ``path`` durably; return the byte count."""
    if isinstance(pieces, bytes | bytearray | memoryview):
        pieces = [bytes(pieces)]
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    written = 0
    try:
        ensure_dir_durable(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _translate(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)  # the source failed: leave nothing behind
        raise
    return written


def adopt_atomic(src: Path, path: Path) -> None:
    """Durably move an already-written file (same filesystem) to ``path``."""
    try:
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        ensure_dir_durable(path.parent)
        os.replace(src, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise _translate(exc, path) from exc


def remove(path: Path) -> None:
    """Delete a file if present; durability of the delete is best effort."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from exc


def read_pieces(path: Path, piece_bytes: int = 1 << 20) -> Iterable[bytes]:
    try:
        with open(path, "rb") as fh:
            while piece := fh.read(piece_bytes):
                yield piece
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc


class SealingFile:
    """A new file (0600, never overwriting) sealed from its first byte (``core.atrest``) as
    plaintext is written into it piece by piece, e.g. by pynetdicom's chunked receive, which
    calls ``write``, ``file.flush`` and ``close`` and knows it by ``name``. Counts and hashes
    the plaintext on the way. A write error is kept and raised by ``finish``, never into the
    writer (pynetdicom's network thread). ``finish`` does not fsync: the caller adopts the
    file durably (``adopt_atomic``)."""

    def __init__(self, path: Path, key: bytes, tap: Callable[[bytes | bytearray | memoryview], None] | None = None,
                 *, existing: bool = False) -> None:
        """``tap`` sees every plaintext piece as it is written (a structure check reading along,
        so nothing is read back); it must not raise. ``existing``: ``path`` is an empty file made
        ahead (``FilePool``), written in place instead of created."""
        self.path, self.name, self.file = path, str(path), self  # ``file``: NamedTemporaryFile's shape
        self.size = 0
        self._digest = hashlib.sha256()
        self._sealer = atrest.Sealer(key, os.urandom(atrest.FILE_ID_BYTES))
        self._tap = tap
        self._error: Exception | None = None
        self._lock = threading.RLock()  # the descriptor: the writer's thread, a finishing thread, pynetdicom's close
        self._fd = -1
        try:
            flags = os.O_WRONLY | os.O_NOFOLLOW if existing else os.O_WRONLY | os.O_CREAT | os.O_EXCL
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:
            self._error = _translate(exc, path)
        self._put(self._sealer.header)

    def write(self, piece: bytes | bytearray | memoryview) -> int:
        self._digest.update(piece)
        self.size += len(piece)
        if self._tap is not None:
            self._tap(piece)
        for record in self._sealer.update(piece):
            self._put(record)
        return len(piece)

    def flush(self) -> None:
        """Nothing to do: records go straight to the descriptor."""

    def finish(self) -> tuple[int, str]:
        """Write the final segment and close; return (plaintext bytes, plaintext SHA-256 hex)."""
        self._put(self._sealer.finish())
        self.close()
        if self._error is not None:
            raise self._error
        return self.size, self._digest.hexdigest()

    def finish_durably(self, final: Path) -> tuple[int, str]:
        """``finish``, and make the file durable under ``final`` (in the same directory): fsync
        of the file, rename, fsync of the directory; only the fsync of the file when ``final`` is
        its own name, already durable (a ``FilePool`` file). After it returns a power cut keeps
        exactly these bytes under ``final``; ``path`` is ``final`` then."""
        with self._lock:
            self._put(self._sealer.finish())
            if self._error is None and self._fd >= 0:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    self._error = _translate(exc, self.path)
            self.close()
            if self._error is not None:
                raise self._error
            if final != self.path:
                try:
                    os.rename(self.path, final)
                    fsync_dir(final.parent)
                except OSError as exc:
                    raise _translate(exc, final) from exc
                self.path = final
            return self.size, self._digest.hexdigest()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _put(self, data: bytes | bytearray) -> None:
        if self._error is not None or self._fd < 0:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._error = _translate(exc, self.path)


class FilePool:
    """Empty files made ahead in ``directory``, each handed out once (``take``), whose directory
    entries are already durable: they are made a batch at a time, then one fsync of the
    directory covers the whole batch. A file written into one and fsynced is durable under its
    name with no rename and no further fsync of the directory. Unused ones are removed by
    ``close`` (after a crash, by whoever sweeps files no record names)."""

    def __init__(self, directory: Path, suffix: str, batch: int = 16) -> None:
        self.directory, self._suffix, self._batch = directory, suffix, batch
        self._ready: list[Path] = []
        self._lock = threading.Lock()

    def take(self) -> Path:
        with self._lock:
            if not self._ready:
                self._ready = self._make()
            return self._ready.pop()

    def spares(self) -> set[Path]:
        """The files made ahead and not yet handed out."""
        with self._lock:
            return set(self._ready)

    def close(self) -> None:
        with self._lock:
            spares, self._ready = self._ready, []
        for path in spares:
            path.unlink(missing_ok=True)

    def _make(self) -> list[Path]:
        made: list[Path] = []
        try:
            ensure_dir_durable(self.directory)
            for _ in range(self._batch):
                path = self.directory / f"{uuid.uuid4().hex}{self._suffix}"
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                made.append(path)
            fsync_dir(self.directory)
        except OSError as exc:
            for path in made:
                path.unlink(missing_ok=True)
            raise _translate(exc, self.directory) from exc
        return made


class SealedReader(io.RawIOBase):
    """A seekable read-only file of the plaintext of the sealed file ``fh`` (``core.atrest``),
    for readers that seek (the header walk over a received dataset). Segments are decrypted in
    memory, and authenticated, only when read, one kept at a time: seeking over pixel data
    never decrypts them."""

    def __init__(self, key: bytes, fh: BinaryIO) -> None:
        super().__init__()
        fh.seek(0)
        header = fh.read(atrest.HEADER_BYTES)
        self._fh = fh
        self._opener = atrest.SegmentOpener(key, header, fh.seek(0, os.SEEK_END))
        self.plain_size = self._opener.plain_size
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
                index, offset = divmod(self._pos, atrest.SEGMENT_BYTES)
                plain = self._segment(index)
                n = min(len(out) - filled, len(plain) - offset)
                out[filled:filled + n] = plain[offset:offset + n]
                filled += n
                self._pos += n
            return filled

    def _segment(self, index: int) -> bytes:
        if self._cached[0] != index:
            self._fh.seek(self._opener.offset(index))
            self._cached = (index, self._opener.open(index, self._fh.read(atrest.RECORD_BYTES)))
        return self._cached[1]
