"""Poison messages: acknowledged at the broker, recorded, counted, alerted; never redelivered.

A cloud service that cannot process a message from a box (it does not parse, does not verify,
is over the box's budget, or its handling failed with a bug) hands it to ``DeadLetters.put``
and goes on with the next message. The broker gets its PUBACK as for any other message, so the
message is never redelivered from the persistent session and cannot crash-loop a service.

The letter (box, topic, reason, a short detail, time, size; never the payload, which may be
sealed PHI) goes to the fleet store's bounded ``dead_letters`` table, which the fleet service
reads to raise a ``dead_letters`` alert for that box. A hostile box can send thousands of bad
messages a second: per box, at most ``writes_per_box_per_minute`` letters are written, and the
rest are counted into the next one written (its ``messages``), so the store's write rate and
size stay bounded whatever a box sends. Counters per reason feed /metrics.

Not thread safe: one ``DeadLetters`` per service worker thread, like its store connection.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.cloud.fleet.store import DeadLetter, FleetStore
from gateway.config import DeadLetterSettings
from gateway.core.errors import GatewayError
from gateway.logs import MSG, escape

log = logging.getLogger(__name__)
MAX_DETAIL_CHARS = 200
MAX_TOPIC_CHARS = 200
UNKNOWN_BOX = "-"  # the box of a message whose topic names none


class DeadLetterReason(enum.StrEnum):
    TOPIC = "topic"  # not a topic of the protocol
    MALFORMED = "malformed"  # not a frame or message of the protocol, or a field out of range
    VERSION = "version"  # a protocol version this cloud no longer accepts
    KEY = "key"  # a chunk's data key does not unwrap
    AUTH = "auth"  # a chunk fails AES-GCM: altered, or published under another box
    BUDGET = "budget"  # over the box's budget (rate, open transfers, staging bytes)
    REFUSED = "refused"  # well-formed, but not the box's to send (a worklist status for a ref not routed to it)
    INTERNAL = "internal"  # handling failed with a bug; the message is set aside, the loop goes on


@dataclass
class _Window:
    minute: int = -1
    written: int = 0
    held: DeadLetter | None = None  # a letter not written because of the limit, with its count


class DeadLetters:
    def __init__(self, store: FleetStore, settings: DeadLetterSettings, service: str,
                 clock: Callable[[], float]) -> None:
        self._store, self._settings, self._service, self._clock = store, settings, service, clock
        self._windows: dict[str, _Window] = {}
        self._pending: list[DeadLetter] = []
        self.counts: Counter[DeadLetterReason] = Counter()
        self.write_failures = 0

    def put(self, box_id: str | None, topic: str, reason: DeadLetterReason, detail: str, size: int) -> None:
        """Record one message that cannot be processed (the caller still PUBACKs it)."""
        self.counts[reason] += 1
        box = box_id or UNKNOWN_BOX
        letter = DeadLetter(box, escape(topic, MAX_TOPIC_CHARS), reason.value, escape(detail, MAX_DETAIL_CHARS),
                            self._clock(), size, 1, self._service)
        window = self._windows.setdefault(box, _Window())
        minute = int(letter.at // 60)
        if minute != window.minute:
            window.minute, window.written = minute, 0
        if window.held is not None:
            letter = replace(letter, messages=letter.messages + window.held.messages)
            window.held = None
        if window.written >= self._settings.writes_per_box_per_minute:
            window.held = letter
            return
        window.written += 1
        self._pending.append(letter)
        log.warning("message dead-lettered", extra={
            "MESSAGE_ID": MSG.MESSAGE_DEAD_LETTERED.value, "BOX_ID": box, "TOPIC": letter.topic,
            "REASON": reason.value, "DETAIL": letter.detail, "BYTES": size, "MESSAGES": letter.messages})

    def drop_pending(self) -> None:
        """Forget what ``put`` collected without writing it (a fleet instance that is not the leader:
        the leader records the same letters). The counts stay: they are this process's metrics."""
        self._pending = []
        for window in self._windows.values():
            window.held = None
        if len(self._windows) > 10 * self._settings.keep_total:  # a flood of distinct (fake) boxes
            self._windows = {}

    def flush(self) -> None:
        """Write what ``put`` collected, plus letters held back by the limit for over a minute."""
        now_minute = int(self._clock() // 60)
        for window in self._windows.values():
            if window.held is not None and window.minute != now_minute:
                self._pending.append(window.held)
                window.held = None
        if len(self._windows) > 10 * self._settings.keep_total:  # a flood of distinct (fake) boxes
            self._windows = {k: w for k, w in self._windows.items() if w.held is not None}
        letters, self._pending = self._pending, []
        try:
            self._store.add_dead_letters(letters, self._settings.keep_per_box, self._settings.keep_total)
        except GatewayError as exc:  # the letters are lost, the messages were bad anyway: count, go on
            self.write_failures += 1
            log.error("dead letters not recorded", extra={"ERROR": str(exc), "COUNT": len(letters)})
