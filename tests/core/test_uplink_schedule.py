"""Priority rules, bandwidth windows and the token bucket: pure decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import policy
from gateway.core.bandwidth import TokenBucket, cap_kbps, parse_window
from gateway.core.priority import Priority, PriorityRules, classify
from gateway.core.window import TransferWindow

RULES = PriorityRules(stat_calling_aets=("ER_CT",), stat_modalities=("CT",))


@pytest.mark.parametrize(("ae", "modality", "dimse", "requested", "expected"), [
    ("ER_CT", "MR", 0, "", Priority.STAT),
    ("WARD", "ct", 0, "", Priority.STAT),
    ("WARD", "MR", 0, "STAT", Priority.STAT),
    ("WARD", "MR", 1, "", Priority.HIGH),
    ("WARD", "MR", 0, "HIGH", Priority.HIGH),
    ("WARD", "MR", 2, "ROUTINE", Priority.ROUTINE),
])
def test_priority_follows_site_rules_then_dicom_attributes_when_classifying(
        ae: str, modality: str, dimse: int, requested: str, expected: Priority) -> None:
    assert classify(RULES, ae, modality, dimse, requested) is expected


def test_dicom_priority_is_ignored_when_the_site_turns_it_off() -> None:
    rules = PriorityRules(honor_dicom_priority=False)
    assert classify(rules, "WARD", "MR", 1, "STAT") is Priority.ROUTINE


def test_window_caps_clinic_hours_and_night_is_unlimited_when_configured() -> None:
    windows = [parse_window("mon-fri 07:00-19:00=5000")]
    assert cap_kbps(windows, 0, weekday=0, minute_of_day=8 * 60) == 5000
    assert cap_kbps(windows, 0, weekday=0, minute_of_day=19 * 60) == 0
    assert cap_kbps(windows, 0, weekday=5, minute_of_day=8 * 60) == 0  # Saturday


def test_window_crossing_midnight_belongs_to_the_day_it_starts_when_matching() -> None:
    w = parse_window("fri 22:00-06:00=100")
    assert w.covers(4, 23 * 60) and w.covers(5, 5 * 60)
    assert not w.covers(5, 23 * 60) and not w.covers(4, 5 * 60)


def test_window_with_days_wrapping_the_week_covers_both_ends_when_parsed() -> None:
    assert parse_window("sat-mon 00:00-24:00=1").days == frozenset({5, 6, 0})


@pytest.mark.parametrize("text", ["07:00-19:00", "7:00-19:00=5", "07:00-07:00=5", "25:00-26:00=5",
                                  "xyz 07:00-19:00=5", "07:00-19:00=0"])
def test_window_is_refused_when_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


@given(st.lists(st.tuples(st.integers(1, 200_000), st.floats(0, 2)), max_size=60), st.integers(1, 100_000))
def test_bucket_never_lets_more_than_rate_plus_burst_through_when_capped(
        sends: list[tuple[int, float]], kbps: int) -> None:
    bucket, now, passed, largest = TokenBucket(), 0.0, 0, 0
    for nbytes, gap in sends:
        now += gap
        if bucket.take(nbytes, now, kbps):
            passed += nbytes
            largest = max(largest, nbytes)
    rate = kbps * 1000 / 8
    assert passed <= rate * now + max(rate * 0.5, largest) * 2 + 1


def test_bucket_lets_a_frame_larger_than_the_burst_through_when_full() -> None:
    bucket = TokenBucket()
    assert bucket.take(10_000, 0.0, kbps=8)  # 1000 B/s: the first frame goes (bucket starts full)
    assert not bucket.take(10_000, 1.0, kbps=8)
    assert bucket.take(10_000, 10.0, kbps=8)


def test_held_back_chunks_count_one_silent_round_per_timeout_when_not_published() -> None:
    """A chunk the bandwidth cap holds back is not sent again; pumping often must not burn rounds."""
    w = TransferWindow(final_seq=3)
    w.mark_sent([0, 1], 0.0)
    for t in range(100, 110):  # timed out, but the cap keeps them back: nothing marked sent
        w.expire(float(t), 30.0)
        assert w.due(float(t), 4, 30.0)[:2] == [0, 1]
    assert w.silent_rounds == 1



# -- when the packer packs while a study still arrives (policy.pack_now) -----------------------

def _pack_now(quiet: float, deferred: float, queued: int) -> bool:
    return policy.pack_now(quiet, deferred, queued, quiet_s=0.5, max_defer_s=30.0, ahead_bytes=4 << 20)


@given(quiet=st.floats(0, 0.49), deferred=st.floats(0, 29.9), queued=st.integers(0, 1 << 30),
       more=st.integers(0, 1 << 30))
def test_packer_defers_to_a_busy_reception_only_while_the_uplink_has_enough_queued_when_a_study_arrives(
        quiet: float, deferred: float, queued: int, more: int) -> None:
    assert _pack_now(quiet, deferred, queued) == (queued < 4 << 20)  # the queue alone decides
    # more queued is never more urgent
    assert _pack_now(quiet, deferred, queued + more) <= _pack_now(quiet, deferred, queued)
    # a quiet moment, or the longest deferral, packs whatever is queued
    assert _pack_now(0.5, deferred, queued) and _pack_now(quiet, 30.0, queued)


def test_packer_packs_the_first_instance_at_once_when_a_study_starts_arriving() -> None:
    assert policy.pack_now(0.0, 0.0, 0, quiet_s=0.5, max_defer_s=30.0, ahead_bytes=4 << 20)
    assert not policy.pack_now(0.0, 0.0, 5 << 20, quiet_s=0.5, max_defer_s=30.0, ahead_bytes=4 << 20)
