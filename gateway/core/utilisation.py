"""Utilisation figures per modality and day, clipped to opening hours: pure arithmetic.

docs/utilisation.md explains each figure; the formulas live here and nowhere else. Times
are epoch seconds (UTC); days and opening hours are in the site's local time. A site's time
zone is a ``Zone`` passed in (its UTC offset at an instant): an IANA zone read by
``gateway/adapters/time_zone.py``, or a ``FixedOffset``. Local days and opening windows follow
the zone's daylight-saving changes, so a day may have 23 or 25 hours. ``now`` is always passed
in: figures count only opening time that has already passed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DAY_S = 86400
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_WEEKLY = re.compile(r"^(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+(?P<hours>\S+)$")


class Zone(Protocol):
    def utc_offset_s(self, when: float) -> int:
        """Seconds local time is ahead of UTC at instant ``when`` (epoch seconds)."""
        ...


@dataclass(frozen=True)
class FixedOffset:
    """A zone without daylight saving: one offset all year."""

    offset_s: int

    def utc_offset_s(self, when: float) -> int:
        return self.offset_s


def _parse_hours(hours: str) -> tuple[int, int]:
    m = _HOURS.match(hours.strip())
    if not m:
        raise ValueError(f"opening hours must look like 08:00-18:00, got {hours!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    open_s, close_s = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
    if not (0 <= open_s < close_s <= DAY_S and m1 < 60 and m2 < 60):
        raise ValueError(f"opening hours must open before they close, within one day, got {hours!r}")
    return open_s, close_s


def _day_range(d1: str, d2: str | None, entry: str) -> list[int]:
    if d1 not in WEEKDAYS or (d2 or d1) not in WEEKDAYS:
        raise ValueError(f"unknown day in {entry!r} (use {', '.join(WEEKDAYS)})")
    a, b = WEEKDAYS.index(d1), WEEKDAYS.index(d2 or d1)
    return [(a + i) % 7 for i in range((b - a) % 7 + 1)]


@dataclass(frozen=True)
class OpeningHours:
    """One opening window a weekday, in a zone. ``days[0]`` is Monday: ``(open_s, close_s)`` after
    local midnight (close up to 86400 = midnight at the end of the day), or None when closed."""

    days: tuple[tuple[int, int] | None, ...]
    zone: Zone

    @classmethod
    def parse(cls, hours: str, weekdays: Iterable[int], utc_offset_minutes: int = 0,
              zone: Zone | None = None) -> OpeningHours:
        """``"08:00-18:00"`` on ISO ``weekdays`` (1 = Monday); ValueError when malformed (config
        turns it into ConfigError). Without ``zone``, a fixed ``utc_offset_minutes``."""
        window = _parse_hours(hours)
        days = frozenset(weekdays)
        if not days <= set(range(1, 8)):
            raise ValueError("weekdays are 1 (Monday) .. 7 (Sunday)")
        return cls(tuple(window if d + 1 in days else None for d in range(7)),
                   zone if zone is not None else FixedOffset(utc_offset_minutes * 60))

    @classmethod
    def weekly(cls, entries: Sequence[str], zone: Zone) -> OpeningHours:
        """``["mon-fri 08:00-18:00", "sat 08:00-12:00"]``: days not listed are closed; a day listed
        twice, an unknown day or malformed hours raise ValueError."""
        days: list[tuple[int, int] | None] = [None] * 7
        seen: set[int] = set()
        for entry in entries:
            m = _WEEKLY.match(entry.strip().lower())
            if m is None:
                raise ValueError(f"expected 'mon[-fri] HH:MM-HH:MM', got {entry!r}")
            window = _parse_hours(m["hours"])
            for d in _day_range(m["d1"], m["d2"], entry):
                if d in seen:
                    raise ValueError(f"{WEEKDAYS[d]} is given twice (in {entry!r})")
                seen.add(d)
                days[d] = window
        return cls(tuple(days), zone)

    def local_day(self, when: float) -> int:
        """Days since 1970-01-01 in local time."""
        return math.floor((when + self.zone.utc_offset_s(when)) / DAY_S)

    def weekday(self, day: int) -> int:
        """0 = Monday, for a local day number (1970-01-01 was a Thursday)."""
        return (day + 3) % 7

    def epoch(self, local_s: float) -> float:
        """The instant local time ``local_s`` (seconds since local 1970-01-01 00:00) names. A time
        repeated when clocks go back is its first occurrence; one skipped when they go forward is
        read with the offset before the change (so it lands after the gap)."""
        before = self.zone.utc_offset_s(local_s - DAY_S)
        after = self.zone.utc_offset_s(local_s + DAY_S)
        valid = [local_s - o for o in {before, after} if self.zone.utc_offset_s(local_s - o) == o]
        return min(valid) if valid else local_s - before

    def window(self, day: int) -> tuple[float, float] | None:
        """The open interval of local day ``day`` in epoch seconds, or None if closed that day."""
        hours = self.days[self.weekday(day)]
        if hours is None:
            return None
        lo = self.epoch(day * DAY_S + hours[0])
        return lo, max(lo, self.epoch(day * DAY_S + hours[1]))

    def is_open(self, when: float) -> bool:
        window = self.window(self.local_day(when))
        return window is not None and window[0] <= when < window[1]

    def in_hours(self, start: float) -> bool:
        """An exam is within opening hours when its start is."""
        return self.is_open(start)


@dataclass(frozen=True)
class ExamSpan:
    start: float
    end: float
    images: int
    counted: bool = True  # False for a discontinued exam: its time occupies the table, it is no exam


@dataclass(frozen=True)
class DayFigures:
    day: int  # local days since the epoch
    exams: int  # exams that started within opening hours
    exams_outside_hours: int
    images: int
    open_s: float  # opening time of the day that has passed by ``now``
    occupied_s: float  # table busy with exams that started within opening hours (merged, then clipped)
    occupancy: float  # occupied_s / open_s, 0..1 (0 on a closed day or before opening)
    exams_per_hour: float
    change_s: list[float] = field(default_factory=list)  # short gaps between exams: patient change
    idle_s: list[float] = field(default_factory=list)  # longer gaps, including before the first/after the last
    busy: list[tuple[float, float]] = field(default_factory=list)  # merged busy intervals (unclipped), timeline
    scheduled_s: float = 0.0  # the whole opening window of the day, passed or not
    outside_s: float = 0.0  # passed opening time the table spent on exams that started outside hours

    @property
    def patient_change_s(self) -> float | None:
        """Median patient change time, or None without two consecutive exams."""
        return percentile(self.change_s, 50)

    @property
    def idle_total_s(self) -> float:
        return sum(self.idle_s)


def merge(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _clip(spans: Sequence[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(s, lo), min(e, hi)) for s, e in spans if e > lo and s < hi]


def _measure(spans: Iterable[tuple[float, float]]) -> float:
    return sum(e - s for s, e in spans)


def _gaps(busy: Sequence[tuple[float, float]], lo: float, hi: float, change_max_s: float
          ) -> tuple[list[float], list[float]]:
    """Gaps inside [lo, hi): between exams up to ``change_max_s`` are patient change, the rest idle."""
    change: list[float] = []
    idle: list[float] = []
    cursor, first = lo, True
    for start, end in busy:
        gap = start - cursor
        if gap > 0:
            (idle if first or gap > change_max_s else change).append(gap)
        cursor, first = max(cursor, end), False
    if hi - cursor > 0:
        idle.append(hi - cursor)
    return change, idle


def occupies(exam: ExamSpan, min_exam_s: float) -> tuple[float, float]:
    """The interval an exam holds the table: a one-image exam (start = end) holds it ``min_exam_s``."""
    return exam.start, max(exam.end, exam.start + min_exam_s)


def day_figures(day: int, exams: Sequence[ExamSpan], hours: OpeningHours, *, min_exam_s: float,
                change_max_s: float, now: float = math.inf) -> DayFigures:
    """The figures of one modality on local day ``day`` from the exams that started that day, over
    the part of the day's opening window that has passed by ``now``. An exam that started outside
    the window is no exam of the day's opening hours: its table time inside the window is
    ``outside_s``, neither occupied nor idle."""
    spans = [occupies(e, min_exam_s) for e in exams]
    busy = merge(spans)
    window = hours.window(day)
    inside = [window is not None and window[0] <= e.start < window[1] for e in exams]
    counted_inside = sum(1 for e, i in zip(exams, inside, strict=True) if i and e.counted)
    counted_all = sum(1 for e in exams if e.counted)
    images = sum(e.images for e in exams)
    if window is None:
        return DayFigures(day, 0, counted_all, images, 0.0, 0.0, 0.0, 0.0, busy=busy)
    lo, hi = window[0], max(window[0], min(window[1], now))
    open_s = hi - lo
    clipped = _clip(busy, lo, hi)
    occupied = _measure(_clip(merge(s for s, i in zip(spans, inside, strict=True) if i), lo, hi))
    change, idle = _gaps(clipped, lo, hi, change_max_s)
    return DayFigures(
        day=day, exams=counted_inside, exams_outside_hours=counted_all - counted_inside, images=images,
        open_s=open_s, occupied_s=occupied, occupancy=occupied / open_s if open_s > 0 else 0.0,
        exams_per_hour=counted_inside / (open_s / 3600.0) if open_s > 0 else 0.0, change_s=change, idle_s=idle,
        busy=busy, scheduled_s=window[1] - window[0], outside_s=max(0.0, _measure(clipped) - occupied))


def by_day(exams: Iterable[ExamSpan], hours: OpeningHours) -> dict[int, list[ExamSpan]]:
    out: dict[int, list[ExamSpan]] = {}
    for exam in exams:
        out.setdefault(hours.local_day(exam.start), []).append(exam)
    return out


@dataclass(frozen=True)
class Capacity:
    """A scanner's opening time over a period, split at ``now``."""

    open_s: float  # opening time already passed
    busy_s: float  # of it, the table busy (any exam, in hours or not)
    remaining_s: float  # opening time still to come: all of it free so far

    @property
    def free_s(self) -> float:
        """Opening time passed with the table free, plus the opening time still to come."""
        return self.open_s - self.busy_s + self.remaining_s


def week_of(now: float, hours: OpeningHours) -> tuple[float, float]:
    """The local week (Monday 00:00 to the next Monday 00:00) holding ``now``, in epoch seconds."""
    day = hours.local_day(now)
    monday = day - hours.weekday(day)
    return hours.epoch(monday * DAY_S), hours.epoch((monday + 7) * DAY_S)


def capacity(exams: Iterable[ExamSpan], hours: OpeningHours, lo: float, hi: float, now: float, *,
             min_exam_s: float) -> Capacity:
    """Opening time within ``[lo, hi)``: passed by ``now``, busy of it, and still to come."""
    busy = merge(occupies(e, min_exam_s) for e in exams)
    passed = taken = remaining = 0.0
    for day in range(hours.local_day(lo), hours.local_day(hi) + 1):
        window = hours.window(day)
        if window is None:
            continue
        a, b = max(window[0], lo), min(window[1], hi)
        if min(b, now) > a:
            passed += min(b, now) - a
            taken += _measure(_clip(busy, a, min(b, now)))
        if b > max(a, now):
            remaining += b - max(a, now)
    return Capacity(passed, taken, remaining)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def silent_since(last_exam_end: float | None, since: float, now: float, hours: OpeningHours) -> float:
    """Seconds of opening hours between the last exam (or ``since``) and ``now``."""
    start = max(last_exam_end or since, since)
    total, day = 0.0, max(hours.local_day(start), hours.local_day(now) - 400)
    while day <= hours.local_day(now):
        window = hours.window(day)
        if window is not None:
            total += max(0.0, min(window[1], now) - max(window[0], start))
        day += 1
    return total
