"""Utilisation figures per modality and day, clipped to opening hours: pure arithmetic.

docs/utilisation.md explains each figure; the formulas live here and nowhere else. Times
are epoch seconds (UTC); days and opening hours are in the site's local time, given as a
fixed UTC offset.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DAY_S = 86400
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class OpeningHours:
    open_s: int  # seconds after local midnight
    close_s: int
    weekdays: frozenset[int]  # ISO weekday numbers, 1 = Monday
    utc_offset_s: int

    @classmethod
    def parse(cls, hours: str, weekdays: Iterable[int], utc_offset_minutes: int) -> OpeningHours:
        """``"08:00-18:00"``; ValueError when malformed (config turns it into ConfigError)."""
        m = _HOURS.match(hours.strip())
        if not m:
            raise ValueError("opening hours must look like 08:00-18:00")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        open_s, close_s = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
        if not (0 <= open_s < close_s <= DAY_S and m1 < 60 and m2 < 60):
            raise ValueError("opening hours must open before they close, within one day")
        days = frozenset(weekdays)
        if not days <= set(range(1, 8)):
            raise ValueError("weekdays are 1 (Monday) .. 7 (Sunday)")
        return cls(open_s, close_s, days, utc_offset_minutes * 60)

    def local_day(self, when: float) -> int:
        """Days since 1970-01-01 in local time."""
        return math.floor((when + self.utc_offset_s) / DAY_S)

    def window(self, day: int) -> tuple[float, float] | None:
        """The open interval of local day ``day`` in epoch seconds, or None if closed that day."""
        if (day + 3) % 7 + 1 not in self.weekdays:  # 1970-01-01 was a Thursday (ISO 4)
            return None
        midnight = day * DAY_S - self.utc_offset_s
        return midnight + self.open_s, midnight + self.close_s

    def is_open(self, when: float) -> bool:
        window = self.window(self.local_day(when))
        return window is not None and window[0] <= when < window[1]


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
    open_s: float
    occupied_s: float  # table busy within opening hours (exam intervals merged, then clipped)
    occupancy: float  # occupied_s / open_s, 0..1 (0 on a closed day)
    exams_per_hour: float
    change_s: list[float] = field(default_factory=list)  # short gaps between exams: patient change
    idle_s: list[float] = field(default_factory=list)  # longer gaps, including before the first/after the last
    busy: list[tuple[float, float]] = field(default_factory=list)  # merged busy intervals (unclipped), timeline

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


def day_figures(day: int, exams: Sequence[ExamSpan], hours: OpeningHours, *, min_exam_s: float,
                change_max_s: float) -> DayFigures:
    """The figures of one modality on local day ``day`` from the exams that started that day."""
    spans = [(e.start, max(e.end, e.start + min_exam_s)) for e in exams]
    busy = merge(spans)
    window = hours.window(day)
    inside = [e for e in exams if window is not None and window[0] <= e.start < window[1]]
    counted_inside = sum(1 for e in inside if e.counted)
    counted_all = sum(1 for e in exams if e.counted)
    if window is None:
        return DayFigures(day, 0, counted_all, sum(e.images for e in exams), 0.0, 0.0, 0.0, 0.0, busy=busy)
    lo, hi = window
    clipped = _clip(busy, lo, hi)
    occupied = sum(e - s for s, e in clipped)
    change, idle = _gaps(clipped, lo, hi, change_max_s)
    open_s = hi - lo
    return DayFigures(
        day=day, exams=counted_inside, exams_outside_hours=counted_all - counted_inside,
        images=sum(e.images for e in exams), open_s=open_s, occupied_s=occupied, occupancy=occupied / open_s,
        exams_per_hour=counted_inside / (open_s / 3600.0), change_s=change, idle_s=idle, busy=busy)


def by_day(exams: Iterable[ExamSpan], hours: OpeningHours) -> dict[int, list[ExamSpan]]:
    out: dict[int, list[ExamSpan]] = {}
    for exam in exams:
        out.setdefault(hours.local_day(exam.start), []).append(exam)
    return out


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
