"""The console's fleet overview at scale: counts, facets, a filtered, sorted page of compact rows, deltas.

Framework-free: ``starlette_app.py`` parses a request into a ``BoxQuery`` (with ``http.Query``)
and serves what ``Overview`` answers. Every function takes ``visible`` (site -> may the request's
principal see it): a box, alert or facet of a site it may not see is never counted nor listed.

Rows are compact and change only when what they show changes: an online box carries no
last-seen time (the heartbeat every 30 s would change every row), backlog age is in whole
minutes, disk in whole percent, certificate expiry in whole days. ``Revisions`` numbers each
row's content: a row's revision is the fleet revision at which it last changed, so a refresh
can ask for the rows of its page changed since the revision it holds (``since``), or send the
page's ETag back and get 304 when nothing changed.

Problems first is the default order: the most severe open, unsilenced alert, then offline,
then backlogged, then the box id. Paging: ``limit`` 1..500 rows (100 by default) from
``offset``; ``total`` says how many matched.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.cloud.fleet.store import Alert, AlertState
from gateway.config import FleetSettings, SiteSettings
from gateway.core.alerts import Severity
from gateway.core.errors import RequestError
from gateway.core.fleet import BoxState

Visible = Callable[[str], bool]
Row = dict[str, Any]

FLAGS = ("online", "offline", "degraded", "backlogged", "cert_expiring", "alerting")
SORTS = ("problems", "box", "site", "region", "status", "version", "backlog", "disk", "cert", "since")
GROUPS = ("site", "region", "modality", "status", "version")
ORDERS = ("asc", "desc")
DEFAULT_LIMIT, MAX_LIMIT = 100, 500
MAX_ALERTS = 2000
RANK = {Severity.CRITICAL.value: 3, Severity.WARNING.value: 2, Severity.INFO.value: 1, "": 0}
TEXT = re.compile(r"^[^\x00-\x1f\x7f]{0,128}$")  # a search or a facet value: printable text
_MODALITY_CACHE_S = 60.0
ROWS_CACHE_S = 1.0
_DAY_S = 86400.0


def everything(site: str) -> bool:
    """The ``visible`` of a request without a principal (a server without login)."""
    return True


@dataclass(frozen=True)
class BoxQuery:
    """What a box listing asks for, parsed (``http.Query`` refuses anything malformed first)."""

    q: str = ""
    site: str | None = None
    region: str | None = None
    modality: str | None = None
    status: str | None = None  # one of FLAGS
    version: str | None = None
    sort: str = "problems"
    order: str = "asc"
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    group: str | None = None  # one of GROUPS: answer groups with counts, not rows
    since: int | None = None  # a revision: only the page's rows changed after it

    def key(self) -> str:
        """The query's identity, for the ETag. Without ``since``: a delta applied to what the browser
        held is the same page, so a refresh sends the ETag of its last answer and gets 304 when
        the fleet's revision has not moved."""
        return json.dumps([self.q, self.site, self.region, self.modality, self.status, self.version, self.sort,
                           self.order, self.offset, self.limit, self.group])


def site_zone(fleet: FleetSettings, site: str) -> str:
    """The site's IANA zone name for the browser, or "" (then the browser shows the user's)."""
    rules = fleet.sites.get(site, SiteSettings())
    name = rules.time_zone or fleet.time_zone
    if name:
        return name
    minutes = fleet.utc_offset_minutes
    if minutes % 60 == 0 and abs(minutes) <= 14 * 60:  # Etc/GMT's sign is inverted: Etc/GMT-8 is UTC+8
        return "UTC" if minutes == 0 else f"Etc/GMT{-minutes // 60:+d}"
    return ""


def _num(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) and math.isfinite(value) else None


def make_row(state: BoxState, alerts: list[Alert], modalities: Iterable[str], fleet: FleetSettings,
             now: float) -> Row:
    """The compact row of one box. Nothing in it changes with a mere heartbeat of a quiet box."""
    h = state.health
    backlog: dict[str, Any] = h["backlog"] if isinstance(h.get("backlog"), dict) else {}
    disk: dict[str, Any] = h["disk"] if isinstance(h.get("disk"), dict) else {}
    items, age = _num(backlog.get("items")), _num(backlog.get("oldest_unacked_age_s"))
    used, not_after = _num(disk.get("used_percent")), _num(h.get("cert_not_after"))
    loud = [a for a in alerts if not a.suppressed_by]
    severity = max((a.severity.value for a in loud), key=RANK.__getitem__, default="")
    cert_days = None if not_after is None else math.floor((not_after - now) / _DAY_S)
    flags = []
    if age is not None and age >= fleet.backlog_alert_minutes * 60:
        flags.append("backlogged")
    if cert_days is not None and cert_days < fleet.cert_alert_days:
        flags.append("cert_expiring")
    if alerts:
        flags.append("alerting")
    status = "offline" if not state.online else "degraded" if RANK[severity] >= 2 else "online"
    site = state.site or state.box_id
    return {"id": state.box_id, "site": site, "region": fleet.sites.get(site, SiteSettings()).region,
            "mod": sorted(set(modalities)), "status": status, "sev": severity,
            "alerts": sorted({a.kind.value for a in alerts}), "muted": bool(alerts) and not loud,
            "flags": flags, "ver": state.version, "backlog": None if items is None else int(items),
            "oldest_min": None if age is None else int(age // 60), "disk": None if used is None else round(used),
            "cert_days": cert_days, "since": round(state.changed_at),
            "seen": None if state.online else round(state.last_seen)}


def matches(row: Row, q: BoxQuery) -> bool:
    if q.site is not None and row["site"] != q.site:
        return False
    if q.region is not None and row["region"] != q.region:
        return False
    if q.version is not None and row["ver"] != q.version:
        return False
    if q.modality is not None and q.modality not in row["mod"]:
        return False
    if q.status is not None and not _has_flag(row, q.status):
        return False
    if q.q:
        needle = q.q.strip().lower()
        hay = " ".join([row["id"], row["site"], row["region"], row["ver"], *row["mod"], *row["alerts"]]).lower()
        return all(word in hay for word in needle.split())
    return True


def _has_flag(row: Row, flag: str) -> bool:
    if flag in ("online", "offline", "degraded"):
        return bool(row["status"] == flag if flag != "online" else row["status"] != "offline")
    return flag in row["flags"]


def _sort_key(sort: str) -> Callable[[Row], Any]:
    big = 1e18
    keys: dict[str, Callable[[Row], Any]] = {
        "problems": lambda r: (-RANK[r["sev"]] if not r["muted"] else 0, r["status"] != "offline",
                               "backlogged" not in r["flags"], r["id"]),
        "box": lambda r: r["id"],
        "site": lambda r: (r["site"], r["id"]),
        "region": lambda r: (r["region"], r["site"], r["id"]),
        "status": lambda r: ({"offline": 0, "degraded": 1, "online": 2}[r["status"]], r["id"]),
        "version": lambda r: (r["ver"], r["id"]),
        "backlog": lambda r: (-(r["backlog"] or 0), r["id"]),
        "disk": lambda r: (-(r["disk"] or 0), r["id"]),
        "cert": lambda r: (big if r["cert_days"] is None else r["cert_days"], r["id"]),
        "since": lambda r: (-r["since"], r["id"]),
    }
    return keys[sort]


def counts(rows: Iterable[Row]) -> dict[str, int]:
    out = dict.fromkeys(("total", *FLAGS), 0)
    for r in rows:
        out["total"] += 1
        for flag in FLAGS:
            out[flag] += _has_flag(r, flag)
    return out


def _group_values(row: Row, group: str) -> list[str]:
    if group == "modality":
        return list(row["mod"]) or [""]
    return [{"site": row["site"], "region": row["region"], "status": row["status"], "version": row["ver"]}[group]]


def facets(rows: list[Row]) -> dict[str, list[dict[str, Any]]]:
    """Per facet, each value with how many boxes have it, most first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for group in GROUPS:
        tally: dict[str, int] = {}
        for r in rows:
            for value in _group_values(r, group):
                tally[value] = tally.get(value, 0) + 1
        out[group] = [{"key": k, "count": n} for k, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))]
    return out


def groups(rows: list[Row], group: str) -> list[dict[str, Any]]:
    """Rows grouped by a facet: count, offline, alerting and the worst severity; worst groups first."""
    acc: dict[str, dict[str, Any]] = {}
    for r in rows:
        for value in _group_values(r, group):
            g = acc.setdefault(value, {"key": value, "count": 0, "offline": 0, "alerting": 0, "sev": ""})
            g["count"] += 1
            g["offline"] += r["status"] == "offline"
            g["alerting"] += bool(r["alerts"])
            if not r["muted"] and RANK[r["sev"]] > RANK[g["sev"]]:
                g["sev"] = r["sev"]
    return sorted(acc.values(), key=lambda g: (-RANK[g["sev"]], -g["offline"], -g["alerting"], g["key"]))


class Revisions:
    """Numbers the rows' contents. Thread safe.

    ``base`` is this process's start in milliseconds, so that a revision a browser kept from a
    previous process is recognised as foreign (then it gets whole pages again)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self.base = int(clock() * 1000)
        self.revision = self.base
        self._rows: dict[str, tuple[str, int]] = {}

    def update(self, rows: Iterable[Row]) -> int:
        """Record ``rows`` (every box's); the fleet revision after."""
        with self._lock:
            seen = set()
            for row in rows:
                text = json.dumps(row, sort_keys=True, separators=(",", ":"))
                seen.add(row["id"])
                before = self._rows.get(row["id"])
                if before is None or before[0] != text:
                    self.revision += 1
                    self._rows[row["id"]] = (text, self.revision)
            for gone in [k for k in self._rows if k not in seen]:
                del self._rows[gone]
                self.revision += 1
            return self.revision

    def of(self, box_id: str) -> int:
        with self._lock:
            entry = self._rows.get(box_id)
            return self.revision if entry is None else entry[1]

    def knows(self, revision: int) -> bool:
        return self.base <= revision <= self.revision


class Source:
    """What the overview reads: the registry, the open alerts and the alert listing, the fleet settings
    and the exam store's modalities per box (``http.FleetView`` provides them)."""

    def __init__(self, fleet: Callable[[], FleetSettings], registry: Callable[[], list[BoxState]],
                 open_alerts: Callable[[], list[Alert]], list_alerts: Callable[..., list[Alert]],
                 box_modalities: Callable[[], list[dict[str, Any]]]) -> None:
        self._fleet, self.registry, self.open_alerts = fleet, registry, open_alerts
        self.list_alerts, self.box_modalities = list_alerts, box_modalities

    @property
    def fleet(self) -> FleetSettings:
        """The fleet settings now (a site's rules announced by its boxes may have joined them)."""
        return self._fleet()


class Overview:
    """The overview documents over a ``Source``. Thread safe (each call reads a consistent copy)."""

    def __init__(self, source: Source, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.revisions = Revisions(clock)
        self._clock = clock
        self._mods: dict[str, set[str]] = {}
        self._mods_at = -math.inf
        self._mods_lock = threading.Lock()
        self._rows_lock = threading.Lock()
        self._rows_at = -math.inf
        self._every: list[Row] = []
        self._revision = self.revisions.revision

    def _modalities(self) -> dict[str, set[str]]:
        """Per box, the modalities of its exam records (read at most once a minute: a GROUP BY over exams)."""
        with self._mods_lock:
            if self._clock() - self._mods_at >= _MODALITY_CACHE_S:
                mods: dict[str, set[str]] = {}
                for m in self.source.box_modalities():
                    mods.setdefault(m["box_id"], set()).add(m["modality"])
                self._mods, self._mods_at = mods, self._clock()
            return self._mods

    def rows(self, now: float, visible: Visible) -> tuple[int, list[Row]]:
        """The fleet revision and the rows of every box ``visible`` lets the request see. The rows
        of the whole fleet are built at most once per ``ROWS_CACHE_S`` (a refresh asks for the
        overview and a page or two at once: 20-50 ms each at 2,000 boxes)."""
        with self._rows_lock:
            if self._clock() - self._rows_at >= ROWS_CACHE_S:
                self._every = self._build(now)
                self._rows_at = self._clock()
                self._revision = self.revisions.update(self._every)
            revision, every = self._revision, self._every
        return revision, [r for r in every if visible(r["site"])]

    def _build(self, now: float) -> list[Row]:
        by_box: dict[str, list[Alert]] = {}
        for a in self.source.open_alerts():
            if a.box_id:
                by_box.setdefault(a.box_id, []).append(a)
        mods = self._modalities()
        every = []
        for s in self.source.registry():
            last = s.health.get("last_study")
            seen = [m for m in last if isinstance(m, str)] if isinstance(last, dict) else []
            every.append(make_row(s, by_box.get(s.box_id, []), {*seen, *mods.get(s.box_id, ())}, self.source.fleet,
                                  now))
        return every

    def overview(self, now: float, visible: Visible) -> dict[str, Any]:
        revision, rows = self.rows(now, visible)
        sites = sorted({r["site"] for r in rows})
        return {"now": now, "revision": revision, "counts": counts(rows), "facets": facets(rows),
                "sites": {s: {"region": self.source.fleet.sites.get(s, SiteSettings()).region,
                              "tz": site_zone(self.source.fleet, s)} for s in sites}}

    def boxes(self, q: BoxQuery, now: float, visible: Visible) -> dict[str, Any]:
        """One page of rows (or, with ``q.group``, the groups), problems first unless sorted otherwise."""
        revision, rows = self.rows(now, visible)
        chosen = [r for r in rows if matches(r, q)]
        if q.group is not None:
            return {"now": now, "revision": revision, "total": len(chosen), "group": q.group,
                    "groups": groups(chosen, q.group)}
        chosen.sort(key=_sort_key(q.sort), reverse=q.order == "desc")
        page = chosen[q.offset:q.offset + q.limit]
        delta = q.since is not None and self.revisions.knows(q.since)
        shown = [r for r in page if self.revisions.of(r["id"]) > (q.since or 0)] if delta else page
        return {"now": now, "revision": revision, "total": len(chosen), "offset": q.offset, "limit": q.limit,
                "delta": delta, "ids": [r["id"] for r in page], "rows": shown}

    # -- alerts, grouped --------------------------------------------------------------------------------
    def alerts(self, state: AlertState, severity: Severity | None, site: str | None, days: float, limit: int,
               now: float, visible: Visible) -> dict[str, Any]:
        """Alerts with a site outage as one row and its boxes beneath; the worst, unacknowledged first."""
        listed = self.source.list_alerts(state=state, severity=severity, site=site, since=now - days * _DAY_S,
                                         grouped=True, limit=limit)
        rows = [_alert_row(a, visible) for a in listed if visible(a.site or a.subject)]
        rows.sort(key=lambda a: (a["cleared_at"] is not None, -RANK[a["severity"]] if not a["suppressed_by"] else 0,
                                 a["acked_at"] is not None, -a["raised_at"], a["id"]))
        return {"now": now, "revision": _alerts_revision(rows), "alerts": rows}


def etag(revision: int, scope: str, key: str) -> str:
    """The ETag of a listing or overview: its fleet revision, whose scope asked, and what."""
    return '"' + hashlib.sha256(f"{revision}|{scope}|{key}".encode()).hexdigest()[:20] + '"'


def _alerts_revision(rows: list[dict[str, Any]]) -> int:
    """A number that changes when the listing shows something new: not when an open alert's
    ``last_seen`` (touched every minute while it holds) or its detail's figures move on."""
    def stable(a: dict[str, Any]) -> list[Any]:
        return [a["id"], a["severity"], a["cleared_at"], a["acked_at"], a["acked_by"], a["ack_note"],
                a["suppressed_by"], [stable(c) for c in a["children"]]]
    digest = hashlib.sha256(json.dumps([stable(a) for a in rows]).encode()).digest()
    return int.from_bytes(digest[:6], "big")


def _alert_row(a: Alert, visible: Visible) -> dict[str, Any]:
    children = [_alert_row(c, visible) for c in a.children if visible(c.site)]
    return {"id": a.id, "box_id": a.box_id, "site": a.site, "kind": a.kind.value, "subject": a.subject,
            "detail": a.detail, "severity": a.severity.value, "raised_at": a.raised_at, "last_seen": a.last_seen,
            "cleared_at": a.cleared_at, "acked_at": a.acked_at, "acked_by": a.acked_by, "ack_note": a.ack_note,
            "suppressed_by": a.suppressed_by, "boxes": len(children), "children": children}


def parse_box_query(values: Mapping[str, str], choice: Callable[[str, tuple[str, ...], str | None], str | None],
                    integer: Callable[[str, int, int, int], int]) -> BoxQuery:
    """A ``BoxQuery`` from a request's parameters (``values``: name -> raw text, already length-checked)."""
    text = {}
    for name in ("q", "site", "region", "modality", "version"):
        value = values.get(name)
        if value is not None and not TEXT.fullmatch(value):
            raise RequestError(f"{name!r} must be printable text")
        text[name] = value
    since = values.get("since")
    if since is not None and not re.fullmatch(r"[0-9]{1,18}", since):
        raise RequestError("'since' must be a revision (a whole number) from an earlier answer")
    return BoxQuery(q=text["q"] or "", site=text["site"], region=text["region"], modality=text["modality"],
                    version=text["version"], status=choice("status", FLAGS, None),
                    sort=choice("sort", SORTS, "problems") or "problems", order=choice("order", ORDERS, "asc") or "asc",
                    offset=integer("offset", 0, 0, 100_000), limit=integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
                    group=choice("group", GROUPS, None), since=None if since is None else int(since))
