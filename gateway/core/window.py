"""Which chunks of one transfer to publish next: the sender's sliding window.

The cloud's PROGRESS acks say which chunks are durably staged; anything not
staged is (re)sent, in order, at most ``limit`` at a time, and a chunk that
stays unacknowledged past the ack timeout leaves the window (``expire``) and is
sent again. After a disconnect
``forget_in_flight`` makes every unacknowledged chunk due at once, so a resume
starts at the first missing chunk and resends at most one window.

How much may be in flight across all transfers is ``PathEstimate``'s answer: the
bandwidth-delay product of the path as the cloud's acks measure it (the rate chunks are
staged at, times the shortest time a chunk took from publish to PROGRESS), doubled, between
a floor and a ceiling. A window smaller than that leaves the link idle while acks travel;
a larger one only queues in the sockets and costs more to resend after a cut. The floor
(``MIN_WINDOW_BYTES``) covers what the minimum round trip does not show on a lossy link.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.core.policy import ack_timeout_s

# Before the first measurement, and never less. A chunk's round trip on a lossy link is often
# far above the minimum: TCP holds every chunk behind a lost segment until it is retransmitted
# (head-of-line), and the cloud's staging adds its own time; a window of twice the minimum
# bandwidth-delay product would then cap the rate below the link's (measured on the clinic
# link, 20 Mbit/s, 80 ms, 1% loss: 512 KiB gave 11 Mbit/s, 2 MiB 16 Mbit/s on a loaded machine).
MIN_WINDOW_BYTES = 2 * 1024 * 1024
RATE_HORIZON_S = 10.0  # the delivery rate is the maximum over this long
WINDOW_GAIN = 2.0  # in flight: twice the measured bandwidth-delay product
_MAX_SAMPLES = 512
_V = TypeVar("_V", float, int)


@dataclass(frozen=True)
class Delivery:
    """One chunk the cloud newly reported staged."""

    seq: int
    nbytes: int
    rtt_s: float | None  # publish -> PROGRESS; None if it was published more than once (Karn)


@dataclass
class TransferWindow:
    final_seq: int
    acked: set[int] = field(default_factory=set)
    sent_at: dict[int, float] = field(default_factory=dict)
    silent_rounds: int = 0
    last_progress_at: float = 0.0
    poked_at: float = 0.0
    sent_bytes: dict[int, int] = field(default_factory=dict)  # frame size of each chunk in flight
    resent: set[int] = field(default_factory=set)  # published more than once: no RTT sample

    def __post_init__(self) -> None:
        self.acked = {s for s in self.acked if 0 <= s <= self.final_seq}

    @property
    def total(self) -> int:
        return self.final_seq + 1

    @property
    def all_staged(self) -> bool:
        return len(self.acked) == self.total

    def in_flight(self) -> int:
        return sum(1 for seq in self.sent_at if seq not in self.acked)

    def in_flight_bytes(self) -> int:
        return sum(self.sent_bytes.get(seq, 0) for seq in self.sent_at if seq not in self.acked)

    def on_progress(self, ranges: tuple[tuple[int, int], ...], now: float) -> int:
        """Take the cloud's list of staged chunks as the truth; return how many were new."""
        return len(self.deliveries(ranges, now))

    def deliveries(self, ranges: tuple[tuple[int, int], ...], now: float) -> list[Delivery]:
        """Take the cloud's list of staged chunks as the truth; return the newly staged ones.

        PROGRESS acks are cumulative, so the latest list replaces ours: chunks
        the cloud dropped (corrupt on its disk, or expired) become due again.
        A late, older ack can only cause a harmless resend.
        """
        staged = {seq for start, stop in ranges for seq in range(max(0, start), min(stop, self.total))}
        out = []
        for seq in sorted(staged - self.acked):
            sent = self.sent_at.get(seq)
            rtt = now - sent if sent is not None and seq not in self.resent and now >= sent else None
            out.append(Delivery(seq, self.sent_bytes.get(seq, 0), rtt))
        self.acked = staged
        for seq in staged:
            self.sent_at.pop(seq, None)
            self.sent_bytes.pop(seq, None)
        if out:
            self.silent_rounds = 0
            self.last_progress_at = now
        return out

    def forget_in_flight(self) -> None:
        self.resent.update(self.sent_at)
        self.sent_at.clear()

    def due(self, now: float, limit: int, base_timeout_s: float) -> list[int]:
        """Chunks to publish now, at most ``limit``; marks nothing (call ``mark_sent``)."""
        timeout = ack_timeout_s(base_timeout_s, self.silent_rounds)
        if self.all_staged:
            # Everything is staged but no STORED yet: poke with the manifest so a
            # worker that died before assembling picks the transfer up again.
            quiet_since = max(self.last_progress_at, self.poked_at)
            return [0] if limit > 0 and now - quiet_since >= timeout else []
        out: list[int] = []
        for seq in range(self.total):
            if len(out) >= limit:
                break
            if seq not in self.acked and seq not in self.sent_at:
                out.append(seq)
        return out

    def expire(self, now: float, base_timeout_s: float) -> int:
        """Take chunks unacknowledged past the ack timeout out of flight; return how many.

        Call before counting ``in_flight`` for a budget: a chunk lost on the way (a
        broker with no subscriber yet drops it after its PUBACK) must free its slot,
        or a window full of lost chunks would never be resent.
        """
        timeout = ack_timeout_s(base_timeout_s, self.silent_rounds)
        stale = [seq for seq, sent in self.sent_at.items() if seq not in self.acked and now - sent >= timeout]
        for seq in stale:
            del self.sent_at[seq]
            self.resent.add(seq)
        if stale:
            self.silent_rounds += 1
        return len(stale)

    def mark_sent(self, seqs: list[int], now: float, sizes: list[int] | None = None) -> None:
        """``seqs`` were published at ``now``; ``sizes`` are their frame sizes, for ``in_flight_bytes``."""
        for i, seq in enumerate(seqs):
            if seq in self.sent_bytes or seq in self.resent:
                self.resent.add(seq)
            self.sent_at[seq] = now
            self.sent_bytes[seq] = sizes[i] if sizes is not None else 0
        if self.all_staged and seqs:
            self.poked_at = now


@dataclass
class PathEstimate:
    """The path's bandwidth-delay product as the acks show it, and the window it allows.

    ``on_delivered`` takes each chunk the cloud newly reported staged. The round trip is the
    shortest publish -> PROGRESS time of a chunk published once since the connection came up
    (``reset`` at each reconnect: a new connection may take another path). It is not forgotten
    while connected: a minimum that expired under a standing queue would take the queue for the
    path, and the window would feed its own queue. The delivery rate is the most bytes staged
    per round trip over ``RATE_HORIZON_S``. The window is ``WINDOW_GAIN`` times their product,
    at least ``floor_bytes`` and at most ``ceiling_bytes``. When the window is what limits, the
    rate measured is window / round trip, so the next window is twice the last: it grows each
    round trip until the link, not the window, sets the rate (BBR's start-up, at the level of
    chunks).
    """

    ceiling_bytes: int
    floor_bytes: int = MIN_WINDOW_BYTES
    _min_rtt_s: float | None = None
    _acked: deque[tuple[float, int]] = field(default_factory=deque)  # (at, bytes staged so far)
    _rates: deque[tuple[float, float]] = field(default_factory=deque)  # (at, bytes per second)
    _total: int = 0

    def __post_init__(self) -> None:
        self.floor_bytes = max(1, min(self.floor_bytes, self.ceiling_bytes))

    def reset(self) -> None:
        """A new connection: measure again from the floor."""
        self._min_rtt_s, self._total = None, 0
        self._acked.clear()
        self._rates.clear()

    def on_delivered(self, deliveries: list[Delivery], now: float) -> None:
        for d in deliveries:
            self._total += max(0, d.nbytes)
            if d.rtt_s is not None and d.rtt_s >= 0 and (self._min_rtt_s is None or d.rtt_s < self._min_rtt_s):
                self._min_rtt_s = d.rtt_s
        if not deliveries:
            return
        _push(self._acked, (now, self._total), now - 2 * RATE_HORIZON_S)
        if self._min_rtt_s is None:
            return
        span = max(self._min_rtt_s, 0.001)
        older = [(at, total) for at, total in self._acked if at <= now - span]
        if older:
            at, total = older[-1]
            _push(self._rates, (now, (self._total - total) / (now - at)), now - RATE_HORIZON_S)

    def min_rtt_s(self) -> float | None:
        return self._min_rtt_s

    def rate_bps(self) -> float:
        """Bytes per second, the most the cloud staged over a round trip lately (0 = unknown)."""
        return max((rate for _, rate in self._rates), default=0.0)

    def window_bytes(self) -> int:
        rtt, rate = self.min_rtt_s(), self.rate_bps()
        if rtt is None or rate <= 0:
            return self.floor_bytes
        return int(min(self.ceiling_bytes, max(self.floor_bytes, WINDOW_GAIN * rate * rtt)))


def _push(samples: deque[tuple[float, _V]], sample: tuple[float, _V], oldest: float) -> None:
    samples.append(sample)
    while samples and (samples[0][0] < oldest or len(samples) > _MAX_SAMPLES):
        samples.popleft()
