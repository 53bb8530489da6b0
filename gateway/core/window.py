"""Which chunks of one transfer to publish next: the sender's sliding window.

The cloud's PROGRESS acks say which chunks are durably staged; anything not
staged is (re)sent, in order, at most ``limit`` at a time, and a chunk that
stays unacknowledged past the ack timeout leaves the window (``expire``) and is
sent again. After a disconnect
``forget_in_flight`` makes every unacknowledged chunk due at once, so a resume
starts at the first missing chunk and resends at most one window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.policy import ack_timeout_s


@dataclass
class TransferWindow:
    final_seq: int
    acked: set[int] = field(default_factory=set)
    sent_at: dict[int, float] = field(default_factory=dict)
    silent_rounds: int = 0
    last_progress_at: float = 0.0
    poked_at: float = 0.0

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

    def on_progress(self, ranges: tuple[tuple[int, int], ...], now: float) -> int:
        """Take the cloud's list of staged chunks as the truth; return how many were new.

        PROGRESS acks are cumulative, so the latest list replaces ours: chunks
        the cloud dropped (corrupt on its disk, or expired) become due again.
        A late, older ack can only cause a harmless resend.
        """
        staged = {seq for start, stop in ranges for seq in range(max(0, start), min(stop, self.total))}
        gained = len(staged - self.acked)
        self.acked = staged
        for seq in staged:
            self.sent_at.pop(seq, None)
        if gained:
            self.silent_rounds = 0
            self.last_progress_at = now
        return gained

    def forget_in_flight(self) -> None:
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
        if stale:
            self.silent_rounds += 1
        return len(stale)

    def mark_sent(self, seqs: list[int], now: float) -> None:
        for seq in seqs:
            self.sent_at[seq] = now
        if self.all_staged and seqs:
            self.poked_at = now
