"""The fleet console's documents, without a web framework: what the API answers, and its queries.

``FleetDocs`` builds every JSON document of the REST API (listed in docs/operations.md and
described in ``openapi.py``) and the /metrics samples from a ``FleetView``; ``Query`` parses a
request's query parameters into typed values, refusing anything else with ``RequestError``.
The framework that serves them is ``starlette_app.py`` (routes, middleware) on
``adapters/uvicorn_server.py`` (the socket, TLS, the server thread). The dashboard
(gateway/cloud/fleet/web/) is static HTML + JS that renders everything in the browser from this
API; its charting library is installed from npm at build time (``.ci/install``) into
web/vendor/ and served from here, never from a CDN.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from gateway.adapters import metrics_http
from gateway.adapters.metrics_http import Sample
from gateway.cloud.archive import versions
from gateway.cloud.archive.versions import Version
from gateway.cloud.commands.queue import CommandQueue
from gateway.cloud.commands.rollout import Rollouts
from gateway.cloud.fleet import analytics, box_page, overview
from gateway.cloud.fleet.deadletter import DeadLetters
from gateway.cloud.fleet.store import Alert, AlertState, FleetStore
from gateway.config import BOX_ID, FleetSettings, site_zone
from gateway.core.access import Principal, Role
from gateway.core.alerts import Severity
from gateway.core.errors import RequestError
from gateway.core.fleet import AlertKind, BoxState
from gateway.supervision import StartRecord

WEB_DIR = Path(__file__).parent / "web"
_DAY_S = 86400.0
MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")  # as core.schema's Modality
MAX_QUERY_VALUE_CHARS = 128
MAX_TARGET_BYTES = 2048  # a request's path and query together (the console's Guard answers 414 above)
_DECIMAL = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")


class Counters(Protocol):
    @property
    def messages(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def exams(self) -> int: ...


class WorklistCounters(Protocol):
    @property
    def frames(self) -> int: ...
    @property
    def truncated(self) -> int: ...
    @property
    def statuses(self) -> int: ...
    @property
    def unreadable(self) -> int: ...


class FleetView(Protocol):
    """What the HTTP side reads from the fleet service (``fleet.FleetService``, which starts it).

    A protocol, so that this module does not import the service that imports it.
    """

    @property
    def fleet(self) -> FleetSettings: ...
    @property
    def store(self) -> FleetStore: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def dead_letters(self) -> DeadLetters: ...
    @property
    def starts(self) -> StartRecord: ...
    @property
    def leading(self) -> bool: ...  # holds the leader lease (several instances on one store)
    @property
    def leader(self) -> str: ...  # who holds it, as of the last flush
    @property
    def instance(self) -> str: ...
    @property
    def worklist(self) -> WorklistCounters | None: ...  # the worklist feed, when [fleet.worklist] runs it
    @property
    def commands(self) -> CommandQueue: ...  # the remote commands' queue
    @property
    def rollouts(self) -> Rollouts: ...  # wave rollouts of a config or an update
    def alive(self) -> bool: ...
    def registry(self) -> list[BoxState]: ...
    def open_alerts(self) -> list[Alert]: ...
    def box(self, box_id: str) -> BoxState | None: ...
    def archive_versions(self, sop_instance_uid: str) -> list[Version]: ...
    def archive_studies(self, box_id: str, accession_hmac: str, limit: int) -> list[str]: ...
    def list_alerts(self, *, state: AlertState = AlertState.OPEN, severity: Severity | None = None,
                    site: str | None = None, kind: AlertKind | None = None, since: float = 0.0,
                    grouped: bool = True, limit: int = 1000) -> list[Alert]: ...


class FleetDocs:
    """The API's documents and the /metrics samples, read from the fleet service. Thread safe as the view is."""

    def __init__(self, service: FleetView) -> None:
        self.service = service
        self.registry = metrics_http.registry_for(self._samples)
        self.overview = overview.Overview(overview.Source(
            lambda: service.fleet, service.registry, service.open_alerts, service.list_alerts,
            service.store.modalities))

    # -- per-site scope: every document shows only what the principal may see ---------------------------
    def site_of(self, box_id: str) -> str:
        """A box's site as the documents show it: the registry's, or its box id when it has none."""
        state = self.service.box(box_id) if box_id else None
        return (state.site if state is not None else "") or box_id

    def alert_visible(self, who: Principal, alert: Alert) -> bool:
        return who.sites is None or who.can_see(alert.site or self.site_of(alert.box_id))

    def box_visible(self, who: Principal, box_id: str) -> bool:
        return who.sites is None or who.can_see(self.site_of(box_id))

    # -- documents ---------------------------------------------------------------------------------
    def boxes(self, who: Principal) -> list[dict[str, Any]]:
        alerts: dict[str, list[str]] = {}
        for a in self.service.open_alerts():
            alerts.setdefault(a.box_id, []).append(a.kind.value)
        docs = [_box_doc(s, alerts.get(s.box_id, [])) for s in self.service.registry()]
        docs = [d for d in docs if who.can_see(d["site"])]
        return sorted(docs, key=lambda d: (-len(d["alerts"]), d["online"], d["box_id"]))

    def box_list(self, who: Principal, now: float) -> dict[str, Any]:
        return {"now": now, "offline_after_s": self.service.fleet.offline_after_s, "boxes": self.boxes(who)}

    def alerts(self, who: Principal, q: Query, now: float) -> dict[str, Any]:
        everything = q.flag("all")
        alerts = self.service.store.alerts(open_only=not everything, since=now - q.days("days", 7.0) * _DAY_S)
        return {"now": now, "alerts": [_alert_doc(a) for a in alerts if self.alert_visible(who, a)]}

    def dead_letters(self, who: Principal, q: Query, now: float) -> dict[str, Any]:
        limit = q.integer("limit", 200, 1, 5000)
        box_id = q.box("box")
        if box_id is not None and not self.box_visible(who, box_id):
            return {"now": now, "dead_letters": []}
        letters = self.service.store.dead_letters(box_id=box_id, since=now - q.days("days", 7.0) * _DAY_S,
                                                  limit=limit if who.sites is None else 5000)
        shown = [dataclasses.asdict(d) for d in letters if self.box_visible(who, d.box_id)][:limit]
        return {"now": now, "dead_letters": shown}

    def worklist_feed(self, who: Principal, now: float) -> dict[str, Any]:
        """The worklist feed per box (counts, seq, times; no patient data), the principal's sites only;
        the RIS sources and the outbox to a principal of every site."""
        from gateway.cloud.worklist.summary import status_doc

        doc = status_doc(self.service.store.worklist)
        doc["boxes"] = [b for b in doc["boxes"] if self.box_visible(who, b["box_id"])]
        if who.sites is not None:
            doc["sources"], doc["outbox"] = [], None
        return {"now": now, "enabled": self.service.fleet.worklist.enabled, **doc}

    def modalities(self, who: Principal) -> dict[str, Any]:
        return {"modalities": [m for m in self.service.store.modalities() if who.can_see(m["site"])]}

    def utilisation(self, who: Principal, q: Query, now: float) -> dict[str, Any] | None:
        """None when the box is not the principal's to see."""
        box, modality = q.box("box"), q.text("modality", MODALITY)
        if box is None or modality is None:
            raise RequestError("'box' and 'modality' are required")
        days = q.integer("days", 14, 1, 366)
        if not self.box_visible(who, box):
            return None
        return analytics.utilisation(self.service.store, self.service.fleet, box, modality, days, now)

    def turnaround(self, who: Principal, q: Query, now: float) -> dict[str, Any]:
        since = now - q.days("days", 7.0, low=1.0) * _DAY_S
        return {"sites": [s for s in analytics.turnaround(self.service.store, since, self.service.fleet)
                          if who.can_see(s["site"])]}

    def turnaround_by_modality(self, who: Principal, q: Query, now: float) -> dict[str, Any]:
        since = now - q.days("days", 7.0, low=1.0) * _DAY_S
        doc = analytics.turnaround_by_modality(self.service.store, self.service.fleet, since)
        for key in ("groups", "over_target"):
            doc[key] = [g for g in doc[key] if who.can_see(g["site"])]
        return doc

    def idle_capacity(self, who: Principal, now: float) -> dict[str, Any]:
        doc = analytics.idle_capacity(self.service.store, self.service.fleet, now)
        if who.sites is not None:
            doc["scanners"] = [s for s in doc["scanners"] if who.can_see(s["site"])]
            doc["by_modality"] = analytics._totals(doc["scanners"], "modality")
            doc["by_site"] = analytics._totals(doc["scanners"], "site")
        return doc

    def metrics(self, who: Principal) -> bytes:
        """The /metrics exposition; a site-scoped principal gets its sites' boxes and alerts only."""
        if who.sites is None:
            return metrics_http.render(self.registry)
        return metrics_http.render(metrics_http.registry_for(lambda: self._samples(who)))

    def box(self, who: Principal, box_id: str, now: float) -> dict[str, Any] | None:
        state = self.service.box(box_id)
        if state is None or not who.can_see(state.site or state.box_id):
            return None
        store = self.service.store
        alerts = [_alert_doc(a) for a in store.alerts(open_only=False, since=now - 7 * _DAY_S) if a.box_id == box_id]
        doc = _box_doc(state, [a["kind"] for a in alerts if a["cleared_at"] is None])
        doc["now"] = now
        doc["history"] = store.samples(box_id, now - _DAY_S)
        month = store.exams(box_id=box_id, since=now - 30 * _DAY_S)
        doc["recent_exams"] = [_exam_doc(e) for e in month[-50:]]
        doc["alert_log"] = alerts
        # the box page's charts, its configuration as far as it is known, its last errors
        doc["series"] = box_page.box_series(doc["history"], [e for e in month if e["start"] >= now - 2 * _DAY_S],
                                            now)
        doc["config"] = box_page.box_config(state, self.service.fleet, {e["modality"] for e in month})
        doc["dead_letters"] = [dataclasses.asdict(d) for d in store.dead_letters(box_id=box_id, limit=20)]
        return doc

    def archive_versions(self, who: Principal, q: Query) -> dict[str, Any]:
        """The archived versions of one instance, those sent by boxes of the principal's sites; an
        operator's or an admin's (a UID is patient-linked: shown, never logged)."""
        who.require(Role.OPERATOR, "reading the archive's versions")
        uid = versions.parse_uid(q.values.get("sop_instance_uid", ""), "'sop_instance_uid'")
        fleet = self.service.fleet
        shown = []
        for v in self.service.archive_versions(uid):
            if self.box_visible(who, v.box_id):
                state = self.service.box(v.box_id)
                site = state.site if state is not None else ""
                shown.append({**versions.as_json(v, site_zone(fleet, site)), "site": site,
                              "time_zone": overview.site_zone(fleet, site)})
        return {"versions": shown}

    def health(self) -> dict[str, Any]:
        """What /healthz adds to ``ok``: this instance, and whether it leads the instances on its store."""
        s = self.service
        return {"instance": s.instance, "leader": s.leading, "leader_instance": s.leader}

    def _samples(self, who: Principal | None = None) -> list[Sample]:
        boxes = [b for b in self.service.registry() if who is None or who.can_see(b.site or b.box_id)]
        out = [Sample("mgw_fleet_boxes", "boxes known to the registry, by state", sum(b.online for b in boxes),
                      {"state": "online"}),
               Sample("mgw_fleet_boxes", "boxes known to the registry, by state", sum(not b.online for b in boxes),
                      {"state": "offline"})]
        by_kind = {k: 0 for k in AlertKind}
        for alert in self.service.open_alerts():
            if who is None or self.alert_visible(who, alert):
                by_kind[alert.kind] += 1
        out += [Sample("mgw_fleet_alerts_open", "open alerts by kind", n, {"kind": k.value})
                for k, n in by_kind.items()]
        if who is not None:  # the fleet-wide counters are central operations' only
            return out + self._box_samples(boxes)
        c = self.service.counters
        out += [Sample("mgw_fleet_messages_total", "telemetry messages received", c.messages, counter=True),
                Sample("mgw_fleet_messages_rejected_total", "telemetry messages refused", c.rejected, counter=True),
                Sample("mgw_fleet_exam_records_total", "utilisation records stored", c.exams, counter=True)]
        out += [Sample("mgw_fleet_dead_letters_total", "telemetry messages set aside, by reason", n,
                       {"reason": reason.value}, counter=True)
                for reason, n in sorted(self.service.dead_letters.counts.items())]
        out.append(Sample("mgw_fleet_leader", "1 while this instance holds the leader lease (raises and clears alerts)",
                          int(self.service.leading)))
        out += list(self.service.starts.samples())
        out += self._worklist_samples()
        out += self._command_samples()
        return out + self._box_samples(boxes)

    def _command_samples(self) -> list[Sample]:
        c = self.service.commands
        return [Sample("mgw_fleet_commands_published_total", "remote command frames published by this instance",
                       c.published, counter=True),
                Sample("mgw_fleet_command_results_total", "remote command results taken from boxes", c.results,
                       counter=True),
                *[Sample("mgw_fleet_command_refusals_total", "remote command frames a box refused, by reason", n,
                         {"box_id": box_id, "reason": reason}, counter=True)
                  for (box_id, reason), n in sorted(c.refused_by.items())]]

    def _worklist_samples(self) -> list[Sample]:
        w = self.service.worklist
        if w is None:
            return []
        outbox = self.service.store.worklist.outbox_counts()
        return [Sample("mgw_fleet_worklist_frames_total", "worklist snapshots published (and cleared) by this "
                       "instance", w.frames, counter=True),
                Sample("mgw_fleet_worklist_truncated_total", "worklist snapshots cut to fit one frame", w.truncated,
                       counter=True),
                Sample("mgw_fleet_worklist_statuses_total", "performed statuses taken from boxes", w.statuses,
                       counter=True),
                Sample("mgw_fleet_worklist_unreadable_total", "stored orders that did not open", w.unreadable,
                       counter=True),
                Sample("mgw_fleet_worklist_outbox_pending", "performed statuses waiting for the RIS",
                       outbox["pending"])]

    @staticmethod
    def _box_samples(boxes: list[BoxState]) -> list[Sample]:
        out = []
        for b in boxes:
            labels = {"box_id": b.box_id, "site": b.site}
            backlog = b.health.get("backlog") or {}
            out.append(Sample("mgw_fleet_box_up", "1 while the box is online", int(b.online), labels))
            out.append(Sample("mgw_fleet_box_last_seen_timestamp_seconds", "last birth or heartbeat", b.last_seen,
                              labels))
            for name, value, help_text in (
                ("mgw_fleet_box_backlog_items", backlog.get("items"), "instances the box has not delivered"),
                ("mgw_fleet_box_backlog_bytes", backlog.get("bytes"), "bytes the box has not delivered"),
                ("mgw_fleet_box_backlog_oldest_age_seconds", backlog.get("oldest_unacked_age_s"),
                 "age of the box's oldest undelivered instance"),
                ("mgw_fleet_box_disk_used_ratio", _ratio((b.health.get("disk") or {}).get("used_percent")),
                 "used fraction of the box's state disk"),
                ("mgw_fleet_box_certificate_expiry_timestamp_seconds", b.health.get("cert_not_after"),
                 "the box's client certificate notAfter"),
            ):
                if isinstance(value, int | float):
                    out.append(Sample(name, help_text, float(value), labels))
        return out


def _ratio(percent: Any) -> float | None:
    return percent / 100.0 if isinstance(percent, int | float) else None


def _box_doc(state: BoxState, alerts: list[str]) -> dict[str, Any]:
    h = state.health
    return {"box_id": state.box_id, "site": state.site or state.box_id, "version": state.version,
            "online": state.online, "last_seen": state.last_seen, "changed_at": state.changed_at,
            "first_seen": state.first_seen, "bd_seq": state.bd_seq, "alerts": sorted(alerts),
            "backlog": h.get("backlog"), "disk": h.get("disk"), "cpu_temp_c": h.get("cpu_temp_c"),
            "cert_not_after": h.get("cert_not_after"), "last_study": h.get("last_study") or {},
            "uptime_s": h.get("uptime_s"), "reconnects": h.get("reconnects"),
            "quarantine_items": h.get("quarantine_items"), "heartbeat_at": h.get("at")}


def _alert_doc(a: Any) -> dict[str, Any]:
    return {"id": a.id, "box_id": a.box_id, "kind": a.kind.value, "subject": a.subject, "detail": a.detail,
            "raised_at": a.raised_at, "cleared_at": a.cleared_at}


def _exam_doc(e: dict[str, Any]) -> dict[str, Any]:
    turnaround = None if e["cloud_stored_at"] is None else round(e["cloud_stored_at"] - e["last_received_at"], 2)
    return {"study_key": e["study_key"][:12], "modality": e["modality"], "start": e["start"], "end": e["end"],
            "images": e["images"], "series": e["series"], "source": e["source"], "status": e["status"],
            "turnaround_s": turnaround}


class Query:
    """A request's query parameters, each read once into a typed value or refused with ``RequestError``.

    ``pairs`` are the decoded (name, value) pairs in order; ``allowed`` the names the route
    takes. An unknown or repeated name, a value too long, not of its type or out of its range is
    refused: the reason names the parameter and what it must be.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]], allowed: Iterable[str]) -> None:
        self.values: dict[str, str] = {}
        names = set(allowed)
        for name, value in pairs:
            if name not in names:
                raise RequestError(f"unknown query parameter {name[:40]!r}")
            if name in self.values:
                raise RequestError(f"query parameter {name!r} given twice")
            if len(value) > MAX_QUERY_VALUE_CHARS:
                raise RequestError(f"query parameter {name!r} is longer than {MAX_QUERY_VALUE_CHARS} characters")
            self.values[name] = value

    def flag(self, name: str) -> bool:
        value = self.values.get(name, "0")
        if value not in ("0", "1"):
            raise RequestError(f"{name!r} must be 0 or 1")
        return value == "1"

    def days(self, name: str, default: float, low: float = 0.0, high: float = 366.0) -> float:
        """A number of days, ``low`` < it <= ``high`` (``low`` <= it when ``low`` > 0)."""
        raw = self.values.get(name)
        if raw is None:
            return default
        if not _DECIMAL.fullmatch(raw):  # float() alone would take " 7", "7_0", "inf", "nan"
            raise RequestError(f"{name!r} must be a number of days")
        value = float(raw)
        if not math.isfinite(value) or value > high or value < low or (low == 0.0 and value <= 0.0):
            raise RequestError(f"{name!r} must be a number of days in ({low:g}, {high:g}]"
                               if low == 0.0 else f"{name!r} must be a number of days in [{low:g}, {high:g}]")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.values.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"[0-9]{1,6}", raw) or not low <= int(raw) <= high:
            raise RequestError(f"{name!r} must be a whole number in [{low}, {high}]")
        return int(raw)

    def box(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is not None and not BOX_ID.fullmatch(value):
            raise RequestError(f"{name!r} must be a box id ({BOX_ID.pattern})")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        """One of ``choices``, or ``default`` when the parameter is absent."""
        value = self.values.get(name)
        if value is None:
            return default
        if value not in choices:
            raise RequestError(f"{name!r} must be one of {', '.join(choices)}")
        return value

    def text(self, name: str, pattern: re.Pattern[str]) -> str | None:
        value = self.values.get(name)
        if value is not None and not pattern.fullmatch(value):
            raise RequestError(f"{name!r} must match {pattern.pattern}")
        return value
