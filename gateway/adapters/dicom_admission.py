"""Admission on the DICOM listener: core.admission's policy applied to pynetdicom's connections.

Two places refuse, both with an A-ASSOCIATE-RJ, a log line (ASSOCIATION_REJECTED) and a count:

1. TCP accept (``verify_request``, on the server's accept thread): an address no entry could
   ever admit gets the 10-byte A-ASSOCIATE-RJ (rejected-permanent, service-user, no reason
   given) written at once and the connection closed. Nothing it sent is read or parsed, and
   it holds no association thread.
2. EVT_REQUESTED (the A-ASSOCIATE-RQ read, before pynetdicom negotiates): calling AE title
   and address are checked and a refusal is answered with the policy's result/source/reason.
   pynetdicom's calling AE list is also set (every AE title some entry admits) and
   ``check_accepted`` aborts anything accepted that the policy refuses, so a failing handler
   still fails closed.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from pynetdicom.association import Association
from pynetdicom.events import Event

from gateway.core import admission
from gateway.logs import MSG

log = logging.getLogger("gateway.adapters.dicom_scp")


def reject_pdu(refusal: admission.Refusal) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): type 3, reserved, length 4, reserved, result, source, reason."""
    return bytes((0x03, 0, 0, 0, 0, 4, 0, refusal.result, refusal.source, refusal.diagnostic))


class Counts:
    """Thread-safe counters by reason, for the metrics endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Gatekeeper:
    def __init__(self, policy: admission.Policy, called_ae: str) -> None:
        self.policy, self.called_ae = policy, called_ae.strip()
        self.rejected = Counts()

    def describe(self, host: str, port: int) -> None:
        level = logging.WARNING if self.policy.admits_anyone else logging.INFO
        log.log(level, "DICOM listener on %s:%d admits %s", host, port, self.policy.summary(), extra={
            "MESSAGE_ID": MSG.DICOM_ADMISSION.value, "BIND": host, "PORT": port,
            "DENY_BY_DEFAULT": self.policy.deny_by_default, "PEERS": len(self.policy.rules)})

    def decide(self, assoc: Association, calling_ae: str) -> admission.Refusal | None:
        try:  # the connection's own local address (pynetdicom's acceptor address is the bound one)
            local = str(assoc.dul.socket.socket.getsockname()[0])  # type: ignore[union-attr]
        except (AttributeError, OSError):
            local = ""
        return admission.refusal(self.policy, calling_ae, str(assoc.requestor.address), local)

    def _refused(self, refusal: admission.Refusal, calling: str, address: str) -> None:
        self.rejected.add(refusal.reason)
        log.warning("association rejected: %s", refusal.reason, extra={
            "MESSAGE_ID": MSG.ASSOCIATION_REJECTED.value, "REASON": refusal.reason, "CALLING_AE": calling,
            "PEER_ADDRESS": address, "RESULT": refusal.result, "SOURCE": refusal.source,
            "DIAGNOSTIC": refusal.diagnostic})

    # -- pynetdicom's hooks -------------------------------------------------------------------
    def verify_request(self, request: Any, client_address: Any) -> bool:
        """ThreadedAssociationServer.verify_request: False closes the connection (after our RJ)."""
        address = str(client_address[0])
        try:
            local = str(request.getsockname()[0])
        except OSError:
            return False
        refusal = admission.address_refusal(self.policy, address, local)
        if refusal is None:
            return True
        self._refused(refusal, "", address)
        try:
            request.settimeout(1.0)
            request.sendall(reject_pdu(refusal))  # 10 bytes into an empty send buffer: never waits
        except OSError:
            pass
        return False

    def on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: the A-ASSOCIATE-RQ is read, pynetdicom has not negotiated yet; an RJ
        sent here ends the association (pynetdicom skips negotiation once it is rejected)."""
        rq: Any = event.assoc.requestor.primitive
        if str(rq.called_ae_title).strip() != self.called_ae:
            return  # pynetdicom rejects it: called AE title not recognised (reason 7)
        calling = str(rq.calling_ae_title).strip()
        refusal = self.decide(event.assoc, calling)
        if refusal is not None:
            event.assoc.acse.send_reject(refusal.result, refusal.source, refusal.diagnostic)
            self._refused(refusal, calling, str(event.assoc.requestor.address))
            event.assoc.kill()  # as pynetdicom's own rejections: returns once the RJ is sent and the peer closed

    def on_rejected(self, event: Event, reason: str) -> None:
        """EVT_REJECTED: pynetdicom's own rejections (ours are logged when sent)."""
        rq: Any = event.assoc.requestor.primitive
        calling = str(getattr(rq, "calling_ae_title", "")).strip()
        self._refused(admission.Refusal(reason, 0, 0, 0), calling, str(event.assoc.requestor.address))

    def check_accepted(self, event: Event) -> bool:
        """EVT_ACCEPTED: abort an association the policy refuses (only if the ACSE swap failed)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        refusal = self.decide(event.assoc, calling)
        if refusal is None:
            return True
        self.rejected.add(refusal.reason)
        log.warning("association aborted: %s", refusal.reason, extra={
            "MESSAGE_ID": MSG.ASSOCIATION_REJECTED.value, "REASON": refusal.reason, "CALLING_AE": calling,
            "PEER_ADDRESS": str(event.assoc.requestor.address)})
        event.assoc.abort()
        return False
