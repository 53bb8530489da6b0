"""Forwarding archived objects to the reading site's PACS, from a durable queue.

The queue is the index's ``forwards`` table: ``Archive.store`` enqueues one
entry per destination in the same transaction that files the object, so an
object is forwarded only after it is durable in the archive, and never
forgotten. Entry states:

    PENDING --claim--> SENDING --PACS confirmed--> DONE
                          |--failed, attempts left--> PENDING (next_attempt_at = now + backoff)
                          |--failed, attempts used--> FAILED (terminal; an operator re-queues)
                          '--lease expired (forwarder died)--> claimable again

Any number of forwarders (one per ingest worker) share the queue: a claim
leases entries to one owner (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, one
``BEGIN IMMEDIATE`` update on SQLite), and a finish only counts from the owner
of the lease. A forwarder killed mid-send leaves a lease that expires, and the
entry is sent again: delivery to the PACS is at-least-once, which PACS handle
by SOP Instance UID (a re-sent identical instance replaces itself).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway.cloud.archive.store import Archive
from gateway.config import ForwardSettings
from gateway.core.errors import GatewayError, PeerError, StorageError
from gateway.logs import MSG

log = logging.getLogger(__name__)
Original = Callable[[], Iterable[bytes]]  # the archived object's original bytes, from the start each call


class ForwardState(enum.Enum):
    PENDING = "PENDING"
    SENDING = "SENDING"
    DONE = "DONE"
    FAILED = "FAILED"


class Destination(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, original: Original, size: int, sop_instance_uid: str) -> None:
        """Send the archived object whose bytes ``original()`` yields (``size`` of them, opened in
        memory and checked: ``Archive.open``); raise PeerError unless the PACS confirmed it."""


def backoff_s(attempts: int, minimum_s: float, maximum_s: float) -> float:
    """Delay before attempt ``attempts + 1``: ``minimum_s * 2**(attempts-1)``, capped."""
    return min(maximum_s, minimum_s * 2.0 ** max(0, min(attempts - 1, 40)))


@dataclass
class ForwardCounters:
    done: int = 0
    retried: int = 0
    failed: int = 0


class Forwarder:
    def __init__(self, settings: ForwardSettings, archive: Archive, destinations: list[Destination],
                 owner: str, clock: Callable[[], float] = time.time) -> None:
        self._settings, self._archive, self._destinations = settings, archive, destinations
        self._owner, self._clock = owner, clock
        self.counters = ForwardCounters()

    def run_once(self) -> int:
        """Claim due entries of every destination and try each once; return how many were tried."""
        tried = 0
        for destination in self._destinations:
            rows = self._archive.index.claim_forwards(
                destination.name, self._owner, self._clock(), self._settings.lease_s, self._settings.batch)
            for row in rows:
                self._attempt(destination, row)
                tried += 1
        return tried

    def _attempt(self, destination: Destination, row: dict[str, object]) -> None:
        sop, sha = str(row["sop_instance_uid"]), str(row["sha256"])
        attempts = int(row["attempts"]) + 1  # type: ignore[call-overload]
        record = self._archive.instance(sop, sha)
        error = ""
        if record is None:
            error = "archived instance not found in the index"
        else:
            try:
                found = record
                destination.send(lambda: self._archive.open(found), record.identity.size, sop)
            except PeerError as exc:
                error = str(exc)
            except (OSError, StorageError) as exc:
                error = f"archived file unreadable: {getattr(exc, 'strerror', None) or exc}"
        now = self._clock()
        if not error:
            self._finish(row, ForwardState.DONE, attempts, now, "", now)
            self.counters.done += 1
            log.info("object forwarded", extra={
                "MESSAGE_ID": MSG.FORWARD_DONE.value, "DESTINATION": destination.name, "ATTEMPTS": attempts,
                "BYTES": record.identity.size if record else 0})
            return
        if attempts >= self._settings.max_attempts:
            self._finish(row, ForwardState.FAILED, attempts, now, error, now)
            self.counters.failed += 1
            log.error("object not forwarded; attempts used up", extra={
                "MESSAGE_ID": MSG.FORWARD_FAILED.value, "DESTINATION": destination.name,
                "ATTEMPTS": attempts, "ERROR": error})
            return
        delay = backoff_s(attempts, self._settings.backoff_min_s, self._settings.backoff_max_s)
        self._finish(row, ForwardState.PENDING, attempts, now + delay, error, now)
        self.counters.retried += 1
        log.warning("forward failed; will retry", extra={
            "MESSAGE_ID": MSG.FORWARD_RETRY.value, "DESTINATION": destination.name, "ATTEMPTS": attempts,
            "RETRY_IN_S": round(delay, 1), "ERROR": error})

    def _finish(self, row: dict[str, object], state: ForwardState, attempts: int, next_at: float,
                error: str, now: float) -> None:
        self._archive.index.finish_forward(row, state.value, attempts, next_at, error, now)


def destinations_from(settings: ForwardSettings, stow_password: str = "") -> list[Destination]:
    """The destinations ``settings`` turns on (STOW-RS, C-STORE, both, or none)."""
    from gateway.adapters.pacs import CStore, StowRs

    out: list[Destination] = []
    if settings.stow_url:
        out.append(StowRs(settings.stow_url, settings.stow_username, stow_password, settings.timeout_s))
    if settings.cstore_host:
        out.append(CStore(settings.cstore_host, settings.cstore_port, settings.cstore_called_ae,
                          settings.cstore_calling_ae, settings.timeout_s))
    return out


def run_forever(forwarder: Forwarder, stop: Callable[[], bool], idle_s: float = 1.0,
                wait: Callable[[float], object] = time.sleep) -> None:
    """Drain the queue, idle ``idle_s`` when nothing is due; errors are logged, never fatal."""
    while not stop():
        try:
            tried = forwarder.run_once()
        except GatewayError as exc:
            log.error("forward queue unavailable", extra={"ERROR": str(exc)})
            tried = 0
        if not tried:
            wait(idle_s)
