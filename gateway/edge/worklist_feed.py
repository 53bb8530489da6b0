"""Filling the worklist cache: one ``WorklistUpdate`` applied to this box's ``WorklistStore``.

The update message (``core.schema.WorklistUpdate``) comes from the cloud over MQTT (``WorklistFeed``,
on the telemetry connection: docs/protocol.md, "Worklist feed") or from a file (``mgw edge worklist
import FILE``). Both paths go through ``apply_update``: parsed at the boundary, refused unless it
names this box, applied in order (a sequence number at or below the last applied is ignored
whole). The log says counts, never an attribute of a patient.

``WorklistFeed`` is the box's end of the feed. paho's callback only queues (bounded); the
telemetry thread opens each frame: ``worklist_wire.peek_seq`` first, so a frame not newer than the
cache's last costs no crypto, then ``open_frame`` (the cloud's signature against the ack keyring,
then the box's X25519 worklist key). A frame that fails is refused with its reason, logged
(``WORKLIST_FRAME_REFUSED``) and counted by outcome, and the loop goes on; the cache is unchanged.
The other way, the performed statuses MPPS queued (``WorklistStore.due_statuses``) are published
as ``schema.WorklistStatus`` (a ref and a status: no patient data) and resent every ``resend_s``
until a signed status ack arrives; an ack that does not verify is ignored and counted.

The feed's ``WorklistStore`` is its own object on ``worklist.db``, as the worklist SCP's and the
MPPS service's are (one connection and lock each): SQLite serialises their writes (WAL,
``BEGIN IMMEDIATE``, a 30 s busy timeout), and the sequence check is made again inside the
apply's transaction, so the unlocked ``peek_seq`` shortcut can never apply an older update.
"""

from __future__ import annotations

import json
import logging
import queue
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.adapters.worklist_store import Applied, WorklistStore
from gateway.core import envelope, schema, topics, worklist_wire
from gateway.core.acksig import AckKeyring
from gateway.core.errors import EnvelopeTamperedError, FrameError, GatewayError, StorageError, UnexpectedAckError
from gateway.logs import MSG

log = logging.getLogger(__name__)
KEY_NAME = "worklist"  # the box's X25519 worklist key in its key store: keys/worklist.secret (0600)
INBOX_MESSAGES = 64  # frames and acks waiting for the telemetry thread; more are dropped (counted)


def read_update(path: Path) -> schema.WorklistUpdate:
    """The update in the JSON file ``path``, read up to one byte past the limit; ``FrameError``
    naming the offending field, or the size, when it is not one."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(schema.MAX_WORKLIST_BYTES + 1)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return schema.parse(schema.WorklistUpdate, raw, str(path), schema.MAX_WORKLIST_BYTES)


def apply_update(store: WorklistStore, update: schema.WorklistUpdate, box_id: str, now: float,
                 source: str) -> Applied:
    """Apply ``update`` if it is for ``box_id``; ``FrameError`` if it is another box's."""
    if update.box_id != box_id:
        raise FrameError(f"worklist update for box {update.box_id}, not this box ({box_id})")
    applied = store.apply(update, now)
    log.info("worklist update %s", "applied" if applied.applied else "ignored (not newer)", extra={
        "MESSAGE_ID": MSG.WORKLIST_UPDATED.value, "SOURCE": source, "SEQ": update.seq, "APPLIED": applied.applied,
        "UPSERTED": applied.upserted, "CANCELLED": applied.cancelled, "LAST_SEQ": applied.last_seq})
    return applied


class WorklistFeed:
    """The box's end of the worklist feed, driven by the telemetry thread (``pump``)."""

    def __init__(self, store: WorklistStore, box_id: str, prefix: str, private_key: bytes,
                 keyring: Callable[[], AckKeyring], clock: Callable[[], float], resend_s: float) -> None:
        self._store = store
        self._box = box_id
        self._private = private_key
        self.public_hex = envelope.public_key_of(private_key).hex()  # the birth's ``worklist_key``
        self._keyring = keyring
        self._clock = clock
        self._resend_s = resend_s
        self._frame_topic = topics.worklist_topic(prefix, box_id)
        self._ack_topic = topics.worklist_status_ack_topic(prefix, box_id)
        self._status_topic = topics.worklist_status_topic(prefix, box_id)
        self._inbox: queue.Queue[Inbound] = queue.Queue(INBOX_MESSAGES)
        self.frames: Counter[str] = Counter()  # by outcome: applied, not_newer, malformed, unsigned, ...
        self.acks_rejected = 0
        self.dropped = 0
        self.statuses_sent = 0

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self._frame_topic, 1), (self._ack_topic, 1)]

    def wants(self, topic: str) -> bool:
        return topic in (self._frame_topic, self._ack_topic)

    def offer(self, message: Inbound) -> None:
        """paho's thread: queue only (a full inbox drops the message: the retained frame comes back
        at the next connect, an unacked status is resent)."""
        try:
            self._inbox.put_nowait(message)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._store.close()

    # -- the telemetry thread ------------------------------------------------------------------------------
    def pump(self, link: MqttLink) -> None:
        """Apply what arrived, then (connected) publish the statuses that are due."""
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message.topic == self._frame_topic:
                self._on_frame(message.payload)
            else:
                self._on_ack(message.payload)
        if link.connected:
            self._send_statuses(link)

    def _on_frame(self, frame: bytes) -> None:
        if not frame:
            return  # an empty retained message: the cloud cleared this box's worklist topic
        try:
            seq, last = worklist_wire.peek_seq(frame), self._store.last_seq()
            if seq <= last:
                self._refused("not_newer", f"seq {seq} is not above the last applied ({last})",
                              logging.DEBUG if seq == last else logging.WARNING)
                return
            update = worklist_wire.open_frame(frame, self._box, self._private, self._keyring())
            applied = apply_update(self._store, update, self._box, self._clock(), "mqtt")
        except UnexpectedAckError as exc:
            self._refused("unsigned", str(exc))
        except EnvelopeTamperedError as exc:
            self._refused("tampered", str(exc))
        except FrameError as exc:
            self._refused("malformed", str(exc))
        except StorageError as exc:
            self._refused("failed", str(exc), logging.ERROR)
        except (GatewayError, ValueError) as exc:
            self._refused("malformed", str(exc))
        else:
            self.frames["applied" if applied.applied else "not_newer"] += 1

    def _refused(self, outcome: str, reason: str, level: int = logging.WARNING) -> None:
        self.frames[outcome] += 1
        log.log(level, "worklist frame refused: %s", reason, extra={
            "MESSAGE_ID": MSG.WORKLIST_FRAME_REFUSED.value, "OUTCOME": outcome, "ERROR": reason})

    def _on_ack(self, payload: bytes) -> None:
        try:
            ref, status = worklist_wire.verify_status_ack(json.loads(payload), self._box, self._keyring())
        except (ValueError, RecursionError, FrameError, UnexpectedAckError) as exc:
            self.acks_rejected += 1
            log.warning("worklist status ack ignored", extra={"MESSAGE_ID": MSG.ACK_REJECTED.value, "ERROR": str(exc)})
            return
        self._store.mark_status_acked(ref, status)  # a duplicate ack is a no-op

    def _send_statuses(self, link: MqttLink) -> None:
        now = self._clock()
        for pending in self._store.due_statuses(now - self._resend_s):
            body = schema.encode(schema.WorklistStatus(v=1, box_id=self._box, ref=pending.ref, at=round(pending.at, 3),
                                                       status=cast(schema.PerformedStatus, pending.status)))
            if not link.publish(self._status_topic, body, qos=1):
                return  # the link is down or stalled: the next round tries again
            self._store.mark_status_sent(pending.ref, pending.status, now)
            self.statuses_sent += 1

    # -- figures (the heartbeat's ``worklist``, /metrics) -------------------------------------------------------
    def figures(self, now: float) -> dict[str, Any]:
        at = self._store.last_applied_at()
        return {"entries": self._store.count(), "last_seq": self._store.last_seq(),
                "update_age_s": None if at is None else round(max(0.0, now - at), 1),
                "statuses_unacked": self._store.statuses_unacked(),
                "frames_refused": sum(n for outcome, n in self.frames.items() if outcome != "applied")}
