"""Pure timing and ordering decisions; ``now`` and randomness are parameters."""

from __future__ import annotations


def backoff_s(attempt: int, min_s: float, max_s: float, jitter: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random.

    ``jitter`` is a uniform sample in [0, 1) supplied by the caller.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(max_s, min_s * float(2 ** min(attempt, 32)))
    return ceiling / 2 + ceiling / 2 * jitter


def ack_timeout_s(base_s: float, rounds: int, max_s: float = 600.0) -> float:
    """How long to wait for the cloud before resending; grows with each silent round."""
    return min(max_s, base_s * float(2 ** min(rounds, 16)))


def retention_expired(acked_at: float, now: float, retention_hours: float) -> bool:
    return now - acked_at >= retention_hours * 3600.0


def disk_refuses(used_percent: float, high_water: float, low_water: float, refusing: bool) -> bool:
    """Hysteresis: start refusing above ``high_water``, accept again below ``low_water``."""
    if refusing:
        return used_percent >= low_water
    return used_percent >= high_water


def delivery_exhausted(silent_rounds: int, max_rounds: int, cloud_acked_others_since: bool) -> bool:
    """Quarantine a transfer resent ``max_rounds`` times without progress, but only while the
    cloud is demonstrably alive (it acknowledged other transfers meanwhile): an outage of the
    cloud or the link must never send the queue to quarantine."""
    return silent_rounds >= max_rounds and cloud_acked_others_since


def pack_now(quiet_for_s: float, deferred_s: float, queued_bytes: int, *, quiet_s: float, max_defer_s: float,
             ahead_bytes: int) -> bool:
    """Whether the packer takes its next item now, while instances may still be arriving.

    Reception comes first (the modality must not wait for us), so packing waits for a quiet
    moment (``quiet_s`` without a C-STORE) or at most ``max_defer_s``; but the uplink must not
    idle while a study arrives, so it packs at once while less than ``ahead_bytes`` is packed and
    unacknowledged (``queued_bytes``): sending starts with the first instance, and the packer
    keeps just ahead of the link.
    """
    return quiet_for_s >= quiet_s or deferred_s >= max_defer_s or queued_bytes < ahead_bytes
