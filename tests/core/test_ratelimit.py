"""The pure limiter: token buckets per key and failure lockouts, under generated schedules."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.ratelimit import LockoutPolicy, Lockouts, Rate, TokenBuckets

rates = st.builds(Rate, per_s=st.floats(0.01, 50), burst=st.integers(1, 20).map(float))
gaps = st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=300)


def _times(deltas: list[float], start: float = 1000.0) -> list[float]:
    return list(itertools.accumulate(deltas, initial=start))[1:]


@settings(max_examples=300, deadline=None)
@given(rate=rates, deltas=gaps)
def test_bucket_never_admits_more_than_burst_plus_rate_times_elapsed_when_flooded(rate: Rate,
                                                                                 deltas: list[float]) -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate, max_keys=4)
    times = _times(deltas)
    admitted = [t for t in times if buckets.take("a", t) == 0.0]
    for i, first in enumerate(admitted):  # every window that starts and ends on an admission
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate.burst + rate.per_s * (admitted[j] - first) + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=rates, deltas=gaps)
def test_refused_event_is_admitted_when_it_retries_after_the_time_it_was_told(rate: Rate,
                                                                              deltas: list[float]) -> None:
    buckets: TokenBuckets[str] = TokenBuckets(rate, max_keys=4)
    for t in _times(deltas):
        wait = buckets.take("a", t)
        if wait:
            assert 0 < wait <= 1 / rate.per_s + 1e-9
            assert buckets.take("a", t + wait * (1 + 1e-9) + 1e-9) == 0.0
            return


@settings(max_examples=200, deadline=None)
@given(rate=rates, n=st.integers(1, 100))
def test_bucket_admits_the_burst_at_once_when_the_key_is_new(rate: Rate, n: int) -> None:
    buckets: TokenBuckets[int] = TokenBuckets(rate, max_keys=8)
    got = sum(buckets.take(7, 5.0) == 0.0 for _ in range(n))
    assert got == min(n, int(rate.burst))


@settings(max_examples=100, deadline=None)
@given(max_keys=st.integers(1, 50), keys=st.lists(st.integers(0, 10_000), min_size=1, max_size=500))
def test_memory_stays_bounded_by_max_keys_when_distinct_keys_flood(max_keys: int, keys: list[int]) -> None:
    buckets: TokenBuckets[int] = TokenBuckets(Rate(1.0, 1.0), max_keys)
    lockouts: Lockouts[int] = Lockouts(LockoutPolicy(3, 60, 900), max_keys)
    for n, key in enumerate(keys):
        buckets.take(key, float(n))
        lockouts.fail(key, float(n))
        assert len(buckets) <= max_keys and len(lockouts) <= max_keys
    assert len(buckets) == min(max_keys, len(set(keys)))


def test_least_recently_used_key_is_evicted_when_the_table_is_full() -> None:
    buckets: TokenBuckets[str] = TokenBuckets(Rate(0.001, 1.0), max_keys=2)
    assert buckets.take("a", 0) == 0.0 and buckets.take("b", 0) == 0.0
    assert buckets.take("a", 1) > 0  # touch a: b is now the least recently used
    assert buckets.take("c", 2) == 0.0  # evicts b
    assert buckets.take("a", 3) > 0  # a is remembered, still empty
    assert buckets.take("b", 4) == 0.0  # b was forgotten: a fresh bucket


def test_other_key_is_unaffected_when_one_key_is_limited() -> None:
    buckets: TokenBuckets[str] = TokenBuckets(Rate(0.1, 3.0), max_keys=10)
    assert [buckets.take("flood", 0) == 0.0 for _ in range(5)] == [True, True, True, False, False]
    assert buckets.take("quiet", 0) == 0.0


def test_clock_stepping_back_is_no_time_passing_when_a_bucket_refills() -> None:
    buckets: TokenBuckets[str] = TokenBuckets(Rate(1.0, 1.0), max_keys=2)
    assert buckets.take("a", 100.0) == 0.0
    assert buckets.take("a", 50.0) == pytest.approx(1.0)  # no refill from going back
    assert buckets.take("a", 100.5) == pytest.approx(0.5)
    assert buckets.take("a", 101.0) == 0.0


def test_cost_above_the_burst_is_never_admitted_when_asked() -> None:
    buckets: TokenBuckets[str] = TokenBuckets(Rate(1.0, 2.0), max_keys=2)
    assert buckets.take("a", 0, cost=3) == math.inf
    assert buckets.take("a", 0, cost=2) == 0.0  # the refusal spent nothing


@pytest.mark.parametrize("kwargs", [{"per_s": 0, "burst": 1}, {"per_s": 1, "burst": 0.5},
                                    {"per_s": math.nan, "burst": 1}, {"per_s": math.inf, "burst": 1}])
def test_rate_refused_when_it_cannot_admit_anything(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Rate(**kwargs)


@settings(max_examples=200, deadline=None)
@given(max_failures=st.integers(1, 10), lockout=st.floats(1, 3600), deltas=gaps)
def test_key_locked_for_the_lockout_when_max_failures_fall_within_the_window(max_failures: int, lockout: float,
                                                                             deltas: list[float]) -> None:
    window = 60.0
    lockouts: Lockouts[str] = Lockouts(LockoutPolicy(max_failures, window, lockout), max_keys=4)
    recent: list[float] = []  # failures counted since the last lockout, within the window
    for t in _times(deltas):
        left = lockouts.locked("k", t)
        if left:
            assert left <= lockout + 1e-9
            continue
        if recent and t - recent[0] > window:
            recent = []  # the window of the first counted failure has passed
        got = lockouts.fail("k", t)
        recent.append(t)
        if len(recent) >= max_failures:
            assert got == lockout and lockouts.locked("k", t) == pytest.approx(lockout)
            recent = []
        else:
            assert got == 0.0


def test_lockout_ends_when_its_time_has_passed() -> None:
    lockouts: Lockouts[str] = Lockouts(LockoutPolicy(3, 60, 900), max_keys=4)
    assert [lockouts.fail("k", t) for t in (0, 1, 2)] == [0.0, 0.0, 900.0]
    assert lockouts.locked("k", 3) == 899.0
    assert lockouts.locked("other", 3) == 0.0
    lockouts.succeed("k", 500)  # a success does not lift a lockout in force
    assert lockouts.locked("k", 901.9) > 0
    assert lockouts.locked("k", 902) == 0.0


def test_failures_forgotten_when_the_key_succeeds_or_the_window_passes() -> None:
    lockouts: Lockouts[str] = Lockouts(LockoutPolicy(3, 60, 900), max_keys=4)
    lockouts.fail("k", 0)
    lockouts.fail("k", 1)
    lockouts.succeed("k", 2)
    assert lockouts.fail("k", 3) == 0.0 and lockouts.fail("k", 4) == 0.0  # counting from zero again
    assert lockouts.fail("k", 100) == 0.0  # the two before are out of the window
    assert lockouts.fail("k", 101) == 0.0
    assert lockouts.fail("k", 102) == 900.0
