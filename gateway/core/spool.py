"""The life of one spooled instance, as data.

    RECEIVED --Packed--> PACKED --SendStarted--> SENDING --CloudStored--> ACKNOWLEDGED
        |                   |                       |                          |
     PackFailed        CloudStored             CloudRejected           RetentionExpired
        v                   v                       v                          v
    QUARANTINED       ACKNOWLEDGED             QUARANTINED                  PURGED
        |
     Replayed --> RECEIVED            (PACKED/SENDING --SendExhausted--> QUARANTINED)
        |
     Discarded --> PURGED             (an operator's `mgw quarantine delete`)

    (PACKED/SENDING --FramesTooLarge or FramesOutdated--> RECEIVED: pack the item again)

The database holds the state; ``step`` says what the next state is and which
effects the service must carry out. The original blob is deleted only on the
way to PURGED, which only ACKNOWLEDGED can reach, or QUARANTINED by an
operator's explicit decision: the service never deletes an instance the cloud
has not confirmed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ItemState(enum.Enum):
    RECEIVED = "received"  # original durable in the spool, row committed, 0x0000 sent
    PACKED = "packed"  # sealed frames durable in the outbox
    SENDING = "sending"  # at least one chunk published; acked chunks recorded
    ACKNOWLEDGED = "acknowledged"  # the cloud proved durable storage; kept for retention
    PURGED = "purged"  # local copies deleted after retention
    QUARANTINED = "quarantined"  # set aside with a reason; the queue goes on


# Events: past-tense facts about one item.
@dataclass(frozen=True)
class Packed:
    pass


@dataclass(frozen=True)
class PackFailed:
    reason: str


@dataclass(frozen=True)
class SendStarted:
    pass


@dataclass(frozen=True)
class CloudStored:
    pass


@dataclass(frozen=True)
class CloudRejected:
    reason: str


@dataclass(frozen=True)
class RetentionExpired:
    pass


@dataclass(frozen=True)
class Replayed:
    pass


@dataclass(frozen=True)
class FramesTooLarge:
    """The broker's maximum packet size is below this item's frames: pack it again, smaller."""

    max_packet_bytes: int


@dataclass(frozen=True)
class FramesOutdated:
    """The item's frames were sealed in a wire version the cloud now refuses: pack it again."""

    version: int


@dataclass(frozen=True)
class SendExhausted:
    """Resent ``max_send_attempts`` rounds without progress while the cloud acked others."""

    reason: str


@dataclass(frozen=True)
class Discarded:
    """An operator deleted a quarantined item."""


@dataclass(frozen=True)
class ResendRequested:
    """Central operations asked the box to send an acknowledged item again (the ``resend`` remote
    command): the original is still held, so it is packed and sent anew, as a new transfer."""


Event = (Packed | PackFailed | SendStarted | CloudStored | CloudRejected | RetentionExpired | Replayed
         | FramesTooLarge | FramesOutdated | SendExhausted | Discarded | ResendRequested)


# Effects: what the service must do, imperative.
class Effect(enum.Enum):
    DELETE_OUTBOX = "delete_outbox"  # sealed frames are no longer needed
    DELETE_BLOB = "delete_blob"  # the original instance
    RECORD_ACK_TIME = "record_ack_time"  # starts the retention clock
    RECORD_REASON = "record_reason"


S = ItemState
E = Effect
TRANSITIONS: dict[tuple[ItemState, type], tuple[ItemState, tuple[Effect, ...]]] = {
    (S.RECEIVED, Packed): (S.PACKED, ()),
    (S.RECEIVED, PackFailed): (S.QUARANTINED, (E.RECORD_REASON,)),
    (S.PACKED, SendStarted): (S.SENDING, ()),
    (S.PACKED, CloudStored): (S.ACKNOWLEDGED, (E.RECORD_ACK_TIME, E.DELETE_OUTBOX)),
    (S.PACKED, CloudRejected): (S.QUARANTINED, (E.RECORD_REASON, E.DELETE_OUTBOX)),
    (S.SENDING, SendStarted): (S.SENDING, ()),
    (S.SENDING, CloudStored): (S.ACKNOWLEDGED, (E.RECORD_ACK_TIME, E.DELETE_OUTBOX)),
    (S.SENDING, CloudRejected): (S.QUARANTINED, (E.RECORD_REASON, E.DELETE_OUTBOX)),
    (S.ACKNOWLEDGED, CloudStored): (S.ACKNOWLEDGED, ()),  # acks are idempotent
    (S.ACKNOWLEDGED, RetentionExpired): (S.PURGED, (E.DELETE_BLOB,)),
    (S.PURGED, CloudStored): (S.PURGED, ()),
    (S.QUARANTINED, Replayed): (S.RECEIVED, ()),
    (S.PACKED, FramesTooLarge): (S.RECEIVED, (E.DELETE_OUTBOX,)),
    (S.SENDING, FramesTooLarge): (S.RECEIVED, (E.DELETE_OUTBOX,)),
    (S.PACKED, FramesOutdated): (S.RECEIVED, (E.DELETE_OUTBOX,)),
    (S.SENDING, FramesOutdated): (S.RECEIVED, (E.DELETE_OUTBOX,)),
    (S.PACKED, SendExhausted): (S.QUARANTINED, (E.RECORD_REASON, E.DELETE_OUTBOX)),
    (S.SENDING, SendExhausted): (S.QUARANTINED, (E.RECORD_REASON, E.DELETE_OUTBOX)),
    (S.QUARANTINED, Discarded): (S.PURGED, (E.DELETE_BLOB,)),
    (S.ACKNOWLEDGED, ResendRequested): (S.RECEIVED, ()),
}

TERMINAL = frozenset({S.PURGED})


@dataclass(frozen=True)
class Step:
    state: ItemState
    effects: tuple[Effect, ...]


def step(state: ItemState, event: Event) -> Step:
    """The next state and the effects, or ``IllegalTransitionError``."""
    from gateway.core.errors import IllegalTransitionError

    try:
        new_state, effects = TRANSITIONS[(state, type(event))]
    except KeyError:
        raise IllegalTransitionError(
            f"{type(event).__name__} is not allowed in state {state.name}"
        ) from None
    return Step(new_state, effects)


def allowed(state: ItemState, event_type: type) -> bool:
    return (state, event_type) in TRANSITIONS
