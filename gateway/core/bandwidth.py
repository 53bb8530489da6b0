"""Uplink bandwidth cap with time windows, and the token bucket that enforces it.

``"mon-fri 07:00-19:00=5000"`` caps the uplink at 5000 kbit/s on weekdays from 07:00 to
19:00 local time; outside every window the default cap applies (0 = unlimited). Windows may
cross midnight (``22:00-06:00``); the first matching window wins. Pure: the caller passes the
local time and ``now``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^(?:(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+)?"
                     r"(?P<h1>\d\d):(?P<m1>\d\d)-(?P<h2>\d\d):(?P<m2>\d\d)=(?P<kbps>\d+)$")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start_min: int
    end_min: int  # exclusive; < start_min crosses midnight
    kbps: int

    def covers(self, weekday: int, minute_of_day: int) -> bool:
        if self.start_min <= self.end_min:
            return weekday in self.days and self.start_min <= minute_of_day < self.end_min
        if minute_of_day >= self.start_min:  # the evening part belongs to the day it starts
            return weekday in self.days
        return (weekday - 1) % 7 in self.days and minute_of_day < self.end_min


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text.strip().lower())
    if m is None:
        raise ValueError(f"expected '[mon[-fri] ]HH:MM-HH:MM=KBPS', got {text!r}")
    d1, d2 = m["d1"], m["d2"] or m["d1"]
    if d1 is None:
        days = frozenset(range(7))
    elif d1 not in DAYS or d2 not in DAYS:
        raise ValueError(f"unknown day in {text!r} (use {', '.join(DAYS)})")
    else:
        a, b = DAYS.index(d1), DAYS.index(d2)
        days = frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))
    h1, m1, h2, m2, kbps = (int(m[k]) for k in ("h1", "m1", "h2", "m2", "kbps"))
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2) or kbps <= 0:
        raise ValueError(f"time or rate out of range in {text!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"empty window in {text!r}")
    return Window(days, start, end, kbps)


def cap_kbps(windows: Sequence[Window], default_kbps: int, weekday: int, minute_of_day: int) -> int:
    """The cap in force (kbit/s); 0 means unlimited."""
    for window in windows:
        if window.covers(weekday, minute_of_day):
            return window.kbps
    return default_kbps


@dataclass
class TokenBucket:
    """Bytes may be sent while tokens last; tokens refill at the cap. A frame larger than the
    bucket still goes out once the bucket is full, so nothing ever stalls for good."""

    tokens: float = 0.0
    updated_at: float | None = None

    def take(self, nbytes: int, now: float, kbps: int, burst_s: float = 0.5) -> bool:
        if kbps <= 0:
            self.tokens, self.updated_at = 0.0, now
            return True
        rate = kbps * 1000 / 8  # bytes per second
        capacity = max(rate * burst_s, float(nbytes))
        elapsed = 0.0 if self.updated_at is None else max(0.0, now - self.updated_at)
        self.tokens = min(capacity, self.tokens + elapsed * rate) if self.updated_at is not None else capacity
        self.updated_at = now
        if self.tokens >= nbytes:
            self.tokens -= nbytes
            return True
        return False
