"""Fleet state from birth, death and heartbeat messages, and the alert rules: pure.

Online/offline follows Sparkplug B's idea: a box publishes a *birth* on every connect and
registers a *death* as its MQTT last will, both carrying ``bd_seq``, a number that grows with
every connection. A death whose ``bd_seq`` is lower than the last birth's is stale (the
broker noticed an old connection's end after the box was back) and is ignored.
Message formats: docs/protocol.md, "Fleet telemetry".
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.core import schema
from gateway.core.errors import FrameError
from gateway.core.utilisation import OpeningHours, silent_since

TELEMETRY_VERSION = 1
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


class MessageKind(enum.StrEnum):
    BIRTH = "birth"
    DEATH = "death"
    HEARTBEAT = "heartbeat"


class AlertKind(enum.StrEnum):
    BOX_OFFLINE = "box_offline"
    BACKLOG_AGE = "backlog_age"
    DISK_FULL = "disk_full"
    CERT_EXPIRY = "cert_expiry"
    MODALITY_SILENT = "modality_silent"
    QUARANTINE_NOT_EMPTY = "quarantine_not_empty"
    DEAD_LETTERS = "dead_letters"  # the cloud set aside messages of this box that it could not process
    COMMAND_REFUSED = "command_refused"  # the box refused a remote command frame (forged, replayed, expired...)
    SITE_OFFLINE = "site_offline"  # many boxes of one site went offline together (core.alerts.site_outages)


@dataclass(frozen=True)
class Telemetry:
    kind: MessageKind
    box_id: str
    bd_seq: int
    body: dict[str, Any]


@dataclass(frozen=True)
class BoxState:
    box_id: str
    online: bool
    bd_seq: int
    first_seen: float
    last_seen: float  # last birth or heartbeat received
    changed_at: float  # when ``online`` last changed
    health: dict[str, Any] = field(default_factory=dict)  # the last heartbeat's body
    site: str = ""
    version: str = ""


@dataclass(frozen=True)
class AlertRules:
    offline_after_s: float
    backlog_age_s: float
    disk_used_percent: float
    cert_expiry_days: float
    silent_modality_s: float
    hours: OpeningHours  # the fleet's own opening hours
    site_hours: Mapping[str, OpeningHours] = field(default_factory=dict)  # a site's own ([fleet.sites.<id>])

    def hours_for(self, site: str) -> OpeningHours:
        """The opening hours a box of ``site`` is judged by (silence counts only those hours)."""
        return self.site_hours.get(site, self.hours)


_KINDS: dict[type, MessageKind] = {
    schema.Birth: MessageKind.BIRTH, schema.Death: MessageKind.DEATH, schema.Heartbeat: MessageKind.HEARTBEAT}


def decode(expected: str, topic_box: str, payload: bytes) -> Telemetry:
    """A telemetry message parsed into typed values (``core.schema``); ``FrameError`` with the
    reason if it is not one, never another exception. ``expected`` is the topic leaf (``health``:
    a heartbeat; ``state``: a birth or a death) or a ``MessageKind`` the message must be."""
    parsed: schema.Birth | schema.Death | schema.Heartbeat
    if expected in ("health", MessageKind.HEARTBEAT):
        parsed = schema.parse(schema.Heartbeat, payload, "heartbeat")
    elif expected in ("state", MessageKind.BIRTH, MessageKind.DEATH):
        parsed = schema.parse_state(payload)
    else:
        raise FrameError(f"{expected}: not a telemetry topic")
    kind = _KINDS[type(parsed)]
    if expected in set(MessageKind) and kind != expected:
        raise FrameError(f"{expected}: the message is a {kind.value}")
    if parsed.box_id != topic_box:
        raise FrameError(f"{kind.value}: box id differs from the topic's")
    body = schema.to_builtins(parsed)
    return Telemetry(kind, parsed.box_id, parsed.bd_seq, body)


def health_of(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored heartbeat body re-checked (it may predate the checks): the body, or {} if unusable."""
    try:
        return schema.to_builtins(schema.parse(schema.Heartbeat, json.dumps(stored).encode(), "stored health"))
    except (FrameError, TypeError, ValueError):
        return {}


def encode(kind: MessageKind, box_id: str, bd_seq: int, **fields: Any) -> bytes:
    return json.dumps({"v": TELEMETRY_VERSION, "kind": kind.value, "box_id": box_id, "bd_seq": bd_seq, **fields},
                      separators=(",", ":"), sort_keys=True).encode()


def apply(state: BoxState | None, msg: Telemetry, now: float) -> BoxState | None:
    """The box's state after ``msg``; the same object when the message is stale."""
    if state is None:
        if msg.kind is MessageKind.DEATH:
            return None  # a death of a box we never saw alive says nothing
        state = BoxState(msg.box_id, False, msg.bd_seq, now, now, now)
    if msg.bd_seq < state.bd_seq:
        return state
    if msg.kind is MessageKind.DEATH:
        return replace(state, online=False, changed_at=now if state.online else state.changed_at)
    changed = now if not state.online else state.changed_at
    body = msg.body if msg.kind is MessageKind.HEARTBEAT else state.health
    return replace(state, online=True, bd_seq=msg.bd_seq, last_seen=now, changed_at=changed, health=body,
                   site=str(msg.body.get("site") or state.site), version=str(msg.body.get("version") or state.version))


def timed_out(state: BoxState, now: float, offline_after_s: float) -> BoxState:
    """No birth nor heartbeat for ``offline_after_s``: offline, as if its death had come."""
    if state.online and now - state.last_seen > offline_after_s:
        return replace(state, online=False, changed_at=now)
    return state


def _num(doc: dict[str, Any], *path: str) -> float | None:
    value: Any = doc
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if type(value) in (int, float) else None


def evaluate(state: BoxState, rules: AlertRules, now: float) -> dict[tuple[AlertKind, str], str]:
    """Active alerts of one box: ``{(kind, subject): detail}``; subject is "" or a modality."""
    out: dict[tuple[AlertKind, str], str] = {}
    if not state.online:
        out[(AlertKind.BOX_OFFLINE, "")] = f"offline since {state.changed_at:.0f}"
        return out  # the rest would be stale figures
    h = state.health
    age = _num(h, "backlog", "oldest_unacked_age_s")
    if age is not None and age > rules.backlog_age_s:
        out[(AlertKind.BACKLOG_AGE, "")] = f"oldest unacknowledged item {age / 60:.0f} min old"
    used = _num(h, "disk", "used_percent")
    if used is not None and used > rules.disk_used_percent:
        out[(AlertKind.DISK_FULL, "")] = f"disk {used:.1f}% used"
    not_after = _num(h, "cert_not_after")
    if not_after is not None and not_after - now < rules.cert_expiry_days * 86400:
        out[(AlertKind.CERT_EXPIRY, "")] = f"certificate expires in {(not_after - now) / 86400:.1f} days"
    quarantined = _num(h, "quarantine_items")
    if quarantined:
        out[(AlertKind.QUARANTINE_NOT_EMPTY, "")] = f"{quarantined:.0f} items quarantined"
    raw = h.get("last_study")
    last: dict[Any, Any] = raw if isinstance(raw, dict) else {}
    for modality, when in sorted(last.items(), key=lambda kv: str(kv[0])):
        if not (isinstance(modality, str) and _MODALITY.match(modality) and type(when) in (int, float)):
            continue
        silent = silent_since(float(when), state.first_seen, now, rules.hours_for(state.site))
        if silent > rules.silent_modality_s:
            out[(AlertKind.MODALITY_SILENT, modality)] = f"no study for {silent / 3600:.1f} opening hours"
    return out
