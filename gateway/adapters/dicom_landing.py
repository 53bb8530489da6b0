"""Where a received C-STORE dataset lands: sealed, structure-checked and hashed as it arrives.

pynetdicom's chunked receive writes each dataset, PDU by PDU, into the file object that
``dicom_receive`` gives it: a ``ReceivingFile``. That file seals every byte from the first
(``blobs.SealingFile``: no plaintext reaches a disk), hashes it, and lets a ``StreamCheck``
walk the dataset's structure from the same bytes on the way (``core.dataset``), so nothing is
read back once the last fragment is in. ``finish_durably`` then makes it durable under its
final name: final segment, fsync of the file, rename, fsync of the directory.

``check_dataset`` is the same walk over a file already written (a sealed file opened with
``blobs.SealedReader``, tests, the fuzzers).
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

from gateway.adapters import blobs
from gateway.core import atrest, cstore, dataset, part10
from gateway.core.errors import DatasetStructureError

_READ_PIECE = 1 << 16


class StreamCheck:
    """The structure walk of ``check_dataset``, fed with the plaintext as pynetdicom writes it
    (a ``SealingFile`` tap), so no received byte is read back. It runs on the association's
    network thread and never raises there: the first error is kept for ``finish``. Its time
    limit counts the time spent walking, not the time the peer takes to send."""

    def __init__(self, limits: dataset.Limits | None = None) -> None:
        self.syntax = ""  # from the file meta pynetdicom wrote: the accepted context's
        self._limits = limits
        self._head = bytearray()
        self._walk: dataset.DatasetWalk | None = None
        self._error: Exception | None = None
        self._spent_s = 0.0

    def __call__(self, piece: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            return
        started = time.monotonic()
        try:
            if self._walk is not None:
                self._walk.feed(piece)
            else:
                self._head += piece
                self._start()
        except Exception as exc:  # DatasetStructureError, or a bug: reported by finish()
            self._error = exc
        self._spent_s += time.monotonic() - started

    def _start(self) -> None:
        if len(self._head) < part10.META_HEAD_BYTES:
            return
        start = part10.meta_end(bytes(self._head[:part10.META_HEAD_BYTES]))
        if len(self._head) < start:
            return
        self.syntax = part10.meta_transfer_syntax(bytes(self._head[:start]))
        self._walk = dataset.DatasetWalk(dataset.Syntax.from_uid(self.syntax), cstore.WANTED, self._limits,
                                         lambda: self._spent_s)
        rest, self._head = self._head[start:], bytearray()
        if rest:
            self._walk.feed(rest)

    def finish(self) -> dataset.Walked:
        """What ``check_dataset`` returns for the bytes seen; raises what it would raise."""
        if self._error is not None:
            raise self._error
        if self._walk is None:
            raise DatasetStructureError("empty dataset")
        return self._walk.finish()


SUFFIX = f".dcm{atrest.SUFFIX}"  # a landed dataset's file name ending


class ReceivingFile(blobs.SealingFile):
    """A dataset being received, sealed and structure-checked as it arrives, made durable
    (``finish_durably(final)``) by whichever comes first of a flusher thread and the C-STORE
    handler. From a ``pool`` it is written in place, ``<uuid>.dcm.mgwc`` from the first byte
    (durable with one fsync); otherwise it is ``<uuid>.part`` in ``directory``, renamed to
    ``final``. pynetdicom knows it by a name that never exists (``name``): it unlinks that name
    after the handler, and must not remove a committed file."""

    def __init__(self, directory: Path, key: bytes, pool: blobs.FilePool | None = None) -> None:
        self.check = StreamCheck()
        self.outcome: Future[int] | None = None  # the C-STORE status, once durable and committed (dicom_receive)
        made_ahead = _take(pool)
        if made_ahead is not None:
            self.final = made_ahead
            super().__init__(self.final, key, tap=self.check, existing=True)
            self.name = f"{self.final}.receiving"
        else:
            name = uuid.uuid4().hex
            self.final = directory / f"{name}{SUFFIX}"
            super().__init__(directory / f"{name}.part", key, tap=self.check)


def _take(pool: blobs.FilePool | None) -> Path | None:
    """A file made ahead, or None (no pool, or it cannot make files now: the dataset then lands as
    a new file, whose own open reports the error through ``finish``; never raise into pynetdicom)."""
    if pool is None:
        return None
    try:
        return pool.take()
    except Exception:
        return None


def check_dataset(fh: BinaryIO, transfer_syntax: str, limits: dataset.Limits | None = None) -> dataset.Walked:
    """Raise DatasetStructureError (DatasetLimitError past ``limits``) unless the Part-10 file ``fh``
    holds one complete dataset; return the top-level values of ``core.cstore.WANTED``. The walk
    itself is pure (core.dataset); this feeds it the file. Values it does not need (pixel data)
    are seeked over, never read; a deflated dataset is inflated as it is read, in bounded
    pieces, and nothing inflated is kept."""
    fh.seek(0)
    start, end = part10.meta_end(fh.read(part10.META_HEAD_BYTES)), fh.seek(0, os.SEEK_END)
    walk = dataset.DatasetWalk(dataset.Syntax.from_uid(str(transfer_syntax)), cstore.WANTED, limits, time.monotonic)
    fh.seek(start)
    remaining = end - start
    while remaining > 0 and (piece := fh.read(min(_READ_PIECE, remaining))):
        remaining -= len(piece)
        if skip := min(walk.feed(piece), remaining):
            fh.seek(skip, os.SEEK_CUR)
            walk.skip(skip)
            remaining -= skip
    return walk.finish()
