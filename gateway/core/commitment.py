"""Storage Commitment push model (PS3.4 Annex J), the decisions only.

The modality asks (N-ACTION) whether the gateway takes responsibility for a list of
instances; the gateway answers later (N-EVENT-REPORT). Here, with no I/O: which
referenced instances are committed, which failed and why, and whether it is time to
report. An instance is *committed* only once the cloud has acknowledged it as durably
stored (spool state ACKNOWLEDGED, or PURGED after that). Until every reference is
settled the request stays pending, across outages and restarts (the adapter persists it).

    PENDING --all settled--> report --delivered--> REPORTED
       |                        |
       |                   not delivered: retry with backoff, bounded
       |                        v
       +-------------------> ABANDONED (after max attempts; alert)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.core.policy import backoff_s
from gateway.core.spool import ItemState

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance
REQUEST_COMMITMENT_ACTION = 1  # N-ACTION Action Type ID


class EventType(enum.IntEnum):
    """N-EVENT-REPORT Event Type ID (PS3.4 J.3.3)."""

    ALL_COMMITTED = 1
    FAILURES_EXIST = 2


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) values (PS3.4 J.3.3.1.1.2, C.4.2.1.4)."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119


class CommitmentState(enum.Enum):
    PENDING = "pending"  # not yet reported (waiting for the cloud, or for a delivery retry)
    REPORTED = "reported"  # the modality acknowledged our N-EVENT-REPORT
    ABANDONED = "abandoned"  # the report could not be delivered after bounded attempts


class Fate(enum.Enum):
    COMMITTED = "committed"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class SpooledCopy:
    """One spool item holding the referenced SOP Instance (an instance may be sent twice)."""

    sop_class_uid: str
    state: ItemState


@dataclass(frozen=True)
class Verdict:
    committed: tuple[Reference, ...]
    failed: tuple[tuple[Reference, FailureReason], ...]

    @property
    def event_type(self) -> EventType:
        return EventType.FAILURES_EXIST if self.failed else EventType.ALL_COMMITTED


@dataclass(frozen=True)
class Timing:
    absent_grace_s: float  # a reference not in the spool this long after the request: failed
    max_wait_s: float  # a reference not acknowledged by the cloud this long after: failed


_DONE = frozenset({ItemState.ACKNOWLEDGED, ItemState.PURGED})
_IN_PROGRESS = frozenset({ItemState.RECEIVED, ItemState.PACKED, ItemState.SENDING})


def fate(ref: Reference, copies: Sequence[SpooledCopy], waited_s: float,
         timing: Timing) -> tuple[Fate, FailureReason | None]:
    """What to say about one referenced instance after ``waited_s`` since the request."""
    same_class = [c for c in copies if c.sop_class_uid == ref.sop_class_uid]
    if any(c.state in _DONE for c in same_class):
        return Fate.COMMITTED, None
    if copies and not same_class:
        return Fate.FAILED, FailureReason.CLASS_INSTANCE_CONFLICT
    if any(c.state in _IN_PROGRESS for c in same_class):
        if waited_s >= timing.max_wait_s:
            return Fate.FAILED, FailureReason.PROCESSING_FAILURE
        return Fate.PENDING, None
    if same_class:  # every copy quarantined
        return Fate.FAILED, FailureReason.PROCESSING_FAILURE
    if waited_s >= timing.absent_grace_s:
        return Fate.FAILED, FailureReason.NO_SUCH_OBJECT_INSTANCE
    return Fate.PENDING, None


def decide(refs: Sequence[Reference], copies: Mapping[str, Sequence[SpooledCopy]], requested_at: float,
           now: float, timing: Timing) -> Verdict | None:
    """The verdict once every reference is settled; None while any is still pending."""
    committed: list[Reference] = []
    failed: list[tuple[Reference, FailureReason]] = []
    waited_s = now - requested_at
    for ref in refs:
        outcome, reason = fate(ref, copies.get(ref.sop_instance_uid, ()), waited_s, timing)
        if outcome is Fate.PENDING:
            return None
        if outcome is Fate.COMMITTED:
            committed.append(ref)
        else:
            assert reason is not None
            failed.append((ref, reason))
    return Verdict(tuple(committed), tuple(failed))


def after_failed_delivery(attempts: int, max_attempts: int, now: float, min_s: float, max_s: float,
                          jitter: float) -> tuple[CommitmentState, float]:
    """State and next attempt time after ``attempts`` failed deliveries of a report."""
    if attempts >= max_attempts:
        return CommitmentState.ABANDONED, now
    return CommitmentState.PENDING, now + backoff_s(attempts - 1, min_s, max_s, jitter)


@dataclass(frozen=True)
class ModalityAddress:
    ae_title: str
    host: str
    port: int


_MODALITY = re.compile(r"^(?P<ae>[\x20-\x3f\x41-\x5b\x5d-\x7e]{1,16})"  # default repertoire, no '@' or '\'
                       r"@(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:@\[\]]+):(?P<port>\d{1,5})$")


def parse_modality(entry: str) -> ModalityAddress:
    """``"CT1@10.0.0.5:104"`` (IPv6 in brackets) or ValueError."""
    match = _MODALITY.match(entry)
    if match is None or not 0 < int(match["port"]) < 65536 or match["ae"].strip() != match["ae"]:
        raise ValueError(f"expected AE@host:port, got {entry!r}")
    return ModalityAddress(match["ae"], match["host"].strip("[]"), int(match["port"]))


def validate_request(action_type_id: int | None, requested_class: str, requested_instance: str,
                     transaction_uid: str, refs: Sequence[Reference]) -> int:
    """The N-ACTION status to answer a request with: 0x0000 or a PS3.7 C.4 failure."""
    if action_type_id != REQUEST_COMMITMENT_ACTION:
        return 0x0123  # no such action
    if requested_class != STORAGE_COMMITMENT_PUSH_MODEL:
        return 0x0118  # no such SOP class
    if requested_instance != STORAGE_COMMITMENT_INSTANCE:
        return 0x0112  # no such SOP instance
    if not transaction_uid or not refs:
        return 0x0120  # missing attribute
    if not _is_uid(transaction_uid) or not all(_is_uid(r.sop_class_uid) and _is_uid(r.sop_instance_uid)
                                                for r in refs):
        return 0x0106  # invalid attribute value
    return 0x0000


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID.match(value) is not None


class Activity:
    """What the modality is doing on one association, to decide whether an N-EVENT-REPORT may go
    out on it without colliding with the modality's own requests (PS3.4 J.3.3 lets the report go
    on the requesting association; PS3.7 without asynchronous operations means a modality
    waiting for its C-STORE-RSP must not be sent our request instead).

    The association is *quiet* when no request of the modality awaits our response and nothing
    has arrived from it for ``quiet_s``. Not thread safe: the adapter holds a lock.
    """

    def __init__(self, now: float) -> None:
        self.last_received = now
        self.requests_open = 0

    def received(self, now: float) -> None:
        """Any PDU from the modality (a request may be starting to arrive)."""
        self.last_received = now

    def request_received(self, now: float) -> None:
        self.requests_open += 1
        self.last_received = now

    def response_sent(self) -> None:
        self.requests_open = max(0, self.requests_open - 1)

    def quiet(self, now: float, quiet_s: float) -> bool:
        return self.requests_open == 0 and now - self.last_received >= quiet_s
