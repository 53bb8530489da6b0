"""The edge's DICOM listener: C-ECHO and C-STORE SCP (pynetdicom), bytes kept exactly as sent.

A C-STORE dataset is never decoded nor re-encoded: it is made durable in ``incoming_dir``
(file and directory fsynced), sealed with the box's cache key from its first byte (no
plaintext ever reaches a disk), its structure checked, committed by an ``InstanceSink``, and
only then answered 0x0000. The handler never raises into pynetdicom: SpoolFullError ->
0xA700, unparseable data -> 0xC210 and a quarantine copy, anything else -> 0xC211.

Receive path: pynetdicom's chunked mode (``_config.STORE_RECV_CHUNKED_DATASET``) streams
each dataset into a Part-10 file as PDUs arrive (flat memory at any size). That file would
be a plaintext ``NamedTemporaryFile`` in the system temp dir; ``start()`` replaces the name
pynetdicom creates it with, so that for our AE it is a ``blobs.SealingFile`` in
``incoming_dir`` (AES-256-GCM segments, the plaintext hashed on the way); other AEs in the
process keep pynetdicom's file. Both switches are process globals with no per-AE form, so
``start()`` sets them, idempotently; if chunked mode is turned off, the handler seals
``event.encoded_dataset()`` instead (same bytes, held in memory).
"""

from __future__ import annotations

import enum
import logging
import os
import ssl
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from gateway.adapters import blobs, dicom_admission
from gateway.config import DicomSettings
from gateway.core import admission, atrest, dataset
from gateway.core.errors import ConfigError, DatasetLimitError, DatasetStructureError, SpoolFullError
from gateway.core.exam import HEADER_TAGS
from gateway.core.instance import InstanceIdentity
from gateway.logs import MSG

log = logging.getLogger(__name__)

_STOP_JOIN_S = 10.0
_DUL_POLL_S = 0.0002
_EXPLICIT_LE, _IMPLICIT_LE = UID("1.2.840.10008.1.2.1"), UID("1.2.840.10008.1.2")
_LOSSY_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 81, 91, 93, 112, 203))


class Status(enum.IntEnum):
    """C-STORE statuses we answer (PS3.4 B.2.3; 0xC210/0xC211 in pynetdicom's usage)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC210
    PROCESSING_FAILURE = 0xC211
    TOO_COSTLY = 0xC212  # cannot understand: reading it would pass the reader's limits (core.dataset.Limits)


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


class DicomService(Protocol):
    """A further DIMSE service on the same AE (Storage Commitment, MPPS, Worklist...).

    Each lives in its own adapter module; the listener only negotiates its presentation
    contexts and routes its events. Handlers follow the C-STORE rule: never raise into
    pynetdicom, answer a DIMSE status.
    """

    def contexts(self) -> Sequence[tuple[str, bool, bool]]:
        """``(abstract syntax UID, modality may be SCU, modality may be SCP)`` to accept."""

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        """``(pynetdicom intervention or notification event, handler)`` pairs."""


class InstanceSink(Protocol):
    def accept(self, instance: ReceivedInstance) -> int | None:
        """Commit durably (take the file, commit the row), then return the spool item id
        (None if the sink keeps no ids). SpoolFullError -> 0xA700."""


def _ts_preference() -> list[str]:
    """All syntaxes: explicit LE, other uncompressed, lossless, lossy. pynetdicom accepts the
    first of *ours* the peer offered, so a modality is never pushed into lossy compression."""
    def rank(uid: str) -> int:
        if uid == _EXPLICIT_LE:
            return 0
        return 1 if not UID(uid).is_compressed else 3 if uid in _LOSSY_SYNTAXES else 2

    return sorted(ALL_TRANSFER_SYNTAXES, key=rank)


def _build_ae(settings: DicomSettings, policy: admission.Policy, services: Sequence[DicomService] = ()) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.require_called_aet = True
    # pynetdicom's own calling AE check backs up the per-address one (dicom_admission)
    ae.require_calling_aet = [] if policy.admits_anyone else list(policy.ae_titles)
    ae.add_supported_context(Verification)
    syntaxes = _ts_preference()
    for cx in AllStoragePresentationContexts:
        # Role selection: the modality may act as SCU (it sends to us), never as SCP.
        ae.add_supported_context(cast(str, cx.abstract_syntax), syntaxes, scu_role=True, scp_role=False)
    for service in services:
        for abstract_syntax, scu_role, scp_role in service.contexts():
            ae.add_supported_context(abstract_syntax, [_EXPLICIT_LE, _IMPLICIT_LE], scu_role=scu_role,
                                     scp_role=scp_role)
    return ae


_PYNETDICOM_TEMPFILE = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]
_SEALED_TARGETS: weakref.WeakKeyDictionary[AE, tuple[Path, bytes]] = weakref.WeakKeyDictionary()


def _receive_file(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``NamedTemporaryFile`` in pynetdicom's chunked C-STORE receive. It runs on
    the association's DUL thread: a dataset for one of our listeners' AEs is sealed into that
    listener's ``incoming_dir``; any other AE in the process gets pynetdicom's own file."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    ae = getattr(assoc, "ae", None)
    target = _SEALED_TARGETS.get(ae) if ae is not None else None
    if target is None:
        return _PYNETDICOM_TEMPFILE(*args, **kwargs)
    incoming_dir, key = target
    return blobs.SealingFile(incoming_dir / f"{uuid.uuid4().hex}.part", key)


def _configure_pynetdicom() -> None:  # process-wide switches, idempotent
    _config.STORE_RECV_CHUNKED_DATASET = True  # stream datasets to a file, never decode them
    dimse_messages.NamedTemporaryFile = _receive_file  # type: ignore[attr-defined]  # sealed, for our AEs
    _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers carry PHI
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class DicomListener:
    """Accepts associations from modalities and stores what they send, durably."""

    def __init__(self, settings: DicomSettings, incoming_dir: Path, sink: InstanceSink,
                 services: Sequence[DicomService] = (), provisioned: bool = False, *, cache_key: bytes) -> None:
        """``provisioned``: admission is deny-by-default (core.admission): empty allow-lists admit
        nobody but the box's own tools. ``cache_key`` seals every received byte (core.atrest)."""
        self._settings = settings
        self._cache_key = cache_key
        self._services = tuple(services)
        self._incoming_dir = incoming_dir
        self._quarantine_dir = incoming_dir.parent / "quarantine"
        self._sink = sink
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._port = settings.port
        self._lock = threading.Lock()
        policy = admission.Policy.from_settings(settings.allowed_peers, settings.allowed_calling_aets, provisioned)
        self._gate = dicom_admission.Gatekeeper(policy, settings.ae_title)
        self._refused = dicom_admission.Counts()  # datasets refused, by reason

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                raise AssertionError("DicomListener already started")
            _configure_pynetdicom()
            self._incoming_dir.mkdir(parents=True, exist_ok=True)
            self._quarantine_dir.mkdir(parents=True, exist_ok=True)
            self._ae = _build_ae(self._settings, self._gate.policy, self._services)
            _SEALED_TARGETS[self._ae] = (self._incoming_dir, self._cache_key)
            handlers: list[Any] = [
                (evt.EVT_C_ECHO, lambda event: Status.SUCCESS), (evt.EVT_C_STORE, self._on_c_store),
                (evt.EVT_REQUESTED, self._gate.on_requested), (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_ABORTED, _on_aborted)]
            for service in self._services:
                handlers += service.handlers()
            address = (self._settings.bind_host, self._settings.port)
            server = self._ae.start_server(address, block=False, evt_handlers=handlers,
                                           ssl_context=_ssl_context(self._settings))
            assert server is not None
            server.verify_request = self._gate.verify_request  # type: ignore[method-assign]
            self._server = server
            self._port = int(server.server_address[1])
            self._gate.describe(str(server.server_address[0]), self._port)

    @property
    def port(self) -> int:
        return self._port

    def stop(self) -> None:
        with self._lock:
            ae, server = self._ae, self._server
            self._ae = self._server = None
        if ae is None or server is None:
            return
        # Only an established association can be inside a C-STORE handler. A connection that
        # never sent A-ASSOCIATE-RQ (a port probe) parks its thread until the ACSE timeout,
        # and waiting for it would only delay the stop.
        established = [a for a in server.active_associations if a.is_established]
        ae.shutdown()  # aborts live associations, closes the listening socket
        for assoc in established:  # let handlers in flight finish: nothing writes after stop()
            assoc.join(_STOP_JOIN_S)
        _SEALED_TARGETS.pop(ae, None)

    def active_associations(self) -> int:
        return 0 if (server := self._server) is None else len(server.active_associations)

    def counts(self) -> dict[str, dict[str, int]]:
        """Associations rejected and datasets refused since start, by reason (for metrics)."""
        return {"associations_rejected": self._gate.rejected.snapshot(), "datasets_refused": self._refused.snapshot()}

    def _on_c_store(self, event: Event) -> int:
        """EVT_C_STORE: never raises; returns the DIMSE status."""
        try:
            return int(self._store(event))
        except SpoolFullError:
            log.warning("C-STORE refused: spool full", extra=_failure_fields(Status.OUT_OF_RESOURCES, event))
            return Status.OUT_OF_RESOURCES
        except Exception:
            log.exception("C-STORE failed", extra=_failure_fields(Status.PROCESSING_FAILURE, event))
            return Status.PROCESSING_FAILURE

    def _store(self, event: Event) -> Status:
        path = self._incoming_dir / f"{uuid.uuid4().hex}.dcm{atrest.SUFFIX}"
        try:
            size, sha256 = _land(event, path, self._cache_key)
            try:
                instance = _describe(event, path, size, sha256, self._cache_key)
            except DatasetStructureError as exc:
                return self._quarantine(path, event, exc)
            item_id = self._sink.accept(instance)
        except BaseException:
            _discard(path)  # not committed: remove what the sink did not take
            raise
        log.info("instance stored", extra={
            "MESSAGE_ID": MSG.INSTANCE_STORED.value, "ITEM_ID": item_id,
            "SOP_CLASS": _sop_class_name(instance.identity.sop_class_uid),
            "BYTES": instance.identity.size, "CALLING_AE": instance.calling_ae})
        return Status.SUCCESS

    def _quarantine(self, path: Path, event: Event, exc: DatasetStructureError) -> Status:
        limit = isinstance(exc, DatasetLimitError)
        status = Status.TOO_COSTLY if limit else Status.CANNOT_UNDERSTAND
        self._refused.add("over a limit" if limit else "malformed")
        target = self._quarantine_dir / path.name
        blobs.adopt_atomic(path, target)
        log.warning("C-STORE dataset %s (%s), quarantined", "refused" if limit else "unreadable", exc, extra={
            **_failure_fields(status, event), "REASON": str(exc), "QUARANTINE_FILE": target.name})
        return status

    def _on_accepted(self, event: Event) -> None:
        if self._gate.check_accepted(event):
            _on_accepted(event)

    def _on_rejected(self, event: Event) -> None:
        try:
            rq = event.assoc.requestor.primitive
            assert rq is not None
            reason = _rejection_reason(self._settings, str(rq.called_ae_title).strip())
            self._gate.on_rejected(event, reason)
        except Exception:
            log.exception("logging an association rejection failed")


def _land(event: Event, path: Path, key: bytes) -> tuple[int, str]:
    """Finish the sealed Part-10 file and move it to ``path``; return (bytes, sha256 hex) of the
    plaintext.

    Not yet durable: the sink fsyncs it once, when it adopts it into the spool, before the
    0x0000 (an incoming file a crash leaves behind was never acknowledged; startup removes it).
    """
    spooled = getattr(event.request, "_dataset_file", None)
    if isinstance(spooled, blobs.SealingFile):
        size_sha = spooled.finish()
        os.rename(spooled.path, path)  # pynetdicom's later unlink of its name fails quietly
        return size_sha
    writer = blobs.SealingFile(path, key)  # chunked mode turned off elsewhere: same bytes, from memory
    writer.write(event.encoded_dataset(include_meta=True))
    return writer.finish()


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.exception("cannot remove an uncommitted incoming file")


def _describe(event: Event, path: Path, size: int, sha256: str, key: bytes) -> ReceivedInstance:
    req, requestor = cast(C_STORE, event.request), event.assoc.requestor
    transfer_syntax = UID(event.context.transfer_syntax)
    with open(path, "rb") as sealed:  # decrypted in memory, one segment at a time
        study, series, header, priority = _read_header(
            cast(BinaryIO, blobs.SealedReader(key, sealed)), transfer_syntax)
    identity = InstanceIdentity(
        sop_class_uid=str(req.AffectedSOPClassUID), sop_instance_uid=str(req.AffectedSOPInstanceUID),
        study_instance_uid=study, series_instance_uid=series, transfer_syntax_uid=str(transfer_syntax),
        size=size, sha256=sha256)
    return ReceivedInstance(
        path=path, identity=identity, calling_ae=str(requestor.ae_title).strip(), peer_address=str(requestor.address),
        header=header, dimse_priority=int(getattr(req, "Priority", 0) or 0), requested_priority=priority)


def _read_header(fh: BinaryIO, transfer_syntax: UID) -> tuple[str, str, dict[str, str], str]:
    """Check the structure to the last byte, then read study/series UIDs, the utilisation header
    strings and the priority attributes, all met on the same walk; never the pixels."""
    found = check_dataset(fh, transfer_syntax)
    header = {kw: text for tag, kw in _HEADER_TAGS.items() if (text := found.text(tag))}
    priority = found.text(_REQUESTED_PRIORITY) or found.text(_STUDY_PRIORITY)
    return found.text(_STUDY_UID), found.text(_SERIES_UID), header, priority


# -- dataset structure: the walk itself is pure (gateway.core.dataset); this feeds it a file ----

_STUDY_UID, _SERIES_UID = 0x0020000D, 0x0020000E
# Utilisation's header strings (core.exam.HEADER_TAGS: DA, TM, DT, CS, SH; all short ASCII), read
# by the same walk at no extra I/O.
_HEADER_TAGS: dict[int, str] = {int(tag_for_keyword(kw) or 0): kw for kw in HEADER_TAGS}
_REQUESTED_PRIORITY, _STUDY_PRIORITY = 0x00401003, 0x0032000C  # for priority rules (core.priority)
_WANTED = frozenset({_STUDY_UID, _SERIES_UID, *_HEADER_TAGS, _REQUESTED_PRIORITY, _STUDY_PRIORITY})
_READ_PIECE = 1 << 16


def check_dataset(fh: BinaryIO, transfer_syntax: str, limits: dataset.Limits | None = None) -> dataset.Walked:
    """Raise DatasetStructureError (DatasetLimitError past ``limits``) unless the Part-10 file ``fh``
    holds one complete dataset; return the top-level values of the wanted tags. Values the walk
    does not need (pixel data) are seeked over, never read; a deflated dataset is inflated as it
    is read, in bounded pieces, and nothing inflated is kept."""
    fh.seek(0)
    head = fh.read(144)
    if head[128:140] != b"DICM\x02\x00\x00\x00UL\x04\x00":
        raise AssertionError("incoming file lacks the file meta group length we expect")
    start, end = 144 + struct.unpack("<L", head[140:144])[0], fh.seek(0, os.SEEK_END)
    walk = dataset.DatasetWalk(dataset.Syntax.from_uid(str(transfer_syntax)), _WANTED, limits, time.monotonic)
    fh.seek(start)
    remaining = end - start
    while remaining > 0 and (piece := fh.read(min(_READ_PIECE, remaining))):
        remaining -= len(piece)
        if skip := min(walk.feed(piece), remaining):
            fh.seek(skip, os.SEEK_CUR)
            walk.skip(skip)
            remaining -= skip
    return walk.finish()


def _ssl_context(settings: DicomSettings) -> ssl.SSLContext | None:
    """DICOM TLS on the LAN listener (PS3.15 B.1, TLS 1.2+), client certificates required if a CA is set."""
    if not settings.tls_cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_ca_file:
            ctx.load_verify_locations(settings.tls_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dicom TLS: cannot load {settings.tls_cert_file} / {settings.tls_key_file}: {exc}") from exc
    return ctx


def _on_accepted(event: Event) -> None:
    # pynetdicom's DUL reactor sleeps this long whenever its queue is empty, between PDUs too;
    # its 1 ms default caps one association near 140 MB/s of CT here, 0.2 ms lifts that past
    # 160 MB/s; an idle association still costs no measurable CPU (bench/README.md, ingest).
    event.assoc.dul._run_loop_delay = _DUL_POLL_S
    requestor = event.assoc.requestor
    log.info("association accepted", extra={
        "MESSAGE_ID": MSG.ASSOCIATION_ACCEPTED.value, "CALLING_AE": str(requestor.ae_title).strip(),
        "PEER_ADDRESS": str(requestor.address)})


def _on_aborted(event: Event) -> None:
    """pynetdicom keeps the temporary file of a C-STORE cut short by an abort; remove it."""
    message: Any = getattr(event.assoc.dimse, "message", None)
    try:
        if isinstance(getattr(message, "_data_set_path", None), Path):
            message._data_set_file.close()  # no more PDUs come after an abort
            _discard(message._data_set_path)
    except Exception:
        log.exception("removing a partial C-STORE file failed")


def _rejection_reason(settings: DicomSettings, called: str) -> str:
    """Why pynetdicom itself rejected (ours carry their own reason): PS3.8 reason 7 or a limit."""
    if called != settings.ae_title.strip():  # pynetdicom checks in this order: called AE wins
        return "called AE title not recognised"
    return "calling AE title not recognised, local limit exceeded or negotiation refused"


def _sop_class_name(uid: str) -> str:
    return UID(uid).name if UID(uid).name != uid else "unknown SOP class"


def _failure_fields(status: Status, event: Event) -> dict[str, Any]:
    sop_class = _sop_class_name(str(cast(C_STORE, event.request).AffectedSOPClassUID))
    return {"MESSAGE_ID": MSG.STORE_FAILED.value, "STATUS": f"0x{int(status):04X}", "SOP_CLASS": sop_class}
