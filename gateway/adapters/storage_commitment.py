"""Storage Commitment push model SCP (PS3.4 Annex J) on the edge AE, with pynetdicom.

N-ACTION in: the request is validated, persisted (``CommitmentStore``) and only then
answered 0x0000. A reporter thread re-evaluates pending requests against the spool
(``core.commitment.decide``): an instance is committed only once the cloud has
acknowledged it. When every reference is settled, the N-EVENT-REPORT goes out on the
association that carried the request if it is still open, else on another open one
from the same modality, else on a new association to the modality's configured
``AE@host:port`` (we propose the SCP role, PS3.4 J.3.3). Undelivered reports are retried
with backoff and abandoned after ``max_report_attempts`` (alert). Pending requests
survive restarts: after one, the report can only go out on a new association.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from gateway.adapters.commitment_store import CommitmentStore, PendingCommitment
from gateway.adapters.dicom_scp import DicomService, SupportedContext
from gateway.config import CommitmentSettings, DicomSettings
from gateway.core.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    Activity,
    CommitmentState,
    ModalityAddress,
    Reference,
    Timing,
    Verdict,
    after_failed_delivery,
    decide,
    parse_modality,
    validate_request,
)
from gateway.core.errors import GatewayError
from gateway.logs import MSG

log = logging.getLogger(__name__)
POLL_S = 1.0
_SYNTAXES = [UID("1.2.840.10008.1.2.1"), UID("1.2.840.10008.1.2")]
_PROCESSING_FAILURE = 0x0110
_BUSY = "the modality is sending on its open associations"  # wait for a quiet moment, not a failed attempt


def event_information(transaction_uid: str, verdict: Verdict) -> Dataset:
    """The N-EVENT-REPORT Event Information (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if verdict.committed:
        ds.ReferencedSOPSequence = [_ref_item(ref) for ref in verdict.committed]
    if verdict.failed:
        items = []
        for ref, reason in verdict.failed:
            item = _ref_item(ref)
            item.FailureReason = int(reason)
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def _ref_item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def _references(ds: Dataset | None) -> tuple[str, list[Reference]]:
    if ds is None:
        return "", []
    refs = [Reference(str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", "")))
            for item in ds.get("ReferencedSOPSequence", [])]
    return str(ds.get("TransactionUID", "") or ""), refs


class StorageCommitmentScp(DicomService):
    """A ``DicomService`` for the DicomListener, plus the thread that sends the reports (the
    listener starts and stops it)."""

    def __init__(self, settings: CommitmentSettings, dicom: DicomSettings, store: CommitmentStore,
                 clock: Callable[[], float], jitter: Callable[[], float] = random.random) -> None:
        self._settings = settings
        self._dicom = dicom
        self._store = store
        self._clock = clock
        self._jitter = jitter
        self._timing = Timing(settings.absent_grace_s, settings.max_wait_hours * 3600.0)
        self._addresses: dict[str, ModalityAddress] = {
            a.ae_title: a for a in map(parse_modality, settings.modalities)}
        self._open: dict[int, Association] = {}  # commitment id -> association that asked
        self._activity: dict[int, Activity] = {}  # id(association) -> what the modality is doing on it
        self._by_ae: dict[str, list[Association]] = {}
        self._busy_since: dict[int, float] = {}  # commitment id -> when its asking association was first busy
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reports_sent = 0

    # -- DicomService -----------------------------------------------------------------------
    def contexts(self) -> Sequence[SupportedContext]:
        if not self._settings.enabled:
            return []
        return [SupportedContext(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=False)]

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        if not self._settings.enabled:
            return []
        return [(evt.EVT_N_ACTION, self._on_n_action), (evt.EVT_PDU_RECV, self._on_pdu),
                (evt.EVT_DIMSE_RECV, self._on_dimse_received), (evt.EVT_DIMSE_SENT, self._on_dimse_sent)]

    # Notification handlers, on each association's own thread: what the modality is doing.
    def _activity_of(self, assoc: Association) -> Activity:
        return self._activity.setdefault(id(assoc), Activity(time.monotonic()))

    def _on_pdu(self, event: Event) -> None:
        with self._lock:
            self._activity_of(event.assoc).received(time.monotonic())

    def _on_dimse_received(self, event: Event) -> None:
        name = type(getattr(event, "message", None)).__name__
        if name.endswith("_RQ") and name != "C_CANCEL_RQ":  # a C-CANCEL is answered by the operation it cancels
            with self._lock:
                self._activity_of(event.assoc).request_received(time.monotonic())

    def _on_dimse_sent(self, event: Event) -> None:
        if type(getattr(event, "message", None)).__name__.endswith("_RSP"):
            with self._lock:
                self._activity_of(event.assoc).response_sent()

    def _quiet(self, assoc: Association) -> bool:
        with self._lock:
            activity = self._activity.get(id(assoc))
            return activity is None or activity.quiet(time.monotonic(), self._settings.same_association_quiet_s)

    def _on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        """EVT_N_ACTION: never raises; persists the request before answering success."""
        try:
            return self._accept(event), None
        except GatewayError as exc:
            log.error("storage commitment request not persisted: %s", exc, extra={
                "MESSAGE_ID": MSG.COMMITMENT_REQUEST_FAILED.value, "STATUS": "0x0110"})
        except Exception:
            log.exception("storage commitment request failed", extra={
                "MESSAGE_ID": MSG.COMMITMENT_REQUEST_FAILED.value, "STATUS": "0x0110"})
        return _PROCESSING_FAILURE, None

    def _accept(self, event: Event) -> int:
        req: Any = event.request
        try:
            transaction_uid, refs = _references(event.action_information)
        except Exception:  # pydicom raises many types on hostile bytes; all mean "unreadable"
            transaction_uid, refs = "", []
            log.warning("storage commitment action information unreadable")
        calling = str(event.assoc.requestor.ae_title).strip()
        status = validate_request(event.action_type, str(req.RequestedSOPClassUID or ""),
                                  str(req.RequestedSOPInstanceUID or ""), transaction_uid, refs)
        if status != 0x0000:
            log.warning("storage commitment request refused", extra={
                "MESSAGE_ID": MSG.COMMITMENT_REQUEST_FAILED.value, "STATUS": f"0x{status:04X}",
                "CALLING_AE": calling})
            return status
        commitment_id = self._store.add(transaction_uid, calling, str(event.assoc.requestor.address), refs,
                                        self._clock())
        with self._lock:
            self._open[commitment_id] = event.assoc
            peers = self._by_ae.setdefault(calling, [])
            if event.assoc not in peers:
                peers.append(event.assoc)
        log.info("storage commitment requested", extra={
            "MESSAGE_ID": MSG.COMMITMENT_REQUESTED.value, "COMMITMENT_ID": commitment_id,
            "CALLING_AE": calling, "INSTANCES": len(refs)})
        self._wake.set()
        return 0x0000

    # -- the reporter thread -----------------------------------------------------------------
    def start(self) -> None:
        if not self._settings.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="commitment", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        self._store.close()

    def wake(self) -> None:
        """Re-evaluate now (the cloud acknowledged something)."""
        self._wake.set()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                self.run_once()
            except GatewayError as exc:
                log.warning("storage commitment pass failed: %s", exc)
            except Exception:
                log.exception("storage commitment pass failed")

    def run_once(self) -> int:
        """Report every due request whose references are all settled; return how many went out."""
        now, sent = self._clock(), 0
        for pending in self._store.due(now, limit=1000):
            if self._stop.is_set():
                break
            refs = pending.refs
            copies = self._store.copies([r.sop_instance_uid for r in refs])
            verdict = decide(refs, copies, pending.requested_at, now, self._timing)
            if verdict is not None:
                sent += self._report(pending, verdict)
        self._prune()
        return sent

    def _report(self, pending: PendingCommitment, verdict: Verdict) -> int:
        error, via = self._deliver(pending, verdict)
        if error is _BUSY:
            return 0  # not an attempt: due again at the next pass
        now = self._clock()
        if error is None:
            self._store.reported(pending.id, len(verdict.committed), len(verdict.failed), now)
            with self._lock:
                self._open.pop(pending.id, None)
            self.reports_sent += 1
            log.info("storage commitment reported", extra={
                "MESSAGE_ID": MSG.COMMITMENT_REPORTED.value, "COMMITMENT_ID": pending.id,
                "CALLING_AE": pending.calling_ae, "COMMITTED": len(verdict.committed),
                "FAILED": len(verdict.failed), "VIA": via, "WAITED_S": round(now - pending.requested_at, 1)})
            return 1
        s = self._settings
        state, next_at = after_failed_delivery(pending.attempts + 1, s.max_report_attempts, now,
                                               s.report_retry_min_s, s.report_retry_max_s, self._jitter())
        self._store.delivery_failed(pending.id, state, next_at, error)
        abandoned = state is CommitmentState.ABANDONED
        log.log(logging.ERROR if abandoned else logging.WARNING,
                "storage commitment report %s: %s", "abandoned" if abandoned else "not delivered", error, extra={
                    "MESSAGE_ID": (MSG.COMMITMENT_ABANDONED if abandoned else MSG.COMMITMENT_UNDELIVERED).value,
                    "COMMITMENT_ID": pending.id, "CALLING_AE": pending.calling_ae,
                    "ATTEMPTS": pending.attempts + 1})
        return 0

    def _deliver(self, pending: PendingCommitment, verdict: Verdict) -> tuple[str | None, str]:
        """Send the report: on an open association of the modality that is quiet, else on a new
        one to its address; ``(None, via)`` when delivered, ``(_BUSY, "")`` to wait for a quiet
        moment (the modality is sending on its open associations and has no address), else
        ``(error, "")``."""
        ds = event_information(pending.transaction_uid, verdict)
        busy = asking_busy = False
        with self._lock:
            asking = self._open.get(pending.id)
        for assoc in self._open_associations(pending):
            if not self._quiet(assoc):
                busy = True  # the modality is sending on it: our request would collide with its own
                asking_busy = asking_busy or assoc is asking
                continue
            error = _send(assoc, ds, verdict)
            if error is None:
                self._busy_since.pop(pending.id, None)
                return None, "same association" if assoc is asking else "open association"
        address = self._addresses.get(pending.calling_ae)
        if address is None:
            return (_BUSY, "") if busy else (
                f"no address configured for calling AE {pending.calling_ae!r} (commitment.modalities)", "")
        if asking_busy:  # the modality waits on the association that asked: prefer it while it may soon be quiet
            since = self._busy_since.setdefault(pending.id, time.monotonic())
            if time.monotonic() - since < self._settings.same_association_max_wait_s:
                return _BUSY, ""
        self._busy_since.pop(pending.id, None)
        return self._send_new(address, ds, verdict), "new association"

    def _open_associations(self, pending: PendingCommitment) -> list[Association]:
        with self._lock:
            first = self._open.get(pending.id)
            others = [a for a in self._by_ae.get(pending.calling_ae, []) if a is not first]
        return [a for a in ([first] if first is not None else []) + others if a.is_established]

    def _send_new(self, address: ModalityAddress, ds: Dataset, verdict: Verdict) -> str | None:
        ae = AE(ae_title=self._dicom.ae_title)
        ae.acse_timeout = ae.network_timeout = self._dicom.network_timeout_s
        ae.dimse_timeout = self._dicom.dimse_timeout_s
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, _SYNTAXES)
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)
        try:
            assoc = ae.associate(address.host, address.port, ae_title=address.ae_title, ext_neg=[role])
        except Exception as exc:  # pynetdicom raises on unresolvable hosts and such
            return f"cannot associate with {address.ae_title}@{address.host}:{address.port}: {exc}"
        if not assoc.is_established:
            return f"association with {address.ae_title}@{address.host}:{address.port} refused or failed"
        try:
            return _send(assoc, ds, verdict)
        finally:
            if assoc.is_established:
                assoc.release()

    def _prune(self) -> None:
        with self._lock:
            for cid, assoc in list(self._open.items()):
                if not assoc.is_established:
                    del self._open[cid]
            for cid in [c for c in self._busy_since if c not in self._open]:
                del self._busy_since[cid]
            alive_ids = {id(a) for assocs in self._by_ae.values() for a in assocs if a.is_established}
            for key in [k for k in self._activity if k not in alive_ids]:
                del self._activity[key]
            for ae_title, assocs in list(self._by_ae.items()):
                alive = [a for a in assocs if a.is_established]
                if alive:
                    self._by_ae[ae_title] = alive
                else:
                    del self._by_ae[ae_title]


def _send(assoc: Association, ds: Dataset, verdict: Verdict) -> str | None:
    """One N-EVENT-REPORT on ``assoc``; None if the modality answered success."""
    try:
        status, _ = assoc.send_n_event_report(ds, int(verdict.event_type), STORAGE_COMMITMENT_PUSH_MODEL,
                                              STORAGE_COMMITMENT_INSTANCE)
    except Exception as exc:  # no context, association gone under us, encoding refused
        return f"N-EVENT-REPORT not sent: {type(exc).__name__}: {exc}"
    code = getattr(status, "Status", None)
    if code is None:
        return "no N-EVENT-REPORT response (timeout or abort)"
    if int(code) != 0x0000:
        return f"modality answered N-EVENT-REPORT with 0x{int(code):04X}"
    return None
