"""core.utilisation: opening hours, the day's figures and their invariants."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.utilisation import DAY_S, ExamSpan, OpeningHours, day_figures, merge, percentile, silent_since

HOURS = OpeningHours.parse("08:00-18:00", [1, 2, 3, 4, 5], utc_offset_minutes=480)
TUESDAY = calendar.timegm((2026, 11, 24, 0, 0, 0)) // DAY_S  # local day number of Tue 2026-11-24


def at(hhmm: str, day: int = TUESDAY) -> float:
    """Epoch seconds of local (UTC+8) time ``hhmm`` on ``day``."""
    h, m = map(int, hhmm.split(":"))
    return day * DAY_S + h * 3600 + m * 60 - 8 * 3600


def test_opening_hours_are_refused_when_malformed() -> None:
    for bad in ("8-18", "18:00-08:00", "08:00-25:00"):
        with pytest.raises(ValueError):
            OpeningHours.parse(bad, [1], 0)


def test_window_is_none_when_the_site_is_closed_that_weekday() -> None:
    assert HOURS.window(TUESDAY) == (at("08:00"), at("18:00"))
    assert HOURS.window(TUESDAY + 5) is None  # Sunday
    assert HOURS.local_day(at("23:59")) == TUESDAY and HOURS.local_day(at("00:00")) == TUESDAY


def test_day_figures_follow_the_documented_formulas_when_exams_are_known() -> None:
    exams = [
        ExamSpan(at("07:30"), at("08:20"), 100),  # starts before opening: counted outside, occupies 08:00-08:20
        ExamSpan(at("08:30"), at("08:50"), 200),  # 10 min change after the first
        ExamSpan(at("08:40"), at("09:00"), 50),  # overlaps: merged busy 08:30-09:00
        ExamSpan(at("11:00"), at("11:00"), 1),  # one image: occupies min_exam_s = 60 s
        ExamSpan(at("12:00"), at("12:10"), 5, counted=False),  # discontinued: occupies, not an exam
        ExamSpan(at("19:00"), at("19:30"), 10),  # after closing
    ]
    f = day_figures(TUESDAY, exams, HOURS, min_exam_s=60, change_max_s=900)
    assert f.exams == 3 and f.exams_outside_hours == 2
    assert f.images == 366
    assert f.open_s == 10 * 3600
    assert f.occupied_s == 20 * 60 + 30 * 60 + 60 + 10 * 60
    assert f.occupancy == pytest.approx(f.occupied_s / 36000)
    assert f.exams_per_hour == pytest.approx(0.3)
    assert f.change_s == [600.0]
    assert f.idle_s == [120 * 60, 59 * 60, 5 * 3600 + 50 * 60]
    assert f.patient_change_s == 600.0


def test_closed_day_counts_every_exam_outside_hours_when_the_site_is_closed() -> None:
    f = day_figures(TUESDAY + 5, [ExamSpan(at("10:00", TUESDAY + 5), at("10:30", TUESDAY + 5), 3)], HOURS,
                    min_exam_s=60, change_max_s=900)
    assert (f.exams, f.exams_outside_hours, f.occupancy, f.open_s) == (0, 1, 0.0, 0.0)


spans = st.lists(st.tuples(st.floats(-3600, 90000), st.floats(0, 7200), st.integers(0, 500), st.booleans()),
                 max_size=30)


@given(spans)
def test_open_time_is_split_exactly_when_exams_are_arbitrary(raw: list[tuple[float, float, int, bool]]) -> None:
    base = at("00:00")
    exams = [ExamSpan(base + s, base + s + d, n, c) for s, d, n, c in raw]
    f = day_figures(TUESDAY, exams, HOURS, min_exam_s=60, change_max_s=900)
    assert 0.0 <= f.occupancy <= 1.0 + 1e-9
    assert f.occupied_s + sum(f.change_s) + sum(f.idle_s) == pytest.approx(f.open_s, abs=1e-6)
    assert f.exams + f.exams_outside_hours == sum(e.counted for e in exams)


def test_merge_and_percentile_behave_when_inputs_overlap_or_are_empty() -> None:
    assert merge([(5, 6), (1, 3), (2, 4)]) == [(1, 4), (5, 6)]
    assert percentile([], 50) is None
    assert percentile([10, 1, 5, 7], 50) == 5 and percentile(list(range(1, 101)), 95) == 95


def test_silence_counts_only_opening_hours_when_spanning_a_night() -> None:
    # last exam Tuesday 17:00, now Wednesday 09:00: one hour on Tuesday, one on Wednesday.
    assert silent_since(at("17:00"), at("06:00"), at("09:00", TUESDAY + 1), HOURS) == 2 * 3600
