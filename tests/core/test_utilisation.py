"""core.utilisation: opening hours, the day's figures and their invariants."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.adapters.time_zone import zone
from gateway.core.utilisation import (
    DAY_S,
    ExamSpan,
    FixedOffset,
    OpeningHours,
    capacity,
    day_figures,
    merge,
    percentile,
    silent_since,
    week_of,
)

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
        ExamSpan(at("07:30"), at("08:20"), 100),  # starts before opening: outside hours, its 08:00-08:20 too
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
    assert f.occupied_s == 30 * 60 + 60 + 10 * 60 and f.outside_s == 20 * 60
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
    assert f.occupied_s + sum(f.change_s) + sum(f.idle_s) + f.outside_s == pytest.approx(f.open_s, abs=1e-6)
    assert f.exams + f.exams_outside_hours == sum(e.counted for e in exams)


def test_merge_and_percentile_behave_when_inputs_overlap_or_are_empty() -> None:
    assert merge([(5, 6), (1, 3), (2, 4)]) == [(1, 4), (5, 6)]
    assert percentile([], 50) is None
    assert percentile([10, 1, 5, 7], 50) == 5 and percentile(list(range(1, 101)), 95) == 95


def test_silence_counts_only_opening_hours_when_spanning_a_night() -> None:
    # last exam Tuesday 17:00, now Wednesday 09:00: one hour on Tuesday, one on Wednesday.
    assert silent_since(at("17:00"), at("06:00"), at("09:00", TUESDAY + 1), HOURS) == 2 * 3600


NEW_YORK = zone("America/New_York")
NY_HOURS = OpeningHours.weekly(["mon-fri 08:00-18:00", "sat 09:00-12:30"], NEW_YORK)
SPRING = calendar.timegm((2026, 3, 8, 0, 0, 0)) // DAY_S  # Sun 2026-03-08: clocks go forward at 02:00
AUTUMN = calendar.timegm((2026, 11, 1, 0, 0, 0)) // DAY_S  # Sun 2026-11-01: clocks go back at 02:00


def test_weekly_hours_are_refused_when_a_day_is_unknown_twice_or_malformed() -> None:
    for bad in (["mon-fri 08:00-18:00", "fri 09:00-12:00"], ["mo 08:00-18:00"], ["mon 8-18"], ["08:00-18:00"],
                ["sun 18:00-08:00"]):
        with pytest.raises(ValueError):
            OpeningHours.weekly(bad, FixedOffset(0))


def test_unknown_time_zone_is_refused_when_read() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        zone("Mars/Olympus_Mons")


def test_days_differ_and_close_when_weekly_hours_say_so() -> None:
    saturday = SPRING - 1
    assert NY_HOURS.window(saturday) == (calendar.timegm((2026, 3, 7, 14, 0, 0)),  # 09:00 EST
                                         calendar.timegm((2026, 3, 7, 17, 30, 0)))
    assert NY_HOURS.window(SPRING) is None  # Sunday: not listed, closed


def test_windows_follow_daylight_saving_when_clocks_change() -> None:
    before, after = NY_HOURS.window(SPRING - 2), NY_HOURS.window(SPRING + 1)  # Fri 6 and Mon 9 March
    assert before == (calendar.timegm((2026, 3, 6, 13, 0, 0)), calendar.timegm((2026, 3, 6, 23, 0, 0)))  # EST
    assert after == (calendar.timegm((2026, 3, 9, 12, 0, 0)), calendar.timegm((2026, 3, 9, 22, 0, 0)))  # EDT
    all_day = OpeningHours.parse("00:00-24:00", range(1, 8), zone=NEW_YORK)
    spring, autumn = all_day.window(SPRING), all_day.window(AUTUMN)
    assert spring is not None and spring[1] - spring[0] == 23 * 3600
    assert autumn is not None and autumn[1] - autumn[0] == 25 * 3600
    night = OpeningHours.parse("01:30-03:00", range(1, 8), zone=NEW_YORK)  # 02:00-03:00 does not exist
    assert night.window(SPRING) == (calendar.timegm((2026, 3, 8, 6, 30, 0)), calendar.timegm((2026, 3, 8, 7, 0, 0)))
    twice = night.window(AUTUMN)  # 01:30 happens twice: the first one counts
    assert twice == (calendar.timegm((2026, 11, 1, 5, 30, 0)), calendar.timegm((2026, 11, 1, 8, 0, 0)))


@given(st.integers(calendar.timegm((2020, 1, 1, 0, 0, 0)), calendar.timegm((2031, 1, 1, 0, 0, 0))),
       st.sampled_from(["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Shanghai", "UTC"]))
def test_local_day_holds_its_window_when_any_instant_in_any_zone(when: int, name: str) -> None:
    hours = OpeningHours.parse("00:00-24:00", range(1, 8), zone=zone(name))
    window = hours.window(hours.local_day(when))
    assert window is not None and window[0] <= when < window[1]
    nxt = hours.window(hours.local_day(when) + 1)
    assert nxt is not None and nxt[0] == window[1]  # days tile time: no gap, no overlap
    assert 23 * 3600 - 1800 <= window[1] - window[0] <= 25 * 3600


def test_idle_is_counted_only_for_passed_opening_time_when_the_day_is_not_over() -> None:
    exams = [ExamSpan(at("09:00"), at("09:30"), 10)]
    f = day_figures(TUESDAY, exams, HOURS, min_exam_s=60, change_max_s=900, now=at("10:00"))
    assert (f.open_s, f.scheduled_s, f.occupied_s, f.idle_s) == (2 * 3600, 10 * 3600, 1800, [3600.0, 1800.0])
    early = day_figures(TUESDAY, [], HOURS, min_exam_s=60, change_max_s=900, now=at("07:00"))
    assert (early.open_s, early.idle_s, early.occupancy, early.exams_per_hour) == (0, [], 0.0, 0.0)


@given(spans, st.floats(-3600, 30 * 3600))
def test_passed_open_time_is_split_exactly_when_now_is_anywhere(raw: list[tuple[float, float, int, bool]],
                                                                 now_s: float) -> None:
    base = at("00:00")
    exams = [ExamSpan(base + s, base + s + d, n, c) for s, d, n, c in raw]
    f = day_figures(TUESDAY, exams, HOURS, min_exam_s=60, change_max_s=900, now=base + now_s)
    assert f.open_s == pytest.approx(min(max(base + now_s - at("08:00"), 0.0), 10 * 3600))
    assert 0.0 <= f.occupancy <= 1.0 + 1e-9
    assert f.occupied_s + sum(f.change_s) + sum(f.idle_s) + f.outside_s == pytest.approx(f.open_s, abs=1e-6)


@given(st.lists(st.tuples(st.floats(0, 8 * DAY_S), st.floats(0, 7200)), max_size=20),
       st.floats(0, 8 * DAY_S), st.sampled_from(["America/New_York", "Asia/Shanghai"]))
def test_week_capacity_adds_up_when_exams_and_now_are_arbitrary(raw: list[tuple[float, float]], now_s: float,
                                                                name: str) -> None:
    hours = OpeningHours.weekly(["mon-fri 08:00-18:00", "sat 09:00-12:00"], zone(name))
    now = calendar.timegm((2026, 3, 2, 0, 0, 0)) + now_s  # weeks around the spring change
    lo, hi = week_of(now, hours)
    assert lo <= now < hi and hours.weekday(hours.local_day(lo)) == 0
    c = capacity([ExamSpan(now - 4 * DAY_S + s, now - 4 * DAY_S + s + d, 1) for s, d in raw], hours, lo, hi, now,
                 min_exam_s=60)
    assert c.open_s + c.remaining_s == pytest.approx(53 * 3600)  # 5 x 10 h + 3 h, whatever the offsets
    assert 0.0 <= c.busy_s <= c.open_s + 1e-6 and c.free_s >= c.remaining_s - 1e-6
