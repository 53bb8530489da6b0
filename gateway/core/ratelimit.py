"""Rate limits and lockouts per key, pure: token buckets and failure counters.

Nothing here reads a clock: every call takes ``now`` (seconds on any clock that does not go
backwards; a step back is treated as no time passing). Keys are whatever the caller counts by:
a source address, a token reference, a box id.

``TokenBuckets`` admits at most ``burst + per_s * elapsed`` events per key in any interval of
length ``elapsed``; a refused event is told how long until it would be admitted (for an HTTP
``Retry-After``). ``Lockouts`` counts failures per key; ``max_failures`` within ``window_s``
lock the key for ``lockout_s``, during which the caller refuses it without trying.

Memory is bounded: each table keeps at most ``max_keys`` keys and evicts the least recently
used one, so a flood of distinct keys cannot grow it. Eviction forgets: an evicted key starts
again with a full bucket and no failures. Size ``max_keys`` well above the number of keys
legitimately active within one lockout (or one bucket refill); a caller facing many cheap keys
(IPv6 addresses) should coarsen them (to a /64) before counting.

Not thread-safe: a caller shared between threads holds its own lock around these calls.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Rate:
    """``per_s`` events a second on average, ``burst`` at once after a quiet spell."""

    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_s) and self.per_s > 0):
            raise ValueError("rate must be a positive number of events per second")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError("burst must be at least 1 event")


@dataclass(frozen=True)
class LockoutPolicy:
    """``max_failures`` failures of one key within ``window_s`` lock it for ``lockout_s``."""

    max_failures: int
    window_s: float
    lockout_s: float

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError("the failure window must be a positive number of seconds")
        if not (math.isfinite(self.lockout_s) and self.lockout_s >= 0):
            raise ValueError("the lockout must be a non-negative number of seconds")


class _Lru(Generic[K, V]):
    """A dict of at most ``max_keys`` entries; inserting one more evicts the least recently used."""

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if key in self._d:
            self._d.move_to_end(key)
        elif len(self._d) >= self.max_keys:
            self._d.popitem(last=False)
        self._d[key] = value

    def pop(self, key: K) -> None:
        self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)


@dataclass(frozen=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets(Generic[K]):
    """One token bucket per key; at most ``max_keys`` buckets (least recently used evicted)."""

    def __init__(self, rate: Rate, max_keys: int) -> None:
        self.rate = rate
        self._buckets: _Lru[K, _Bucket] = _Lru(max_keys)

    def take(self, key: K, now: float, cost: float = 1.0) -> float:
        """Admit an event of ``cost`` for ``key`` at ``now``.

        Returns 0.0 when admitted (the tokens are spent), otherwise the seconds until it would
        be (nothing is spent; a cost above the burst is never admitted and returns ``inf``).
        """
        if not cost > 0:
            raise ValueError("cost must be positive")
        rate = self.rate
        bucket = self._buckets.get(key) or _Bucket(rate.burst, now)
        elapsed = max(0.0, now - bucket.stamp)
        tokens = min(rate.burst, bucket.tokens + elapsed * rate.per_s)
        stamp = max(bucket.stamp, now)
        if tokens >= cost:
            self._buckets.put(key, _Bucket(tokens - cost, stamp))
            return 0.0
        self._buckets.put(key, _Bucket(tokens, stamp))
        if cost > rate.burst:
            return math.inf
        return (cost - tokens) / rate.per_s

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class _Failures:
    count: int
    since: float
    locked_until: float


class Lockouts(Generic[K]):
    """Failures per key and the lockouts they cause; at most ``max_keys`` keys (LRU evicted)."""

    def __init__(self, policy: LockoutPolicy, max_keys: int) -> None:
        self.policy = policy
        self._keys: _Lru[K, _Failures] = _Lru(max_keys)

    def locked(self, key: K, now: float) -> float:
        """Seconds left of ``key``'s lockout at ``now``; 0.0 when it is not locked out."""
        state = self._keys.get(key)
        if state is None or now >= state.locked_until:
            return 0.0
        return state.locked_until - now

    def fail(self, key: K, now: float) -> float:
        """Count a failure of ``key``. Returns the lockout in seconds if it is now locked, else 0.0.

        The failure that reaches ``max_failures`` starts the lockout and clears the count; a
        failure while already locked neither extends nor counts toward the next one.
        """
        p = self.policy
        state = self._keys.get(key)
        if state is not None and now < state.locked_until:
            return state.locked_until - now
        if state is None or state.count == 0 or not 0 <= now - state.since <= p.window_s:
            count, since = 1, now  # the first failure of a new window
        else:
            count, since = state.count + 1, state.since
        if count >= p.max_failures:
            self._keys.put(key, _Failures(0, now, now + p.lockout_s))
            return p.lockout_s
        self._keys.put(key, _Failures(count, since, -math.inf))
        return 0.0

    def succeed(self, key: K, now: float) -> None:
        """Forget ``key``'s failures; a lockout in force at ``now`` stays (check ``locked`` first)."""
        state = self._keys.get(key)
        if state is not None and now >= state.locked_until:
            self._keys.pop(key)

    def __len__(self) -> int:
        return len(self._keys)
