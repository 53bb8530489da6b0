"""The uplink sender: which chunks go out, and what the cloud's acks mean.

Runs on the service loop thread only. The outbox and the spool database are
the truth; the windows here are a cache rebuilt from them after a restart
(acked chunk ranges are persisted at most ``PERSIST_EVERY_S`` apart, so a
crash resends at most that much on top of the in-flight window).

The window spans every active transfer and is counted twice: in chunks (``uplink.window_chunks``,
the broker's Receive Maximum) and in bytes (``PathEstimate``: twice the bandwidth-delay product
the cloud's PROGRESS acks show, at least 2 MiB). A PROGRESS frees its chunks' share of the window
at once; an object holds only its transfer slot (``uplink.transfers_in_flight``) until its STORED.

Acks are believed only if signed by a key in the box's ack keyring (wire v2,
``gateway.core.acksig``): nothing the box stores can make one, so reading its disk
is not enough to make it delete data. An item still holding frames of an older wire
version (packed before an upgrade) is packed again, as the cloud refuses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from gateway.adapters import blobs
from gateway.adapters.mqtt_link import PacketTooLargeError
from gateway.adapters.store import SpoolItem, SpoolStore
from gateway.config import EdgeSettings
from gateway.core import bandwidth, policy, spool, topics
from gateway.core.acksig import AckKeyring
from gateway.core.errors import FrameError, StorageError, UnexpectedAckError
from gateway.core.framing import WIRE_VERSION, AckKind, from_ranges, parse_ack, peek_ack_transfer_id, to_ranges
from gateway.core.spool import Effect, ItemState
from gateway.core.window import PathEstimate, TransferWindow
from gateway.edge.packer import frame_offset, outbox_path
from gateway.logs import MSG

log = logging.getLogger(__name__)
PERSIST_EVERY_S = 1.0


class Publisher(Protocol):  # the slice of MqttLink the sender needs
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> bool: ...


@dataclass
class _Active:
    item: SpoolItem
    window: TransferWindow
    handle: BinaryIO | None = None
    persisted_at: float = 0.0
    persisted_count: int = 0


@dataclass
class SenderStats:
    chunks_sent: int = 0
    bytes_sent: int = 0
    acks_bad: int = 0
    acks_unknown: int = 0
    objects_acked: int = 0
    objects_rejected: int = 0
    resent_chunks: int = 0
    sent_seqs: dict[str, set[int]] = field(default_factory=dict, repr=False)


class Sender:
    def __init__(
        self,
        settings: EdgeSettings,
        store: SpoolStore,
        outbox_dir: Path,
        blob_dir: Path,
        link: Publisher,
        clock: Callable[[], float],
        keyring: Callable[[], AckKeyring],
    ) -> None:
        self._settings = settings
        self._keyring = keyring  # the current ack keyring; replaced whole after a renewal
        self._store = store
        self._outbox_dir = outbox_dir
        self._blob_dir = blob_dir
        self._link = link
        self._clock = clock
        self._active: dict[int, _Active] = {}
        self._last_ack_at = 0.0  # any verified ack: the cloud is alive
        self._windows = [bandwidth.parse_window(w) for w in settings.uplink.bandwidth_windows]
        self._bucket = bandwidth.TokenBucket()
        self.path = PathEstimate(ceiling_bytes=settings.uplink.window_bytes)  # the window in bytes, measured
        self.window_bytes = self.path.window_bytes()  # its value at the last pump, for other threads to read
        self.throttled = 0  # times the bandwidth cap held a chunk back
        self.stats = SenderStats()

    # -- scheduling ------------------------------------------------------------------
    def pump(self) -> int:
        """Publish what is due; return the number of chunks published.

        Two budgets across all transfers: chunks (``uplink.window_chunks``, or the broker's Receive
        Maximum if lower) and bytes (the path's bandwidth-delay product, ``PathEstimate``). A chunk
        goes while both have room, so bytes in flight exceed the window by less than one frame.
        """
        up = self._settings.uplink
        now, sent = self._clock(), 0
        for active in self._active.values():
            active.window.expire(now, up.ack_timeout_s)
        window = min(up.window_chunks, getattr(self._link, "receive_maximum", lambda: 0)() or up.window_chunks)
        budget = window - sum(a.window.in_flight() for a in self._active.values())
        self.window_bytes = self.path.window_bytes()
        room = self.window_bytes - self.in_flight_bytes()
        if budget > 0 and room > 0:
            self._refill()
        for active in sorted(self._active.values(), key=lambda a: (-a.item.priority, a.item.id)):
            if budget <= 0 or room <= 0:
                break
            if policy.delivery_exhausted(active.window.silent_rounds, up.max_send_attempts,
                                         self._last_ack_at > active.window.last_progress_at):
                self._exhausted(active)
                continue
            seqs = active.window.due(now, budget, up.ack_timeout_s)
            published, sizes = self._publish(active, seqs, room)
            active.window.mark_sent(published, now, sizes)
            budget -= len(published)
            room -= sum(sizes)
            sent += len(published)
            if len(published) < len(seqs) and room > 0:
                break  # the link went down under us
        return sent

    def cap_kbps(self) -> int:
        local = time.localtime(self._clock())
        return bandwidth.cap_kbps(self._windows, self._settings.uplink.max_kbps, local.tm_wday,
                                  local.tm_hour * 60 + local.tm_min)

    def _refill(self) -> None:
        """Take the next transfers in priority order; a transfer that outranks every active
        one is taken even when all slots are busy (up to twice as many), so STAT jumps in."""
        want = self._settings.uplink.transfers_in_flight
        top = max((a.item.priority for a in self._active.values()), default=None)
        for item in self._store.in_state(ItemState.SENDING, ItemState.PACKED, limit=want * 2):
            outranks = top is not None and item.priority > top
            if len(self._active) >= (want * 2 if outranks else want):
                break
            if item.id not in self._active:
                assert item.final_seq is not None
                window = TransferWindow(final_seq=item.final_seq, acked=from_ranges(item.acked_ranges))
                active = _Active(item, window, persisted_count=len(window.acked))
                self._active[item.id] = active
                self._repack_if_outdated(active)

    def _publish(self, active: _Active, seqs: list[int], room: int) -> tuple[list[int], list[int]]:
        """Publish ``seqs`` in order while ``room`` (bytes) lasts; the published seqs and their sizes."""
        item = active.item
        assert item.transfer_id is not None
        topic = topics.chunk_topic(self._settings.mqtt.topic_prefix, self._settings.box.id, item.transfer_id)
        done: list[int] = []
        sizes: list[int] = []
        seen = self.stats.sent_seqs.setdefault(item.transfer_id, set())
        cap = self.cap_kbps()
        for seq in seqs:
            if room <= 0:
                break
            frame = self._read_frame(active, seq)
            if not self._bucket.take(len(frame), self._clock(), cap):
                self.throttled += 1
                break  # not published, not marked sent: the ack protocol never sees it
            try:
                published = self._link.publish(topic, frame, qos=1)
            except PacketTooLargeError as exc:
                self._repack(active, exc)
                return [], []
            if not published:
                break
            done.append(seq)
            sizes.append(len(frame))
            room -= len(frame)
            self.stats.chunks_sent += 1
            self.stats.bytes_sent += len(frame)
            if seq in seen:
                self.stats.resent_chunks += 1
            seen.add(seq)
        if done and item.state is ItemState.PACKED:
            active.item, _ = self._store.transition(item.id, spool.SendStarted(), self._clock())
        return done, sizes

    def _repack(self, active: _Active, exc: PacketTooLargeError) -> None:
        """Frames packed before the broker's limit was known: pack the item again, smaller."""
        item, effects = self._store.transition(
            active.item.id, spool.FramesTooLarge(exc.max_packet_bytes), self._clock())
        self._drop(item.id)
        self.apply_effects(item, effects)
        self.stats.sent_seqs.pop(active.item.transfer_id or "", None)
        log.warning("frames exceed the broker's maximum packet size; packing again", extra={
            "MESSAGE_ID": MSG.FRAMES_TOO_LARGE.value, "ITEM_ID": item.id, "PACKET_BYTES": exc.packet_bytes,
            "MAX_PACKET_BYTES": exc.max_packet_bytes})

    def _repack_if_outdated(self, active: _Active) -> None:
        """Frames sealed before an upgrade to this wire version: the cloud refuses them, pack again."""
        version = self._read_frame(active, 0)[4:5]
        if version == bytes([WIRE_VERSION]):
            return
        item, effects = self._store.transition(
            active.item.id, spool.FramesOutdated(version[0] if version else 0), self._clock(), ack_key=None)
        self._drop(item.id)
        self.apply_effects(item, effects)
        log.warning("frames were sealed in an older wire version; packing again", extra={
            "MESSAGE_ID": MSG.FRAMES_OUTDATED.value, "ITEM_ID": item.id,
            "FRAME_VERSION": version[0] if version else None, "WIRE_VERSION": WIRE_VERSION})

    def _read_frame(self, active: _Active, seq: int) -> bytes:
        if active.handle is None:
            path = outbox_path(self._outbox_dir, active.item.transfer_id or "")
            try:
                active.handle = open(path, "rb")  # noqa: SIM115 - closed in _drop
            except OSError as exc:
                raise StorageError(f"outbox file of item {active.item.id} is missing: {exc}") from exc
        offset, length = frame_offset(active.item, seq)
        active.handle.seek(offset)
        return active.handle.read(length)

    def link_changed(self, up: bool, resumed: bool = False) -> None:
        """After a reconnect to a new session every unacknowledged chunk is due again, from the first
        missing: the cloud's acks sent during the outage were lost with the old session.

        ``resumed``: the broker kept the session. Then nothing is republished now: paho redelivers
        the publishes the broker had not acknowledged (MQTT requires it), the broker already holds
        for the cloud those it had, and the cloud's acks queued for the box arrive. A chunk still
        unacknowledged after the ack timeout is resent as after any loss (``expire``). Republishing
        the window as well would put most of it on the wire twice after every cut."""
        if up:
            self.path.reset()
            if not resumed:
                for active in self._active.values():
                    active.window.forget_in_flight()

    # -- acknowledgements --------------------------------------------------------------
    def on_ack(self, payload: bytes) -> None:
        """Act on an ack only once its signature verifies; anything else is counted and logged."""
        try:
            peek_ack_transfer_id(payload)
        except FrameError as exc:
            self._bad_ack("malformed ack", exc)
            return
        try:
            ack = parse_ack(payload, self._settings.box.id, self._keyring())
        except (FrameError, UnexpectedAckError) as exc:
            self._bad_ack("ack failed verification", exc)
            return
        item = self._lookup(ack.transfer_id.hex())
        if item is None:
            self.stats.acks_unknown += 1
            log.debug("ack for an unknown transfer", extra={"TRANSFER": ack.transfer_id.hex()[:8]})
            return
        self._last_ack_at = self._clock()
        if ack.kind is AckKind.PROGRESS:
            self._progress(item, ack.ranges)
        elif ack.kind is AckKind.STORED:
            self._stored(item, ack.sha256.hex())
        else:
            self._rejected(item, ack.reason.name)

    def _lookup(self, transfer_hex: str) -> SpoolItem | None:
        for active in self._active.values():
            if active.item.transfer_id == transfer_hex:
                return active.item
        return self._store.by_transfer(transfer_hex)

    def _bad_ack(self, what: str, exc: Exception) -> None:
        self.stats.acks_bad += 1
        log.warning(what, extra={"MESSAGE_ID": MSG.ACK_REJECTED.value, "ERROR": str(exc)})

    def _progress(self, item: SpoolItem, ranges: tuple[tuple[int, int], ...]) -> None:
        active = self._active.get(item.id)
        if active is None:
            return  # not being sent now; its ranges are recovered when it is
        now = self._clock()
        self.path.on_delivered(active.window.deliveries(ranges, now), now)
        acked = len(active.window.acked)
        if acked > active.persisted_count and (
            now - active.persisted_at >= PERSIST_EVERY_S or active.window.all_staged
        ):
            self._store.record_progress(item.id, to_ranges(active.window.acked), now)
            active.persisted_at, active.persisted_count = now, acked

    def _stored(self, item: SpoolItem, sha_hex: str) -> None:
        if sha_hex != item.identity.sha256:
            self._bad_ack("STORED ack names another object", UnexpectedAckError(sha_hex[:12]))
            return
        if item.state not in (ItemState.PACKED, ItemState.SENDING):
            return  # a repeated ack: nothing left to do
        done, effects = self._store.transition(item.id, spool.CloudStored(), self._clock())
        self._drop(item.id)
        self.apply_effects(done, effects)
        self.stats.objects_acked += 1
        self.stats.sent_seqs.pop(item.transfer_id or "", None)
        log.info("instance acknowledged by the cloud", extra={
            "MESSAGE_ID": MSG.ITEM_ACKNOWLEDGED.value, "ITEM_ID": item.id, "BYTES": item.identity.size,
            "LATENCY_S": round(self._clock() - item.received_at, 3)})

    def _rejected(self, item: SpoolItem, reason: str) -> None:
        if item.state not in (ItemState.PACKED, ItemState.SENDING):
            return
        done, effects = self._store.transition(item.id, spool.CloudRejected(reason=f"cloud: {reason}"), self._clock())
        self._drop(item.id)
        self.apply_effects(done, effects)
        self.stats.objects_rejected += 1
        log.error("instance quarantined: the cloud rejected it", extra={
            "MESSAGE_ID": MSG.ITEM_QUARANTINED.value, "ITEM_ID": item.id, "REASON": reason})

    def _exhausted(self, active: _Active) -> None:
        item, rounds = active.item, active.window.silent_rounds
        reason = f"delivery: no acknowledgement after {rounds} resend rounds while the cloud acknowledged others"
        done, effects = self._store.transition(item.id, spool.SendExhausted(reason=reason), self._clock())
        self._drop(item.id)
        self.apply_effects(done, effects)
        log.error("instance quarantined: not delivered after bounded resends", extra={
            "MESSAGE_ID": MSG.ITEM_QUARANTINED.value, "ITEM_ID": item.id, "ATTEMPTS": rounds, "REASON": reason})

    def _drop(self, item_id: int) -> None:
        active = self._active.pop(item_id, None)
        if active is not None and active.handle is not None:
            active.handle.close()

    def apply_effects(self, item: SpoolItem, effects: tuple[Effect, ...]) -> None:
        for effect in effects:
            if effect is Effect.DELETE_OUTBOX and item.transfer_id:
                blobs.remove(outbox_path(self._outbox_dir, item.transfer_id))
            elif effect is Effect.DELETE_BLOB:
                blobs.remove(self._blob_dir / item.blob_name)

    def close(self) -> None:
        for item_id in list(self._active):
            self._drop(item_id)

    def in_flight(self) -> int:
        return sum(a.window.in_flight() for a in self._active.values())

    def in_flight_bytes(self) -> int:
        return sum(a.window.in_flight_bytes() for a in self._active.values())
