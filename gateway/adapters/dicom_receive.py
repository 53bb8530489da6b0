"""C-STORE SCP (pynetdicom): each dataset lands as a sealed file, bytes kept exactly as sent.

A C-STORE dataset is never decoded nor re-encoded: it is written to ``incoming_dir`` sealed
with the box's cache key from its first byte (no plaintext ever reaches a disk), its structure
checked (``core.dataset``, fed here from the file), committed by an ``InstanceSink``, and only
then answered 0x0000. The handler never raises into pynetdicom; the status of every other
outcome is ``core.cstore.status_for``: SpoolFullError -> 0xA700, unparseable data -> 0xC210
and a quarantine copy, past a reader limit -> 0xC212 and a quarantine copy, anything else ->
0xC211.

Receive path: pynetdicom's chunked mode (``_config.STORE_RECV_CHUNKED_DATASET``) streams
each dataset into a Part-10 file as PDUs arrive (flat memory at any size). That file would
be a plaintext ``NamedTemporaryFile`` in the system temp dir; ``start()`` replaces the name
pynetdicom creates it with, so that on an association whose C-STORE handler is a
``StorageScp`` it is a ``blobs.SealingFile`` in that service's ``incoming_dir`` (AES-256-GCM
segments, the plaintext hashed on the way); other AEs in the process keep pynetdicom's file.
Both switches are process globals with no per-AE form, so ``start()`` sets them,
idempotently; if chunked mode is turned off, the handler seals ``event.encoded_dataset()``
instead (same bytes, held in memory).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from gateway.adapters import blobs, dicom_admission
from gateway.adapters.dicom_names import sop_class_name
from gateway.adapters.dicom_scp import DicomService, SupportedContext
from gateway.core import atrest, cstore, dataset, part10
from gateway.core.cstore import StoreStatus
from gateway.core.errors import DatasetStructureError, InstanceMismatchError
from gateway.core.instance import InstanceIdentity
from gateway.logs import MSG

log = logging.getLogger(__name__)

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_LOSSY_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 81, 91, 93, 112, 203))
_READ_PIECE = 1 << 16
FLUSH_THREADS = 4  # fsyncs of landed files in flight at once (one per busy association is plenty)


@dataclass(frozen=True)
class ReceivedInstance:
    path: Path  # durable sealed (core.atrest, cache key) Part-10 file in incoming_dir: our file meta + the
    # dataset bytes as received
    identity: InstanceIdentity  # its size and sha256 are of that plaintext
    calling_ae: str
    peer_address: str
    # Header strings for utilisation (core.exam.HEADER_TAGS: Modality, acquisition/content/series/study
    # date and time); read in the same pass as the UIDs, never the pixels. Empty values are omitted.
    header: dict[str, str] = field(default_factory=dict)
    dimse_priority: int = 0  # C-STORE Priority: 0 medium, 1 high, 2 low (for priority rules)
    requested_priority: str = ""  # (0040,1003) Requested Procedure Priority, else (0032,000C) Study Priority ID

    @property
    def modality(self) -> str:
        return self.header.get("Modality", "")


class InstanceSink(Protocol):
    def accept(self, instance: ReceivedInstance) -> int | None:
        """Commit durably (take the file, commit the row), then return the spool item id
        (None if the sink keeps no ids). SpoolFullError -> 0xA700."""


def _ts_preference() -> tuple[str, ...]:
    """All syntaxes: explicit LE, other uncompressed, lossless, lossy. pynetdicom accepts the
    first of *ours* the peer offered, so a modality is never pushed into lossy compression."""
    def rank(uid: str) -> int:
        if uid == _EXPLICIT_LE:
            return 0
        return 1 if not UID(uid).is_compressed else 3 if uid in _LOSSY_SYNTAXES else 2

    return tuple(sorted(ALL_TRANSFER_SYNTAXES, key=rank))


class StorageScp(DicomService):
    """C-STORE for every storage SOP Class and transfer syntax, to durable sealed files."""

    def __init__(self, incoming_dir: Path, quarantine_dir: Path, sink: InstanceSink, *, cache_key: bytes) -> None:
        """``cache_key`` seals every received byte (core.atrest). ``incoming_dir`` is where each
        dataset lands, durably, under its final name: the edge gives its spool's blob directory,
        so that the sink commits the row without moving the file again."""
        self.incoming_dir = incoming_dir
        self._quarantine_dir = quarantine_dir
        self._sink = sink
        self._cache_key = cache_key
        self._refused = dicom_admission.Counts()  # datasets refused, by reason
        self._flusher: ThreadPoolExecutor | None = None  # makes landed files durable (see _on_dataset_received)

    def contexts(self) -> Sequence[SupportedContext]:
        syntaxes = _ts_preference()
        # Role selection: the modality may act as SCU (it sends to us), never as SCP.
        return [SupportedContext(str(cx.abstract_syntax), syntaxes, scu_role=True, scp_role=False)
                for cx in AllStoragePresentationContexts]

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_STORE, self._on_c_store), (evt.EVT_ABORTED, _on_aborted),
                (evt.EVT_DIMSE_RECV, self._on_dataset_received)]

    def start(self) -> None:
        _configure_pynetdicom()
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self._quarantine_dir.mkdir(parents=True, exist_ok=True)
        self._flusher = ThreadPoolExecutor(max_workers=FLUSH_THREADS, thread_name_prefix="c-store-fsync")

    def stop(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.shutdown(wait=True)

    def counts(self) -> dict[str, dict[str, int]]:
        """Datasets refused since start, by reason (for metrics)."""
        return {"datasets_refused": self._refused.snapshot()}

    def partial_file(self) -> blobs.SealingFile:
        """Where pynetdicom streams a dataset as it arrives (see the module's docstring)."""
        return ReceivingFile(self.incoming_dir, self._cache_key)

    def _on_dataset_received(self, event: Event) -> None:
        """EVT_DIMSE_RECV, on the association's network thread, once a dataset's last fragment is
        written: hand the file to a flusher thread at once (final segment, fsync, rename, fsync
        of the directory), so that this work overlaps pynetdicom's hand-over to the C-STORE
        handler, which waits for it (``_land``) before anything is committed or answered."""
        spooled = getattr(event.message, "_data_set_file", None)
        flusher = self._flusher
        if isinstance(spooled, ReceivingFile) and spooled.durable is None and flusher is not None:
            try:
                spooled.durable = flusher.submit(spooled.finish_durably, spooled.final)
            except RuntimeError:  # shutting down: the handler finishes it itself
                pass

    def _on_c_store(self, event: Event) -> int:
        """EVT_C_STORE: never raises; returns the DIMSE status."""
        try:
            return int(self._store(event))
        except Exception as exc:
            status = cstore.status_for(exc)
            if status is StoreStatus.OUT_OF_RESOURCES:
                log.warning("C-STORE refused: spool full", extra=_failure_fields(status, event))
            else:
                log.exception("C-STORE failed", extra=_failure_fields(status, event))
            return status

    def _store(self, event: Event) -> StoreStatus:
        landed = _land(event, self.incoming_dir, self._cache_key)
        path = landed.path
        try:
            try:
                instance = _describe(event, landed, self._cache_key)
            except DatasetStructureError as exc:
                return self._quarantine(path, event, exc)
            item_id = self._sink.accept(instance)
        except BaseException:
            _discard(path)  # not committed: remove what the sink did not take
            raise
        log.info("instance stored", extra={
            "MESSAGE_ID": MSG.INSTANCE_STORED.value, "ITEM_ID": item_id,
            "SOP_CLASS": sop_class_name(instance.identity.sop_class_uid),
            "BYTES": instance.identity.size, "CALLING_AE": instance.calling_ae})
        return StoreStatus.SUCCESS

    def _quarantine(self, path: Path, event: Event, exc: DatasetStructureError) -> StoreStatus:
        status = cstore.status_for(exc)
        limit, mismatch = status is StoreStatus.TOO_COSTLY, isinstance(exc, InstanceMismatchError)
        self._refused.add("over a limit" if limit else "not the command's instance" if mismatch else "malformed")
        target = self._quarantine_dir / path.name
        blobs.adopt_atomic(path, target)
        log.warning("C-STORE dataset %s (%s), quarantined", "refused" if limit or mismatch else "unreadable", exc,
                    extra={**_failure_fields(status, event), "REASON": str(exc), "QUARANTINE_FILE": target.name})
        return status


# -- pynetdicom's chunked receive, sealed ------------------------------------------------------

_PYNETDICOM_TEMPFILE = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]


def _receive_file(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``NamedTemporaryFile`` in pynetdicom's chunked C-STORE receive. It runs on
    the association's DUL thread: a dataset for an association whose C-STORE handler is a
    ``StorageScp`` is sealed into that service's ``incoming_dir``; any other AE in the process
    gets pynetdicom's own file."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    bound = assoc.get_handlers(evt.EVT_C_STORE) if assoc is not None else None
    owner = getattr(bound[0], "__self__", None) if isinstance(bound, tuple) else None
    if isinstance(owner, StorageScp):
        return owner.partial_file()
    return _PYNETDICOM_TEMPFILE(*args, **kwargs)


def _configure_pynetdicom() -> None:  # process-wide switches, idempotent
    _config.STORE_RECV_CHUNKED_DATASET = True  # stream datasets to a file, never decode them
    dimse_messages.NamedTemporaryFile = _receive_file  # type: ignore[attr-defined]  # sealed, for our AEs
    _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers carry PHI
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@dataclass(frozen=True)
class _Landed:
    path: Path  # durable, sealed, under its final name in incoming_dir
    size: int  # plaintext bytes
    sha256: str  # of the plaintext
    walked: Callable[[], dataset.Walked] | None  # the walk made while it arrived, if it matches the context


def _land(event: Event, directory: Path, key: bytes) -> _Landed:
    """The received dataset's sealed Part-10 file, durable (fsync of file and directory) under
    its final name in ``directory`` before anything is committed or answered (a file a crash
    leaves behind was never acknowledged: start-up removes what no row names)."""
    spooled = getattr(event.request, "_dataset_file", None)
    if isinstance(spooled, ReceivingFile):
        try:
            size, sha256 = spooled.durable.result() if spooled.durable else spooled.finish_durably(spooled.final)
        except BaseException:
            _discard(spooled.path)  # renamed or not: nothing was committed
            raise
        syntax_ok = spooled.check.syntax == str(event.context.transfer_syntax)
        return _Landed(spooled.path, size, sha256, spooled.check.finish if syntax_ok else None)
    # chunked mode turned off elsewhere: the same bytes, from memory
    writer = ReceivingFile(directory, key)
    writer.write(event.encoded_dataset(include_meta=True))
    size, sha256 = writer.finish_durably(writer.final)
    return _Landed(writer.path, size, sha256, writer.check.finish)


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.exception("cannot remove an uncommitted incoming file")


def _on_aborted(event: Event) -> None:
    """pynetdicom keeps the temporary file of a C-STORE cut short by an abort; remove it."""
    message: Any = getattr(event.assoc.dimse, "message", None)
    try:
        if isinstance(getattr(message, "_data_set_path", None), Path):
            message._data_set_file.close()  # no more PDUs come after an abort
            _discard(message._data_set_path)
    except Exception:
        log.exception("removing a partial C-STORE file failed")


def _describe(event: Event, landed: _Landed, key: bytes) -> ReceivedInstance:
    req, requestor = cast(C_STORE, event.request), event.assoc.requestor
    transfer_syntax = UID(event.context.transfer_syntax)
    path, size, sha256 = landed.path, landed.size, landed.sha256
    if landed.walked is not None:  # walked while it arrived: nothing read back
        found = cstore.InstanceHeader.of(landed.walked())
    else:
        with open(path, "rb") as sealed:  # decrypted in memory, one segment at a time
            found = cstore.InstanceHeader.of(check_dataset(cast(BinaryIO, blobs.SealedReader(key, sealed)),
                                                           transfer_syntax))
    if mismatch := found.mismatch(str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)):
        raise InstanceMismatchError(int(mismatch[0]), mismatch[1])
    identity = InstanceIdentity(
        sop_class_uid=str(req.AffectedSOPClassUID), sop_instance_uid=str(req.AffectedSOPInstanceUID),
        study_instance_uid=found.study_instance_uid, series_instance_uid=found.series_instance_uid,
        transfer_syntax_uid=str(transfer_syntax), size=size, sha256=sha256)
    return ReceivedInstance(
        path=path, identity=identity, calling_ae=str(requestor.ae_title).strip(), peer_address=str(requestor.address),
        header=found.header, dimse_priority=int(getattr(req, "Priority", 0) or 0),
        requested_priority=found.requested_priority)


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


class ReceivingFile(blobs.SealingFile):
    """A dataset being received into ``directory``: sealed and structure-checked as it arrives
    (``<uuid>.part``), made durable as ``final`` (``<uuid>.dcm.mgwc``) by whichever comes first
    of a flusher thread and the C-STORE handler."""

    def __init__(self, directory: Path, key: bytes) -> None:
        name = uuid.uuid4().hex
        self.check = StreamCheck()
        self.final = directory / f"{name}.dcm{atrest.SUFFIX}"
        self.durable: Future[tuple[int, str]] | None = None
        super().__init__(directory / f"{name}.part", key, tap=self.check)


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


def _failure_fields(status: StoreStatus, event: Event) -> dict[str, Any]:
    sop_class = sop_class_name(str(cast(C_STORE, event.request).AffectedSOPClassUID))
    return {"MESSAGE_ID": MSG.STORE_FAILED.value, "STATUS": f"0x{int(status):04X}", "SOP_CLASS": sop_class}
