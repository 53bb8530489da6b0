"""Files in folders someone else controls: a USB stick, or a folder the service user can change.

Everything here works relative to directory file descriptors opened with ``O_NOFOLLOW``, so no
path is resolved twice and no symbolic link is ever followed, for reading or for writing:

* ``open_dir``: a directory, never a link to one.
* ``read_regular``: a regular file's bytes; its size is checked on the open descriptor before
  anything is read and never more than ``limit + 1`` bytes are read. Links, FIFOs, devices,
  sockets and directories are refused (``UnsafeFileError``) without being opened.
* ``write_new``: a new file, written under a temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``),
  fsynced, renamed within the directory and the directory fsynced: a final name only ever holds
  complete data. The destination failing raises ``SinkError`` (``full`` when out of space).
* ``open_regular``: a regular file for reading, neither it nor its folder through a link.
* ``hand_over``: give what root created under a folder to the folder's owner, by ``fchown`` on
  descriptors opened ``O_NOFOLLOW``.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from gateway.core.errors import LocalError, PeerError
from gateway.logs import escape

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
HAND_OVER_DEPTH = 16
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


class UnsafeFileError(PeerError):
    """A file from outside is not a plain regular file of acceptable size, or cannot be read."""


class SinkError(LocalError):
    """Writing to the destination failed; ``full`` when it ran out of space."""

    def __init__(self, message: str, full: bool) -> None:
        super().__init__(message)
        self.full = full


def open_dir(path: str | Path, dir_fd: int | None = None) -> int:
    """A descriptor of the directory ``path`` (relative to ``dir_fd`` if given); a link is refused (ELOOP)."""
    return os.open(path, DIR_FLAGS, dir_fd=dir_fd)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"not a single file name: {escape(name)}")


def _kind(mode: int) -> str | None:
    """What a non-regular file is (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def read_regular(dir_fd: int, name: str, limit: int) -> bytes:
    """The bytes of the regular file ``name`` in ``dir_fd``, at most ``limit`` of them."""
    _check_name(name)
    shown = escape(name)
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (kind := _kind(before.st_mode)) is not None:  # never open a FIFO or a device
            raise UnsafeFileError(f"{shown} is {kind}, not a regular file")
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read: {exc.strerror}"
        raise UnsafeFileError(f"{shown} {why}") from exc
    try:
        st = os.fstat(fd)
        if (kind := _kind(st.st_mode)) is not None or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafeFileError(f"{shown} changed while it was opened")
        if st.st_size > limit:
            raise UnsafeFileError(f"{shown} is too large ({st.st_size} bytes; at most {limit})")
        return _read_at_most(fd, limit, shown)
    except OSError as exc:
        raise UnsafeFileError(f"{shown} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file: its folder and the file itself opened
    ``O_NOFOLLOW`` (for root reading a folder the service user can change). ``OSError`` otherwise."""
    dir_fd = open_dir(path.parent)
    try:
        fd = os.open(path.name, READ_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if _kind(os.fstat(fd).st_mode) is not None:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _read_at_most(fd: int, limit: int, shown: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        piece = os.read(fd, min(1 << 16, limit + 1 - total))
        if not piece:
            break
        chunks.append(piece)
        total += len(piece)
    if total > limit:  # it grew after the size check
        raise UnsafeFileError(f"{shown} is too large (more than {limit} bytes)")
    return b"".join(chunks)


def _sink(exc: OSError, shown: str) -> SinkError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return SinkError(f"cannot write {shown}: {'no space left' if full else exc.strerror or exc}", full)


def write_new(dir_fd: int, name: str, pieces: Iterable[bytes], mode: int = 0o600) -> int:
    """Write ``pieces`` as the new file ``name`` in ``dir_fd``, durably; return the byte count.

    An exception from ``pieces`` passes through unchanged; the destination failing raises
    ``SinkError``. Either way the temporary file is removed and ``name`` is not created.
    """
    _check_name(name)
    shown, tmp = escape(name), f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    written = 0
    try:
        fd = os.open(tmp, CREATE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise _sink(exc, shown) from exc
    try:
        try:
            for piece in pieces:
                written += _write_all(fd, piece, shown)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        _unlink_quietly(dir_fd, tmp)
        raise _sink(exc, shown) from exc
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise
    return written


def _write_all(fd: int, piece: bytes, shown: str) -> int:
    view = memoryview(piece)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as exc:
            raise _sink(exc, shown) from exc
        view = view[n:]
    return len(piece)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass  # the destination is failing; the temporary name says what it is


def hand_over(directory: Path) -> int:
    """Give every regular file and folder under ``directory`` that root owns to ``directory``'s owner.

    For a root process that created files in a folder the service user can change: each folder is
    opened ``O_NOFOLLOW`` relative to its parent's descriptor and each file relative to its
    folder's, and the owner is changed by ``fchown`` on that descriptor. A link is never
    followed, a name swapped mid-walk changes only what the walk itself opened, a file with
    more than one link (a hard link to a file elsewhere) is left alone, as are other file
    systems and anything deeper than ``HAND_OVER_DEPTH``. Returns how many entries changed.
    """
    if os.geteuid() != 0:
        return 0
    try:
        fd = open_dir(directory)
    except FileNotFoundError:
        return 0
    try:
        top = os.fstat(fd)
        return 0 if top.st_uid == 0 else _hand_over_dir(fd, top, HAND_OVER_DEPTH)
    finally:
        os.close(fd)


def _hand_over_dir(dir_fd: int, top: os.stat_result, depth: int) -> int:
    changed = 0
    for name in os.listdir(dir_fd):
        try:
            seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            is_dir = stat.S_ISDIR(seen.st_mode)
            if seen.st_dev != top.st_dev or not (is_dir or (stat.S_ISREG(seen.st_mode) and seen.st_uid == 0)):
                continue
            fd = os.open(name, (DIR_FLAGS if is_dir else READ_FLAGS), dir_fd=dir_fd)
        except OSError:
            continue  # gone, swapped for a link, or not openable: not ours to change
        try:
            st = os.fstat(fd)
            if st.st_uid == 0 and (stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1)):
                os.fchown(fd, top.st_uid, top.st_gid)
                changed += 1
            if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev and depth > 0:
                changed += _hand_over_dir(fd, top, depth - 1)
        finally:
            os.close(fd)
    return changed
