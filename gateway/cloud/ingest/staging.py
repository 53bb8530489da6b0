"""Where verified chunks wait until their transfer is complete, shared by all workers.

Chunks of one transfer reach whichever ingest worker the broker's shared
subscription picks, so staging is never private to a worker: any worker may
hold any chunk, and the one that sees the set complete assembles it.
``hold()`` gives exclusive use of one transfer's staging across every worker
that shares it (and waits for it); inside, ``put`` is durable before it returns.

* ``FileStaging`` (default): ``<staging>/<box>/<transfer>/<seq>.chunk`` with a
  ``.lock`` file held by ``fcntl.flock`` (per open file description, so it also
  separates two holders in one process). Shared by the workers of one node; a
  clear unlinks the lock file, and a waiter that then gets the old inode sees
  the change and retries. The lock file's mtime is the transfer's last activity.
* ``PostgresStaging`` (``gateway.adapters.postgres_staging``): chunks as rows, a
  session advisory lock per transfer; shared by workers on any machine.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from gateway.adapters import blobs
from gateway.config import BOX_ID
from gateway.core.errors import StorageError

LOCK_NAME = ".lock"
_CHUNK_FILE = re.compile(r"([0-9]+)\.chunk")
_TRANSFER_DIR = re.compile(r"[0-9a-f]{32}")
Forget = Callable[[str, str], None]  # (box_id, transfer hex), called while the transfer is held


class StagedTransfer(Protocol):
    def put(self, seq: int, raw: bytes) -> bool: ...  # True if newly staged, durable on return
    def seqs(self) -> set[int]: ...
    def read(self, seq: int) -> bytes: ...
    def drop(self, seq: int) -> None: ...
    def clear(self) -> None: ...


class Staging(Protocol):
    def present(self, box_id: str, transfer_hex: str) -> bool: ...
    def hold(self, box_id: str, transfer_hex: str, now: float) -> AbstractContextManager[StagedTransfer]: ...
    def expire(self, cutoff: float, forget: Forget) -> int: ...
    def chunk_count(self) -> int: ...
    def transfer_count(self) -> int: ...  # transfers with chunks staged (unfinished), all boxes
    def usage(self, box_id: str) -> tuple[int, int]: ...  # (unfinished transfers, staged bytes) of one box
    def close(self) -> None: ...


class _FileTransfer:
    def __init__(self, tdir: Path) -> None:
        self._dir = tdir

    def put(self, seq: int, raw: bytes) -> bool:
        path = self._dir / f"{seq}.chunk"
        if path.exists():
            return False
        blobs.write_atomic(path, raw)
        return True

    def seqs(self) -> set[int]:
        return {int(m.group(1)) for name in os.listdir(self._dir) if (m := _CHUNK_FILE.fullmatch(name))}

    def read(self, seq: int) -> bytes:
        return b"".join(blobs.read_pieces(self._dir / f"{seq}.chunk"))

    def drop(self, seq: int) -> None:
        blobs.remove(self._dir / f"{seq}.chunk")

    def clear(self) -> None:
        _clear(self._dir)


class FileStaging:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, box_id: str, transfer_hex: str) -> Path:
        return self.root / box_id / transfer_hex

    def present(self, box_id: str, transfer_hex: str) -> bool:
        return self._dir(box_id, transfer_hex).exists()

    @contextmanager
    def hold(self, box_id: str, transfer_hex: str, now: float) -> Iterator[StagedTransfer]:
        tdir = self._dir(box_id, transfer_hex)
        try:
            with _transfer_lock(tdir) as fd:
                assert fd is not None
                os.utime(fd, (now, now))  # the lock file's mtime is the transfer's last activity
                yield _FileTransfer(tdir)
        except OSError as exc:
            raise StorageError(f"staging {tdir}: {exc.strerror or exc}") from exc

    def expire(self, cutoff: float, forget: Forget) -> int:
        expired = 0
        try:
            for tdir in self._transfer_dirs():
                with _transfer_lock(tdir, wait=False) as fd:
                    if fd is None or os.fstat(fd).st_mtime >= cutoff:
                        continue  # busy, or active recently
                    forget(tdir.parent.name, tdir.name)
                    _clear(tdir)
                    expired += 1
        except OSError as exc:
            raise StorageError(f"expiring staging in {self.root}: {exc.strerror or exc}") from exc
        return expired

    def _transfer_dirs(self) -> list[Path]:
        boxes = [b for b in self.root.iterdir() if BOX_ID.fullmatch(b.name)] if self.root.is_dir() else []
        return [t for b in boxes if b.is_dir() for t in b.iterdir() if _TRANSFER_DIR.fullmatch(t.name) and t.is_dir()]

    def chunk_count(self) -> int:
        return sum(1 for _ in self.root.rglob("*.chunk")) if self.root.exists() else 0

    def transfer_count(self) -> int:
        try:
            return len(self._transfer_dirs())
        except OSError as exc:
            raise StorageError(f"counting staged transfers in {self.root}: {exc.strerror or exc}") from exc

    def usage(self, box_id: str) -> tuple[int, int]:
        transfers = size = 0
        try:
            with os.scandir(self.root / box_id) as tdirs:
                for tdir in tdirs:
                    if not (_TRANSFER_DIR.fullmatch(tdir.name) and tdir.is_dir(follow_symlinks=False)):
                        continue
                    transfers += 1
                    with os.scandir(tdir.path) as chunks:
                        size += sum(c.stat(follow_symlinks=False).st_size for c in chunks
                                    if _CHUNK_FILE.fullmatch(c.name))
        except FileNotFoundError:
            pass  # nothing staged for this box, or a transfer cleared while counting
        except OSError as exc:
            raise StorageError(f"staging usage of {box_id}: {exc.strerror or exc}") from exc
        return transfers, size

    def close(self) -> None:
        pass


def _clear(tdir: Path) -> None:
    """Remove a transfer's staging; the caller holds its lock. Missing is fine."""
    if not tdir.is_dir():
        return
    for entry in tdir.iterdir():
        if entry.name != LOCK_NAME:
            entry.unlink(missing_ok=True)
    (tdir / LOCK_NAME).unlink(missing_ok=True)  # waiters notice the inode change and retry
    try:
        tdir.rmdir()
    except OSError:
        pass  # a waiter already re-created its lock file here; it will clear again


@contextmanager
def _transfer_lock(tdir: Path, wait: bool = True) -> Iterator[int | None]:
    """Hold ``tdir/.lock`` exclusively and yield its fd; None if not ``wait`` and busy."""
    lock, fd = tdir / LOCK_NAME, None
    while fd is None:
        if wait:
            blobs.ensure_dir_durable(tdir)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                raise FileNotFoundError(lock)  # cleared while we waited: start over
        except (FileNotFoundError, BlockingIOError):
            if fd is not None:
                os.close(fd)
                fd = None
            if not wait:
                break
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
