"""What stands between the network and the fleet CA: rate limits, lockouts, typed request bodies.

One guard per enrolment endpoint, shared by its handler threads (a lock around the pure limiter
of ``gateway.core.ratelimit``). Each request is counted against its source address (an IPv6
address by its /64, which one site holds whole), an enrolment also against its token
(``token_ref``: never the token itself), a renewal also against the box id of the certificate it
presents. A key over its rate is refused with 429 and the seconds until it would be admitted; a
key with ``max_failures`` refusals within the failure window is locked out and refused with 403
without being tried. Every refusal is a ``Refusal`` carrying its HTTP status, its MESSAGE_ID and
a reason the requester can act on.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from gateway.config import EnrolmentLimitSettings
from gateway.core import schema
from gateway.core.errors import FrameError
from gateway.core.ratelimit import LockoutPolicy, Lockouts, Rate, TokenBuckets
from gateway.logs import MSG

T = TypeVar("T")
KINDS = ("address", "token", "box")
class Refusal(Exception):  # noqa: N818 - an answer, not a failure of ours
    """A request refused before or instead of being served: status, MESSAGE_ID, reason, Retry-After."""

    def __init__(self, status: int, msg: MSG, reason: str, retry_after_s: float = 0.0,
                 counts: bool = True) -> None:
        super().__init__(reason)
        self.status, self.msg, self.reason = status, msg, reason
        self.retry_after_s = retry_after_s
        self.counts = counts  # a failure toward a lockout (a refusal for rate or lockout is not)

    @property
    def retry_after(self) -> int:
        """Whole seconds for the ``Retry-After`` header (rounded up; 0 = none)."""
        return math.ceil(self.retry_after_s) if math.isfinite(self.retry_after_s) else 0


def address_key(host: str) -> str:
    """The key a source address is counted by: IPv4 as is, IPv6 by its /64 (one site's subnet)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def read_body(rfile: BinaryIO, content_length: str | None, transfer_encoding: str | None, limit: int) -> bytes:
    """The request body, bounded: refused on its declared length before a byte is read.

    At most ``limit`` bytes are ever read (and never more than the declared length). A body
    shorter than declared (the peer stopped sending) is refused too.
    """
    if transfer_encoding is not None:
        raise Refusal(400, MSG.ENROLMENT_BAD_REQUEST, "Transfer-Encoding is not supported; send a Content-Length")
    if content_length is None:
        raise Refusal(411, MSG.ENROLMENT_BAD_REQUEST, "request needs a Content-Length")
    declared = content_length.strip()
    if not declared.isdigit() or len(declared) > 12:
        raise Refusal(400, MSG.ENROLMENT_BAD_REQUEST, "Content-Length is not a number")
    length = int(declared)
    if length == 0:
        raise Refusal(400, MSG.ENROLMENT_BAD_REQUEST, "request body is empty")
    if length > limit:
        raise Refusal(413, MSG.ENROLMENT_BAD_REQUEST, f"request body larger than {limit} bytes")
    body = rfile.read(length)
    if len(body) != length:
        raise Refusal(400, MSG.ENROLMENT_BAD_REQUEST, "request body shorter than its Content-Length")
    return body


def parse(body: bytes, kind: type[T]) -> T:
    """``body`` as the typed request ``kind``, or a 400 refusal naming the offending field."""
    try:
        return schema.parse(kind, body, "request body")  # the shapes: schema.EnrolRequest, ReenrolRequest
    except FrameError as exc:
        raise Refusal(400, MSG.ENROLMENT_BAD_REQUEST, f"not a valid request: {exc}") from exc


@dataclass(frozen=True)
class Lockout:
    kind: str
    key: str
    seconds: float


class Guard:
    """Rate buckets and failure lockouts per address, token and box; safe to share between threads."""

    def __init__(self, s: EnrolmentLimitSettings, clock: Callable[[], float]) -> None:
        self.settings = s
        self._clock = clock
        self._lock = threading.Lock()
        rates = {"address": Rate(s.address_per_minute / 60, s.address_burst),
                 "token": Rate(s.token_per_minute / 60, s.token_burst),
                 "box": Rate(s.box_per_minute / 60, s.box_burst)}
        policy = LockoutPolicy(s.max_failures, s.failure_window_s, s.lockout_s)
        self._buckets = {kind: TokenBuckets[str](rate, s.max_tracked_keys) for kind, rate in rates.items()}
        self._lockouts = {kind: Lockouts[str](policy, s.max_tracked_keys) for kind in KINDS}

    def admit(self, kind: str, key: str, what: str) -> None:
        """Raise a ``Refusal`` if ``key`` is locked out or over its rate; otherwise count the request."""
        with self._lock:
            now = self._clock()
            left = self._lockouts[kind].locked(key, now)
            wait = 0.0 if left else self._buckets[kind].take(key, now)
        if left:
            raise Refusal(403, MSG.ENROLMENT_LOCKED_OUT,
                          f"{what} locked out after {self.settings.max_failures} refused attempts; "
                          f"try again in {math.ceil(left)} s", left, counts=False)
        if wait:
            raise Refusal(429, MSG.ENROLMENT_RATE_LIMITED,
                          f"too many requests from {what}; try again in {math.ceil(wait)} s", wait, counts=False)

    def failed(self, keys: list[tuple[str, str]]) -> list[Lockout]:
        """Count a refused attempt against each ``(kind, key)``; the lockouts it started."""
        with self._lock:
            now = self._clock()
            started = [(kind, key, self._lockouts[kind].fail(key, now)) for kind, key in keys]
        return [Lockout(kind, key, s) for kind, key, s in started if s > 0]

    def succeeded(self, kind: str, key: str) -> None:
        with self._lock:
            self._lockouts[kind].succeed(key, self._clock())
