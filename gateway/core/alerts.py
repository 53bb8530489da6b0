"""The alert lifecycle's decisions: severity, site outages, silences, maintenance, acknowledgement. Pure.

``core.fleet.evaluate`` says which conditions hold for one box; this module decides what the
fleet service makes of them across the fleet (docs/operations.md, "Alerts"):

* every kind has one severity (``SEVERITY``);
* a site outage: when at least ``min_boxes`` boxes of a site, or all of a site's boxes (two or
  more), went offline within ``window_s`` of each other, the site gets one ``site_offline``
  alert and the boxes' ``box_offline`` alerts are grouped under it (``site_outages``). The
  outage lasts while any of its boxes is still offline; a box of the site that goes offline
  meanwhile joins it;
* a silence (box, site and/or kind, from/until, who and why) and a maintenance window (a site
  or a box, start/end) mark matching open alerts suppressed while they are in force: the
  alert is recorded and listed, only flagged (``suppression``);
* an acknowledgement names who and why (``ack``), and says what it changed for the audit.

Time is always passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.core.errors import AlertRequestError
from gateway.core.fleet import AlertKind, BoxState

MAX_NOTE = 1000  # characters of an acknowledgement note or a silence/maintenance reason
MAX_NAME = 200  # characters of who acknowledged or created a silence


class Severity(enum.StrEnum):
    CRITICAL = "critical"  # someone should act now: images are not reaching the cloud, or soon will not
    WARNING = "warning"  # act within the working day
    INFO = "info"  # worth knowing; may be normal (a modality not used today)


SEVERITY: dict[AlertKind, Severity] = {
    AlertKind.SITE_OFFLINE: Severity.CRITICAL,
    AlertKind.BOX_OFFLINE: Severity.CRITICAL,
    AlertKind.DISK_FULL: Severity.CRITICAL,
    AlertKind.BACKLOG_AGE: Severity.WARNING,
    AlertKind.CERT_EXPIRY: Severity.WARNING,
    AlertKind.DEAD_LETTERS: Severity.WARNING,
    AlertKind.COMMAND_REFUSED: Severity.WARNING,
    AlertKind.QUARANTINE_NOT_EMPTY: Severity.WARNING,
    AlertKind.MODALITY_SILENT: Severity.INFO,
}


@dataclass(frozen=True)
class Silence:
    """Alerts matching every non-empty field of ``box_id``, ``site`` and ``kind`` are suppressed
    from ``starts_at`` until ``ends_at`` (expiring one sets ``ends_at`` to the moment)."""

    id: int
    box_id: str
    site: str
    kind: str  # an AlertKind value, or "" for any
    starts_at: float
    ends_at: float
    created_by: str
    reason: str
    created_at: float


@dataclass(frozen=True)
class Maintenance:
    """A window of planned work on a site (``box_id`` "") or on one box: alerts of it are suppressed."""

    id: int
    site: str
    box_id: str
    starts_at: float
    ends_at: float
    created_by: str
    reason: str
    created_at: float


def _text(value: str, what: str, limit: int, *, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise AlertRequestError(f"{what} is required")
    if len(value) > limit:
        raise AlertRequestError(f"{what} is longer than {limit} characters")
    return value


def check_silence(box_id: str, site: str, kind: str, starts_at: float, ends_at: float, who: str,
                  reason: str) -> tuple[str, str, str, str, str]:
    """The fields of a new silence, trimmed; ``AlertRequestError`` if it would match every alert,
    names an unknown kind, ends before it starts, or says not who or why."""
    box_id, site, kind = box_id.strip(), site.strip(), kind.strip()
    if not (box_id or site or kind):
        raise AlertRequestError("a silence must name a box, a site or a kind")
    if kind and kind not in set(AlertKind):
        raise AlertRequestError(f"unknown alert kind {kind!r}")
    if not ends_at > starts_at:
        raise AlertRequestError("a silence must end after it starts")
    return (box_id, site, kind, _text(who, "who", MAX_NAME, required=True),
            _text(reason, "reason", MAX_NOTE, required=True))


def check_maintenance(site: str, box_id: str, starts_at: float, ends_at: float, who: str,
                      reason: str) -> tuple[str, str, str, str]:
    """The fields of a new maintenance window, trimmed: exactly one of ``site`` and ``box_id``."""
    site, box_id = site.strip(), box_id.strip()
    if bool(site) == bool(box_id):
        raise AlertRequestError("a maintenance window is for a site or for a box")
    if not ends_at > starts_at:
        raise AlertRequestError("a maintenance window must end after it starts")
    return (site, box_id, _text(who, "who", MAX_NAME, required=True),
            _text(reason, "reason", MAX_NOTE, required=False))


def silence_matches(s: Silence, box_id: str, site: str, kind: str, at: float) -> bool:
    """``s`` is in force at ``at`` and each of its non-empty matchers equals the alert's."""
    return (s.starts_at <= at < s.ends_at and (not s.box_id or s.box_id == box_id)
            and (not s.site or s.site == site) and (not s.kind or s.kind == kind))


def maintenance_covers(m: Maintenance, box_id: str, site: str, at: float) -> bool:
    """``m`` is in force at ``at`` and is for this box, or for its site (a site alert has box "")."""
    return m.starts_at <= at < m.ends_at and ((bool(m.box_id) and m.box_id == box_id)
                                               or (bool(m.site) and m.site == site))


def suppression(box_id: str, site: str, kind: str, at: float, silences: Iterable[Silence],
                windows: Iterable[Maintenance]) -> str:
    """What suppresses an alert at ``at``: "maintenance:<id>", "silence:<id>" (the lowest id of
    each; maintenance first), or "" when nothing does."""
    for m in sorted(windows, key=lambda m: m.id):
        if maintenance_covers(m, box_id, site, at):
            return f"maintenance:{m.id}"
    for s in sorted(silences, key=lambda s: s.id):
        if silence_matches(s, box_id, site, kind, at):
            return f"silence:{s.id}"
    return ""


def _clustered(offline: list[BoxState], window_s: float) -> list[BoxState]:
    """The largest group of ``offline`` whose going-offline times lie within ``window_s`` (the
    earliest such group on a tie)."""
    ordered = sorted(offline, key=lambda b: (b.changed_at, b.box_id))
    best: list[BoxState] = []
    start = 0
    for end in range(len(ordered)):
        while ordered[end].changed_at - ordered[start].changed_at > window_s:
            start += 1
        if end + 1 - start > len(best):
            best = ordered[start:end + 1]
    return best


def site_outages(boxes: Iterable[BoxState], previous: Mapping[str, frozenset[str]], min_boxes: int,
                 window_s: float) -> dict[str, frozenset[str]]:
    """The sites in an outage now, each with its offline boxes.

    An outage continues while any box of ``previous[site]`` is still offline, and then holds
    every offline box of the site. A new one starts when at least ``min_boxes`` of a site's
    boxes, or all of them (two or more), went offline within ``window_s`` of each other.
    Boxes without a site are never grouped."""
    by_site: dict[str, list[BoxState]] = {}
    for b in boxes:
        if b.site:
            by_site.setdefault(b.site, []).append(b)
    out: dict[str, frozenset[str]] = {}
    for site, members in by_site.items():
        offline = [b for b in members if not b.online]
        ids = frozenset(b.box_id for b in offline)
        if previous.get(site, frozenset()) & ids:
            out[site] = ids
            continue
        group = _clustered(offline, window_s)
        everyone = len(group) == len(members) >= 2
        if group and (len(group) >= max(1, min_boxes) or everyone):
            out[site] = frozenset(b.box_id for b in group)
    return out


def outage_detail(boxes: frozenset[str], shown: int = 20) -> str:
    """The site alert's text: how many boxes, and their ids (the first ``shown``)."""
    names = sorted(boxes)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} boxes offline: {', '.join(names[:shown])}{more}"


@dataclass(frozen=True)
class Acknowledgement:
    acked_at: float | None
    acked_by: str
    note: str


def ack(before: Acknowledgement, who: str, note: str, now: float) -> dict[str, tuple[object, object]]:
    """What acknowledging an alert changes: ``{field: (old, new)}``, empty when it was already
    acknowledged by ``who`` with this note. A resolved alert can still be acknowledged (an
    operator confirms they saw it); ``who`` is required, the note is optional."""
    who = _text(who, "who", MAX_NAME, required=True)
    note = _text(note, "note", MAX_NOTE, required=False)
    if before.acked_at is not None and (before.acked_by, before.note) == (who, note):
        return {}
    return {"acked_at": (before.acked_at, now), "acked_by": (before.acked_by, who), "ack_note": (before.note, note)}
