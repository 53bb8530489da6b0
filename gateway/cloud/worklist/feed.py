"""The worklist feed, run by the fleet service: orders in, per-box sealed snapshots out, statuses back.

* Orders come from the RIS readers (``readers.py``): a C-FIND answer is its source's whole current
  set (``take_set``: orders it no longer names are cancelled), an HL7 order one change
  (``take_order``). Every order is an idempotent upsert keyed by an HMAC of (source, step ID,
  accession), its entry sealed at rest (``core.worklist_routes``); several fleet instances may
  read the same RIS into the one store.
* ``publish`` (the leader only, every ``publish_s``): for each box with a worklist key (its birth's)
  and routes, the snapshot (``core.worklist_routes.snapshot``); when its digest or the box's key
  changed, a new frame (``core.worklist_wire.seal``, ``replace=True``, seq = last + 1), published
  retained at QoS 1. A snapshot too large for a frame is cut to the earliest entries that fit, and
  logged. A box that has lost all its routes, or whose birth no longer announces a worklist key,
  gets an empty retained message (its feed cleared).
* ``take_status``: a box's ``WorklistStatus``, for a ref routed to that box, is stored, queued for
  the RIS (``ris_status.py``) and acknowledged with a signed status ack.

No patient data is logged: a log line names boxes, refs, counts and sources.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cloud.worklist.store import FeedState, WorklistStore
from gateway.config import FleetWorklistSettings
from gateway.core import acksig, schema, topics, worklist_routes, worklist_wire
from gateway.core.errors import FrameError, IntegrityError, WorklistRefused
from gateway.core.schema import WorklistCancel, WorklistEntry
from gateway.core.worklist_routes import Route
from gateway.logs import MSG

log = logging.getLogger(__name__)
CLEARED = "cleared"
Publish = Callable[[str, bytes, bool], bool]  # topic, payload, retain -> queued


@dataclass(frozen=True)
class SetResult:
    upserted: int
    cancelled: int


class WorklistFeed:
    def __init__(self, store: WorklistStore, settings: FleetWorklistSettings, signer: acksig.AckSigner,
                 secret: bytes, prefix: str, clock: Callable[[], float] = time.time,
                 utc_offset_s: Callable[[float], int] = lambda at: 0) -> None:
        self.store, self.settings, self._signer, self._prefix, self._clock = store, settings, signer, prefix, clock
        self._offset = utc_offset_s  # the fleet's time zone: "today" of the window is the sites' day
        self._key = worklist_routes.at_rest_key(secret)
        self.unreadable = 0  # stored orders that did not open (altered, or another key)
        self.truncated = 0  # snapshots cut to fit a frame
        self.frames = 0  # frames (and clears) published
        self.statuses = 0  # performed statuses taken (not counting resends)
        self._opened: dict[str, tuple[str, str, WorklistEntry]] = {}  # order key -> (content, ref, entry)

    # -- orders -------------------------------------------------------------------------------------------
    def order_key(self, source: str, step_id: str, accession_number: str) -> str:
        return worklist_routes.order_key(self._key, source, step_id, accession_number)

    def upsert(self, source: str, entry: WorklistEntry) -> str:
        """Store one order (its ref kept when it exists); its order key."""
        key = self.order_key(source, entry.step.step_id, entry.accession_number)
        step = entry.step
        sealed = worklist_routes.seal_entry(self._key, os.urandom(16), entry)
        self.store.upsert_order(key, source, secrets.token_hex(16),
                                (step.modality, step.station_ae_title, step.station_name, step.start_date,
                                 step.start_time), sealed, worklist_routes.content_digest(self._key, entry),
                                self._clock())
        return key

    def cancel(self, source: str, cancel: WorklistCancel) -> None:
        self.store.cancel_orders([self.order_key(source, cancel.step_id, cancel.accession_number)], self._clock())

    def take_set(self, source: str, entries: Sequence[WorklistEntry]) -> SetResult:
        """A source's whole current set (a C-FIND answer): upsert each, cancel the open ones it lacks."""
        named = {self.upsert(source, e) for e in entries}
        gone = sorted(self.store.order_keys(source) - named)
        self.store.cancel_orders(gone, self._clock())
        return SetResult(len(named), len(gone))

    # -- boxes --------------------------------------------------------------------------------------------
    def note_birth(self, box_id: str, worklist_key: str) -> None:
        """A birth's worklist key ("" = the box has no feed): stored when it changed."""
        known = self.store.feed(box_id)
        if known is None and not worklist_key:
            return  # never fed, and still no key: nothing to remember
        if known is None or known.worklist_key != worklist_key:
            self.store.note_key(box_id, worklist_key)

    def prune(self, now: float) -> None:
        """Forget what is older than ``keep_days`` (orders done, cancelled or long past; sent statuses)."""
        before = now - self.settings.keep_days * 86400
        day = datetime.datetime.fromtimestamp(before + self._offset(before), datetime.UTC).strftime("%Y%m%d")
        self.store.prune_orders(before, day)

    def window(self, now: float) -> tuple[str, str]:
        today = datetime.datetime.fromtimestamp(now + self._offset(now), datetime.UTC).date()
        first = today - datetime.timedelta(days=self.settings.days_before)
        last = today + datetime.timedelta(days=self.settings.days_ahead)
        return first.strftime("%Y%m%d"), last.strftime("%Y%m%d")

    def entries(self, modalities: Sequence[str], now: float) -> list[WorklistEntry]:
        """The open, not yet performed entries of these modalities in the window, with their refs;
        each stored order is decrypted once while its content stays the same (kept in memory)."""
        first, last = self.window(now)
        out, seen = [], set()
        for order in self.store.open_orders(sorted(set(modalities)), first, last):
            seen.add(order.order_key)
            cached = self._opened.get(order.order_key)
            if cached is not None and cached[:2] == (order.content, order.ref):
                out.append(cached[2])
                continue
            try:
                entry = worklist_routes.open_entry(self._key, order.order_key, order.source, order.sealed)
            except (IntegrityError, FrameError):
                self.unreadable += 1
                continue
            entry = _with_ref(entry, order.ref)
            self._opened[order.order_key] = (order.content, order.ref, entry)
            out.append(entry)
        for gone in set(self._opened) - seen:
            del self._opened[gone]
        return out

    def snapshot(self, routes: Sequence[Route], now: float,
                 entries: Sequence[WorklistEntry] | None = None) -> list[WorklistEntry]:
        first, last = self.window(now)
        if entries is None:
            entries = self.entries([r.modality for r in routes], now)
        return worklist_routes.snapshot(routes, entries, first, last)

    def routes(self) -> dict[str, list[Route]]:
        out: dict[str, list[Route]] = {}
        for r in self.store.routes():
            out.setdefault(r.box_id, []).append(Route(r.box_id, r.modality, r.station_ae_title, r.station_name))
        return out

    def publish(self, send: Publish) -> int:
        """Publish every changed snapshot (the leader calls this); the frames sent."""
        now = self._clock()
        routes = self.routes()
        entries = self.entries([r.modality for rs in routes.values() for r in rs], now)  # each opened once
        sent = 0
        for feed in self.store.feeds():
            box_routes = routes.get(feed.box_id, [])
            if not feed.worklist_key or not box_routes:  # no key any more (its birth has none), or no station
                sent += self._clear(feed, send, now)
                continue
            snapshot = self.snapshot(box_routes, now, entries)
            digest = worklist_routes.digest(snapshot)
            if digest == feed.digest and feed.sent_key == feed.worklist_key:
                continue
            sent += self._send(feed, snapshot, digest, send, now)
        return sent

    def _send(self, feed: FeedState, entries: list[WorklistEntry], digest: str, send: Publish, now: float) -> int:
        seq = feed.seq + 1
        frame, fitted = self._frame(feed, entries, seq, now)
        if not send(topics.worklist_topic(self._prefix, feed.box_id), frame, True):
            return 0  # the link is down: the next round tries again (nothing recorded)
        left = len(entries) - fitted
        self.store.published(feed.box_id, seq, digest, feed.worklist_key, fitted, left, now)
        if left:
            self.truncated += 1
            log.warning("worklist snapshot cut to fit one frame", extra={
                "MESSAGE_ID": MSG.WORKLIST_FEED_TRUNCATED.value, "BOX_ID": feed.box_id, "SEQ": seq,
                "ENTRIES": fitted, "LEFT_OUT": left})
        self.frames += 1
        log.info("worklist published", extra={"MESSAGE_ID": MSG.WORKLIST_FEED_PUBLISHED.value,
                                              "BOX_ID": feed.box_id, "SEQ": seq, "ENTRIES": fitted,
                                              "BYTES": len(frame)})
        return 1

    def _frame(self, feed: FeedState, entries: list[WorklistEntry], seq: int, now: float) -> tuple[bytes, int]:
        """The sealed frame with as many of the earliest entries as fit (binary search on the count)."""
        public = bytes.fromhex(feed.worklist_key)

        def seal(count: int) -> bytes:
            update = schema.WorklistUpdate(v=1, box_id=feed.box_id, seq=seq, at=round(now, 3), replace=True,
                                           ops=[schema.WorklistUpsert(entry=e) for e in entries[:count]])
            return worklist_wire.seal(update, public, self._signer, data_key=os.urandom(32),
                                      eph_private=os.urandom(32), nonce=os.urandom(12))

        count = min(len(entries), schema.MAX_WORKLIST_OPS)
        try:
            return seal(count), count
        except ValueError:
            pass
        low, high = 0, count  # seal(low) fits, seal(high) does not
        while high - low > 1:
            mid = (low + high) // 2
            try:
                seal(mid)
                low = mid
            except ValueError:
                high = mid
        return seal(low), low

    def _clear(self, feed: FeedState, send: Publish, now: float) -> int:
        if feed.digest in ("", CLEARED):
            return 0
        if not send(topics.worklist_topic(self._prefix, feed.box_id), b"", True):
            return 0
        self.store.published(feed.box_id, feed.seq + 1, CLEARED, feed.worklist_key, 0, 0, now)
        self.frames += 1
        log.info("worklist cleared (the box serves no station)", extra={
            "MESSAGE_ID": MSG.WORKLIST_FEED_PUBLISHED.value, "BOX_ID": feed.box_id, "SEQ": feed.seq + 1,
            "ENTRIES": 0})
        return 1

    # -- statuses from the boxes --------------------------------------------------------------------------
    def take_status(self, box_id: str, payload: bytes) -> dict[str, Any]:
        """Store a box's performed status and queue it for the RIS; the signed ack to send back.
        ``FrameError`` (dead-lettered by the caller) for a malformed status, another box's id, or a
        ref that is not an order routed to this box."""
        status = schema.parse(schema.WorklistStatus, payload, "worklist status")
        if status.box_id != box_id:
            raise FrameError("worklist status: box id differs from the topic's")
        order = self.store.order_by_ref(status.ref)
        if order is None:
            raise WorklistRefused("worklist status: unknown ref")
        try:
            entry = worklist_routes.open_entry(self._key, order.order_key, order.source, order.sealed)
        except (IntegrityError, FrameError) as exc:
            raise WorklistRefused("worklist status: the ref's order does not open") from exc
        if worklist_routes.routed(self.routes().get(box_id, []), entry) is None:
            raise WorklistRefused("worklist status: the ref is not routed to this box")
        if order.performed_by and order.performed_by != box_id:
            raise WorklistRefused("worklist status: the ref was performed by another box")
        if self.store.record_status(status.ref, box_id, status.status, status.at, order.source, self._clock()):
            self.statuses += 1
            log.info("worklist status taken", extra={"MESSAGE_ID": MSG.WORKLIST_STATUS_TAKEN.value,
                                                     "BOX_ID": box_id, "REF": status.ref, "STATUS": status.status,
                                                     "SOURCE": order.source})
        return worklist_wire.sign_status_ack(self._signer, box_id, status.ref, status.status)

    def entry_of(self, ref: str) -> tuple[str, WorklistEntry] | None:
        """The source and entry of a ref (for the status to the RIS)."""
        order = self.store.order_by_ref(ref)
        if order is None:
            return None
        try:
            return order.source, worklist_routes.open_entry(self._key, order.order_key, order.source, order.sealed)
        except (IntegrityError, FrameError):
            self.unreadable += 1
            return None


def _with_ref(entry: WorklistEntry, ref: str) -> WorklistEntry:
    doc = schema.to_builtins(entry)
    doc["ref"] = ref
    return schema.convert(WorklistEntry, doc, "stored order")
