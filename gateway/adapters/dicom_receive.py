"""C-STORE SCP (pynetdicom): each dataset lands as a sealed file, bytes kept exactly as sent.

A C-STORE dataset is never decoded nor re-encoded: it is written to ``incoming_dir`` sealed
with the box's cache key from its first byte (no plaintext ever reaches a disk), its structure
checked on the way (``core.dataset``, fed the same bytes: nothing is read back), made durable,
committed by an ``InstanceSink``, and only then answered 0x0000. The handler never raises into
pynetdicom; the status of every other outcome is ``core.cstore.status_for``: SpoolFullError ->
0xA700, unparseable data -> 0xC210 and a quarantine copy, past a reader limit -> 0xC212 and a
quarantine copy, anything else -> 0xC211.

Receive path: pynetdicom's chunked mode (``_config.STORE_RECV_CHUNKED_DATASET``) streams
each dataset into a Part-10 file as PDUs arrive (flat memory at any size). That file would
be a plaintext ``NamedTemporaryFile`` in the system temp dir; ``start()`` replaces the name
pynetdicom creates it with, so that on an association whose C-STORE handler is a
``StorageScp`` it is a ``dicom_landing.ReceivingFile`` in that service's ``incoming_dir``
(AES-256-GCM segments, the plaintext hashed and walked on the way); other AEs in the process
keep pynetdicom's file. Both switches are process globals with no per-AE form, so ``start()``
sets them, idempotently; if chunked mode is turned off, the handler seals
``event.encoded_dataset()`` instead (same bytes, held in memory).

Completion: once the last fragment is written (EVT_DIMSE_RECV, the association's network
thread), the rest of the store (final segment, fsync of the file, rename to its final name,
fsync of the directory, the sink's commit) runs on a flusher thread, overlapping pynetdicom's
hand-over of the request to the C-STORE handler; the handler waits for its status. Several
associations' stores complete side by side, so their fsyncs share the file system's journal
commits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from gateway.adapters import blobs, dicom_admission
from gateway.adapters.dicom_landing import SUFFIX, ReceivingFile, StreamCheck, check_dataset
from gateway.adapters.dicom_names import sop_class_name
from gateway.adapters.dicom_scp import DicomService, SupportedContext
from gateway.core import cstore
from gateway.core.cstore import StoreStatus
from gateway.core.errors import DatasetStructureError, InstanceMismatchError
from gateway.core.instance import InstanceIdentity
from gateway.logs import MSG

log = logging.getLogger(__name__)

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_LOSSY_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 81, 91, 93, 112, 203))
FLUSH_THREADS = 4  # stores completing at once (each mostly waits on fsync); more associations queue
__all__ = ["InstanceSink", "ReceivedInstance", "StorageScp", "StreamCheck", "check_dataset"]


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
        self._pool: blobs.FilePool | None = None  # empty files made ahead, durable entries: one fsync per dataset

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
        self._pool = blobs.FilePool(self.incoming_dir, SUFFIX)

    def stop(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.shutdown(wait=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def spares(self) -> set[Path]:
        """Empty files made ahead for datasets to come (none once stopped)."""
        return set() if self._pool is None else self._pool.spares()

    def counts(self) -> dict[str, dict[str, int]]:
        """Datasets refused since start, by reason (for metrics)."""
        return {"datasets_refused": self._refused.snapshot()}

    def partial_file(self) -> blobs.SealingFile:
        """Where pynetdicom streams a dataset as it arrives (see the module's docstring)."""
        return ReceivingFile(self.incoming_dir, self._cache_key, self._pool)

    def _on_dataset_received(self, event: Event) -> None:
        """EVT_DIMSE_RECV, on the association's network thread, once a C-STORE's last fragment is
        written: the whole store (final segment, fsyncs, structure check, the sink's commit) starts
        at once on a flusher thread, overlapping pynetdicom's hand-over of the request to the
        C-STORE handler, which waits for its status. Whatever the outcome, nothing is answered
        before it; a store committed for a request pynetdicom then drops (a release under way, an
        abort) is one the modality was never told about, and a re-send of it is recognised."""
        spooled = getattr(event.message, "_data_set_file", None)
        flusher = self._flusher
        if not isinstance(spooled, ReceivingFile) or spooled.outcome is not None or flusher is None:
            return
        try:
            command = event.message.command_set
            if not (command.get("AffectedSOPClassUID") and command.get("AffectedSOPInstanceUID")):
                return  # not a request pynetdicom hands to a handler: it stores nothing
            request = _Request.of_command(command, event.assoc, spooled.check.syntax)
            if uid_to_service_class(request.sop_class_uid) is not StorageServiceClass:
                return  # pynetdicom will not hand this one to our handler: it stores nothing
            spooled.outcome = flusher.submit(self._complete, spooled, request)
        except RuntimeError:  # shutting down: the handler stores it itself
            pass
        except Exception:  # never into pynetdicom: the handler stores it itself
            log.exception("starting a C-STORE's completion failed")

    def _on_c_store(self, event: Event) -> int:
        """EVT_C_STORE: never raises; returns the DIMSE status once the store is durable (or failed)."""
        spooled = getattr(event.request, "_dataset_file", None)
        if isinstance(spooled, ReceivingFile):
            if spooled.outcome is not None:
                return spooled.outcome.result()  # _complete never raises
            return self._complete(spooled, _Request.of_event(event))
        writer = ReceivingFile(self.incoming_dir, self._cache_key)  # chunked mode turned off elsewhere:
        writer.write(event.encoded_dataset(include_meta=True))  # the same bytes, from memory
        return self._complete(writer, _Request.of_event(event))

    def _complete(self, spooled: ReceivingFile, request: _Request) -> int:
        """Make ``spooled`` durable, check it and commit it; never raises: the DIMSE status."""
        try:
            return int(self._store(spooled, request))
        except Exception as exc:
            status = cstore.status_for(exc)
            if status is StoreStatus.OUT_OF_RESOURCES:
                log.warning("C-STORE refused: spool full", extra=_failure_fields(status, request))
            else:
                log.exception("C-STORE failed", extra=_failure_fields(status, request))
            return status

    def _store(self, spooled: ReceivingFile, request: _Request) -> StoreStatus:
        try:
            size, sha256 = spooled.finish_durably(spooled.final)
        except BaseException:
            _discard(spooled.path)  # renamed or not: nothing was committed
            raise
        path = spooled.path
        try:
            try:
                instance = _describe(request, spooled, size, sha256, self._cache_key)
            except DatasetStructureError as exc:
                return self._quarantine(path, request, exc)
            item_id = self._sink.accept(instance)
        except BaseException:
            _discard(path)  # not committed: remove what the sink did not take
            raise
        log.info("instance stored", extra={
            "MESSAGE_ID": MSG.INSTANCE_STORED.value, "ITEM_ID": item_id,
            "SOP_CLASS": sop_class_name(instance.identity.sop_class_uid),
            "BYTES": instance.identity.size, "CALLING_AE": instance.calling_ae})
        return StoreStatus.SUCCESS

    def _quarantine(self, path: Path, request: _Request, exc: DatasetStructureError) -> StoreStatus:
        status = cstore.status_for(exc)
        limit, mismatch = status is StoreStatus.TOO_COSTLY, isinstance(exc, InstanceMismatchError)
        self._refused.add("over a limit" if limit else "not the command's instance" if mismatch else "malformed")
        target = self._quarantine_dir / path.name
        blobs.adopt_atomic(path, target)
        log.warning("C-STORE dataset %s (%s), quarantined", "refused" if limit or mismatch else "unreadable", exc,
                    extra={**_failure_fields(status, request), "REASON": str(exc), "QUARANTINE_FILE": target.name})
        return status


@dataclass(frozen=True)
class _Request:
    """What the store needs of a C-STORE request and its association, read on either thread."""

    sop_class_uid: str
    sop_instance_uid: str
    priority: int  # 0 medium, 1 high, 2 low
    transfer_syntax: str  # of the accepted presentation context
    calling_ae: str
    peer_address: str

    @classmethod
    def of_command(cls, command: Any, assoc: Any, transfer_syntax: str) -> _Request:
        """From the decoded command set (EVT_DIMSE_RECV); the syntax is the one pynetdicom wrote
        into the file meta, the accepted context's."""
        return cls(str(command.AffectedSOPClassUID), str(command.AffectedSOPInstanceUID),
                   int(getattr(command, "Priority", 0) or 0), transfer_syntax,
                   str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))

    @classmethod
    def of_event(cls, event: Event) -> _Request:
        req = cast(C_STORE, event.request)
        return cls(str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID), int(getattr(req, "Priority", 0) or 0),
                   str(event.context.transfer_syntax), str(event.assoc.requestor.ae_title).strip(),
                   str(event.assoc.requestor.address))


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


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.exception("cannot remove an uncommitted incoming file")


def _on_aborted(event: Event) -> None:
    """pynetdicom keeps the temporary file of a C-STORE cut short by an abort; remove it."""
    message: Any = getattr(event.assoc.dimse, "message", None)
    try:
        spooled = getattr(message, "_data_set_file", None)
        if isinstance(spooled, blobs.SealingFile):
            spooled.close()  # no more PDUs come after an abort
            _discard(spooled.path)
        elif isinstance(getattr(message, "_data_set_path", None), Path):
            message._data_set_file.close()
            _discard(message._data_set_path)
    except Exception:
        log.exception("removing a partial C-STORE file failed")


def _describe(request: _Request, spooled: ReceivingFile, size: int, sha256: str, key: bytes) -> ReceivedInstance:
    if spooled.check.syntax == request.transfer_syntax:  # walked while it arrived: nothing read back
        found = cstore.InstanceHeader.of(spooled.check.finish())
    else:  # (pynetdicom writes the context's syntax into the meta: never seen)
        with open(spooled.path, "rb") as sealed:  # decrypted in memory, one segment at a time
            found = cstore.InstanceHeader.of(check_dataset(cast(BinaryIO, blobs.SealedReader(key, sealed)),
                                                           request.transfer_syntax))
    if mismatch := found.mismatch(request.sop_class_uid, request.sop_instance_uid):
        raise InstanceMismatchError(int(mismatch[0]), mismatch[1])
    identity = InstanceIdentity(
        sop_class_uid=request.sop_class_uid, sop_instance_uid=request.sop_instance_uid,
        study_instance_uid=found.study_instance_uid, series_instance_uid=found.series_instance_uid,
        transfer_syntax_uid=request.transfer_syntax, size=size, sha256=sha256)
    return ReceivedInstance(
        path=spooled.path, identity=identity, calling_ae=request.calling_ae, peer_address=request.peer_address,
        header=found.header, dimse_priority=request.priority, requested_priority=found.requested_priority)


def _failure_fields(status: StoreStatus, request: _Request) -> dict[str, Any]:
    sop_class = sop_class_name(request.sop_class_uid)
    return {"MESSAGE_ID": MSG.STORE_FAILED.value, "STATUS": f"0x{int(status):04X}", "SOP_CLASS": sop_class}
