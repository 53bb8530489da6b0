"""The fleet's HTTP side: REST API (JSON), Prometheus /metrics and the dashboard's files.

Standard library ``ThreadingHTTPServer``; read-only (GET/HEAD). API documents are listed in
docs/operations.md. The dashboard (gateway/cloud/fleet/web/) is static HTML + JS that renders
everything in the browser from this API; its charting library is installed from npm at build
time (``.ci/install``) into web/vendor/ and served from here, never from a CDN.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from gateway import __version__
from gateway.adapters import metrics_http
from gateway.adapters.metrics_http import Sample
from gateway.cloud.fleet import analytics
from gateway.cloud.fleet.deadletter import DeadLetters
from gateway.cloud.fleet.store import Alert, FleetStore
from gateway.config import BOX_ID, FleetSettings
from gateway.core.errors import GatewayError
from gateway.core.fleet import AlertKind, BoxState
from gateway.supervision import StartRecord

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
_DAY_S = 86400.0


class Counters(Protocol):
    @property
    def messages(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def exams(self) -> int: ...


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
    def alive(self) -> bool: ...
    def registry(self) -> list[BoxState]: ...
    def open_alerts(self) -> list[Alert]: ...
    def box(self, box_id: str) -> BoxState | None: ...


class FleetHttp:
    def __init__(self, service: FleetView, bind: str, port: int) -> None:
        self.service = service
        self.registry = metrics_http.registry_for(self._samples)
        handler = type("Handler", (_Handler,), {"fleet": self})
        self._server = ThreadingHTTPServer((bind, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleet-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- documents ---------------------------------------------------------------------------------
    def boxes(self) -> list[dict[str, Any]]:
        alerts: dict[str, list[str]] = {}
        for a in self.service.open_alerts():
            alerts.setdefault(a.box_id, []).append(a.kind.value)
        docs = [_box_doc(s, alerts.get(s.box_id, [])) for s in self.service.registry()]
        return sorted(docs, key=lambda d: (-len(d["alerts"]), d["online"], d["box_id"]))

    def box(self, box_id: str, now: float) -> dict[str, Any] | None:
        state = self.service.box(box_id)
        if state is None:
            return None
        store = self.service.store
        alerts = [_alert_doc(a) for a in store.alerts(open_only=False, since=now - 7 * _DAY_S) if a.box_id == box_id]
        doc = _box_doc(state, [a["kind"] for a in alerts if a["cleared_at"] is None])
        doc["history"] = store.samples(box_id, now - _DAY_S)
        doc["recent_exams"] = [_exam_doc(e) for e in store.exams(box_id=box_id, since=now - 30 * _DAY_S)[-50:]]
        doc["alert_log"] = alerts
        return doc

    def _samples(self) -> list[Sample]:
        boxes = self.service.registry()
        out = [Sample("mgw_fleet_boxes", "boxes known to the registry, by state", sum(b.online for b in boxes),
                      {"state": "online"}),
               Sample("mgw_fleet_boxes", "boxes known to the registry, by state", sum(not b.online for b in boxes),
                      {"state": "offline"})]
        by_kind = {k: 0 for k in AlertKind}
        for alert in self.service.open_alerts():
            by_kind[alert.kind] += 1
        out += [Sample("mgw_fleet_alerts_open", "open alerts by kind", n, {"kind": k.value})
                for k, n in by_kind.items()]
        c = self.service.counters
        out += [Sample("mgw_fleet_messages_total", "telemetry messages received", c.messages, counter=True),
                Sample("mgw_fleet_messages_rejected_total", "telemetry messages refused", c.rejected, counter=True),
                Sample("mgw_fleet_exam_records_total", "utilisation records stored", c.exams, counter=True)]
        out += [Sample("mgw_fleet_dead_letters_total", "telemetry messages set aside, by reason", n,
                       {"reason": reason.value}, counter=True)
                for reason, n in sorted(self.service.dead_letters.counts.items())]
        out += list(self.service.starts.samples())
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


class _Handler(BaseHTTPRequestHandler):
    fleet: FleetHttp
    server_version = f"mgw-fleet/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("http " + format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._route(url.path, query)
        except (ValueError, KeyError) as exc:
            self._json({"error": f"bad request: {exc}"}, HTTPStatus.BAD_REQUEST)
        except GatewayError as exc:
            log.error("fleet API failed", extra={"ERROR": str(exc)})
            self._json({"error": str(exc)}, HTTPStatus.SERVICE_UNAVAILABLE)

    def _route(self, path: str, q: dict[str, str]) -> None:
        service, now = self.fleet.service, time.time()
        if path == "/metrics":
            self._send(metrics_http.render(self.fleet.registry), metrics_http.CONTENT_TYPE)
        elif path == "/healthz":
            self._json({"ok": service.alive(), "version": __version__})
        elif path == "/api/v1/boxes":
            self._json({"now": now, "offline_after_s": service.fleet.offline_after_s, "boxes": self.fleet.boxes()})
        elif path.startswith("/api/v1/boxes/"):
            box_id = path.rsplit("/", 1)[1]
            doc = self.fleet.box(box_id, now) if BOX_ID.match(box_id) else None
            self._json(doc if doc else {"error": "no such box"}, HTTPStatus.OK if doc else HTTPStatus.NOT_FOUND)
        elif path == "/api/v1/alerts":
            alerts = service.store.alerts(open_only=q.get("all") != "1", since=now - float(q.get("days", 7)) * _DAY_S)
            self._json({"now": now, "alerts": [_alert_doc(a) for a in alerts]})
        elif path == "/api/v1/dead-letters":
            box = q.get("box")
            if box is not None and not BOX_ID.match(box):
                raise ValueError("box is not a box id")
            letters = service.store.dead_letters(box_id=box, since=now - float(q.get("days", 7)) * _DAY_S,
                                                 limit=max(1, min(int(q.get("limit", 200)), 5000)))
            self._json({"now": now, "dead_letters": [dataclasses.asdict(d) for d in letters]})
        elif path == "/api/v1/modalities":
            self._json({"modalities": service.store.modalities()})
        elif path == "/api/v1/utilisation":
            days = max(1, min(int(q.get("days", 14)), 366))
            self._json(analytics.utilisation(service.store, service.fleet, q["box"], q["modality"], days, now))
        elif path == "/api/v1/turnaround":
            since = now - max(1.0, float(q.get("days", 7))) * _DAY_S
            self._json({"sites": analytics.turnaround(service.store, since)})
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (WEB_DIR / name).resolve()
        if WEB_DIR.resolve() not in target.parents or not target.is_file():
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            return
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        textual = kind.startswith(("text/", "application/javascript", "application/json"))
        self._send(target.read_bytes(), kind + ("; charset=utf-8" if textual else ""))

    def _json(self, doc: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(doc, ensure_ascii=False).encode(), "application/json; charset=utf-8", status)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
