"""The RIS side of the worklist feed, run by the fleet service: the readers and the status sender.

* ``MwlPoller``: every ``poll_s``, one C-FIND to the RIS's MWL SCP (``adapters/worklist_scu``);
  the answer is the source's whole set (``WorklistFeed.take_set``). A failure is recorded on the
  source (``mgw cloud worklist status``) and logged; the next poll tries again.
* ``Hl7Listener``: an MLLP listener (``adapters/mllp``) taking ORM^O01 orders
  (``adapters/hl7_orders``), each acknowledged once stored; bounded connections, an idle timeout
  and an optional list of allowed peers.
* ``StatusSender``: the outbox of performed statuses, sent on to the source's RIS: an ORM^O01
  status update over MLLP (source ``hl7``), waiting for its ACK, or MPPS N-CREATE/N-SET
  (source ``mwl``, ``adapters/mpps_scu``). A status the RIS does not take is sent again after
  ``retry_s``. With several fleet instances only the leader sends; the sender has its own thread.

Sources are named ``mwl`` (the C-FIND poller) and ``hl7`` (the MLLP listener).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.adapters import hl7_orders, mllp, mpps_scu, worklist_scu
from gateway.cloud.worklist.feed import WorklistFeed
from gateway.config import FleetWorklistSettings
from gateway.core.errors import GatewayError, LocalError, PeerError
from gateway.core.schema import WorklistEntry
from gateway.logs import MSG

log = logging.getLogger(__name__)
MWL, HL7 = "mwl", "hl7"


class MwlPoller:
    def __init__(self, feed: WorklistFeed, settings: FleetWorklistSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self._feed, self._settings, self._clock = feed, settings, clock
        self._peer = worklist_scu.RisPeer(settings.mwl_host, settings.mwl_port, settings.mwl_called_ae,
                                          settings.mwl_calling_ae)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worklist-mwl", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._peer.timeout_s + 5)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def poll(self) -> None:
        """One C-FIND: the source's whole current set, stored; its result recorded on the source."""
        now = self._clock()
        try:
            answer = worklist_scu.query_worklist(self._peer)
            result = self._feed.take_set(MWL, answer.entries)
        except (PeerError, GatewayError) as exc:
            self._feed.store.source_polled(MWL, now, 0, str(exc))
            log.warning("worklist poll failed", extra={"MESSAGE_ID": MSG.WORKLIST_SOURCE_FAILED.value,
                                                       "SOURCE": MWL, "ERROR": str(exc)})
            return
        self._feed.store.source_polled(MWL, now, result.upserted)
        if answer.refused or answer.dropped:
            log.warning("worklist poll: answers skipped", extra={
                "MESSAGE_ID": MSG.WORKLIST_SOURCE_FAILED.value, "SOURCE": MWL, "REFUSED": answer.refused,
                "DROPPED": answer.dropped})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug must not end the poller; it polls again
                log.exception("worklist poll failed")
            self._stop.wait(self._settings.poll_s)


class Hl7Listener:
    def __init__(self, feed: WorklistFeed, settings: FleetWorklistSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self._feed, self._clock = feed, clock
        try:
            self.server = mllp.MllpServer(settings.hl7_bind, max(settings.hl7_port, 0), self._answer,
                                          timeout_s=settings.hl7_idle_s,
                                          max_connections=settings.hl7_max_connections,
                                          allowed_peers=settings.hl7_allowed_peers)
        except OSError as exc:
            raise LocalError(f"the HL7 listener cannot listen on {settings.hl7_bind}:{settings.hl7_port}: {exc}") \
                from exc

    def _answer(self, raw: bytes) -> bytes:
        return hl7_orders.answer(raw, self._take)

    def _take(self, order: hl7_orders.Order) -> None:
        if order.entry is not None:
            self._feed.upsert(HL7, order.entry)
        elif order.cancel is not None:
            self._feed.cancel(HL7, order.cancel)
        self._feed.store.source_polled(HL7, self._clock(), 1)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def alive(self) -> bool:
        return self.server.alive()


class StatusSender:
    """Sends the due statuses of the outbox, on its own thread (a RIS that is slow to answer must not
    hold up the fleet worker and its lease), while ``leading()`` says this instance leads."""

    def __init__(self, feed: WorklistFeed, settings: FleetWorklistSettings, leading: Callable[[], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self._feed, self._settings, self._leading, self._clock = feed, settings, leading, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worklist-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(40)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._settings.publish_s):
            if not self._leading():
                continue
            try:
                self.drain()
            except GatewayError as exc:  # the store failed: the next round tries again
                log.error("worklist statuses not sent", extra={"ERROR": str(exc)})
            except Exception:  # a bug must not end the sender
                log.exception("worklist status sender failed")

    def destinations(self) -> list[str]:
        """The sources whose statuses have somewhere to go (the others wait in the outbox)."""
        return [source for source, host in ((HL7, self._settings.ris_hl7_host), (MWL, self._settings.mpps_host))
                if host]

    def drain(self) -> int:
        sent = 0
        for item in self._feed.store.due(self._clock(), self.destinations()):
            found = self._feed.entry_of(item.ref)
            try:
                if found is None:
                    raise PeerError("the order is gone or does not open")
                source, entry = found
                self._send(source, entry, item.ref, item.status, item.id)
            except (PeerError, OSError, KeyError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                self._feed.store.failed(item.id, error, self._clock() + self._settings.retry_s)
                log.warning("worklist status not taken by the RIS", extra={
                    "MESSAGE_ID": MSG.WORKLIST_STATUS_NOT_SENT.value, "REF": item.ref, "STATUS": item.status,
                    "SOURCE": item.source, "ATTEMPTS": item.attempts + 1, "ERROR": error})
                continue
            self._feed.store.sent(item.id, self._clock())
            sent += 1
            log.info("worklist status sent to the RIS", extra={
                "MESSAGE_ID": MSG.WORKLIST_STATUS_SENT.value, "REF": item.ref, "STATUS": item.status,
                "SOURCE": item.source})
        return sent

    def _send(self, source: str, entry: WorklistEntry, ref: str, status: str, item_id: int) -> None:
        s = self._settings
        if source == HL7:
            message = hl7_orders.status_message(entry, status, f"MGW{item_id}", at=self._clock())
            code, text = hl7_orders.ack_code(mllp.send(s.ris_hl7_host, s.ris_hl7_port, message))
            if code not in ("AA", "CA"):
                raise PeerError(f"the RIS answered {code or 'no MSA'} {text}".strip())
        elif source == MWL:
            mpps_scu.send_status(mpps_scu.MppsPeer(s.mpps_host, s.mpps_port, s.mpps_called_ae, s.mwl_calling_ae),
                                 entry, ref, status, created=self._feed.store.was_sent(ref, "IN PROGRESS"))
        else:
            raise PeerError(f"unknown source {source[:20]!r}")
