"""The fleet service (``mgw cloud fleet``): registry, utilisation records, alerts, API, dashboard.

Telemetry arrives on paho's thread and is queued; one worker thread applies it to the
in-memory registry (core.fleet does the state changes), stores exam records and
acknowledges them, and once a second writes the changed boxes and health samples to the
fleet store in one transaction and evaluates the alert rules. The HTTP server
(fleet_http.py) reads the registry from memory and history from the store.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import __version__
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud import backends
from gateway.cloud.analytics import opening_hours
from gateway.cloud.fleet_store import Alert, FleetStore
from gateway.config import CloudSettings
from gateway.core import fleet, topics
from gateway.core.errors import FrameError, GatewayError
from gateway.core.fleet import AlertKind, AlertRules, BoxState, MessageKind
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger(__name__)
FLUSH_S = 1.0
_PRUNE_S = 3600.0
_EXAM_KEYS: dict[str, type | tuple[type, ...]] = {
    "study_key": str, "revision": int, "modality": str, "start": (int, float), "end": (int, float), "images": int,
    "series": int, "source": str, "status": str, "first_received_at": (int, float), "last_received_at": (int, float)}


@dataclass
class Counters:
    messages: int = 0
    rejected: int = 0
    exams: int = 0
    lag_s_max: float = 0.0  # worst heartbeat "at" -> applied, over the last flush


class FleetService:
    def __init__(self, settings: CloudSettings, paths: Paths, clock: Callable[[], float] = time.time,
                 store: FleetStore | None = None) -> None:
        self.settings = settings
        self.fleet = settings.fleet
        self._clock = clock
        self.store: FleetStore = store or backends.open_fleet_store(settings, paths)
        f = settings.fleet
        self.rules = AlertRules(f.offline_after_s, f.backlog_alert_minutes * 60, f.disk_alert_percent,
                                f.cert_alert_days, f.silent_modality_hours * 3600, opening_hours(f))
        self._lock = threading.Lock()
        self.boxes: dict[str, BoxState] = {s.box_id: s for s in self.store.load_boxes()}
        self._open: dict[tuple[str, AlertKind, str], Alert] = {
            (a.box_id, a.kind, a.subject): a for a in self.store.alerts(open_only=True)}
        self._dirty: set[str] = set()
        self._last_sample: dict[str, float] = {}
        self.counters = Counters()
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._stop = threading.Event()
        self._prefix = settings.mqtt.topic_prefix
        self.link = MqttLink(settings.mqtt, client_id=f"mgw-fleet-{settings.ingest.worker_id}",
                             subscriptions=[(t, 1) for t in topics.fleet_subscriptions(self._prefix)],
                             on_message=self._inbox.put, max_inflight=256)
        self._worker = threading.Thread(target=self._work, name="fleet", daemon=True)
        self.http: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        from gateway.cloud.fleet_http import FleetHttp

        self.http = FleetHttp(self, self.fleet.http_bind, self.fleet.http_port)
        self.http.start()
        self._worker.start()
        self.link.start()
        log.info("fleet service started", extra={
            "MESSAGE_ID": MSG.SERVICE_STARTED.value, "VERSION": __version__, "URL": self.http.url,
            "BROKER": f"{self.settings.mqtt.host}:{self.settings.mqtt.port}"})

    def stop(self) -> None:
        self._stop.set()
        self.link.stop()
        self._worker.join(10)
        if self.http is not None:
            self.http.stop()
        self.store.close()

    def alive(self) -> bool:
        return self._worker.is_alive() and self.link.alive()

    # -- the worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        next_flush, next_prune = 0.0, 0.0
        while not self._stop.is_set():
            try:
                message = self._inbox.get(timeout=0.1)
                self._handle(message)
            except queue.Empty:
                pass
            except GatewayError as exc:
                log.error("telemetry not handled", extra={"ERROR": str(exc)})
            except Exception:
                log.exception("telemetry handler failed")
            now = self._clock()
            if now >= next_flush:
                self._guarded(self.flush)
                next_flush = now + FLUSH_S
            if now >= next_prune:
                cutoff = now - self.fleet.history_days * 86400
                self._guarded(lambda: self.store.prune(cutoff))  # noqa: B023 - called at once
                next_prune = now + _PRUNE_S

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except GatewayError as exc:
            log.error("fleet housekeeping failed", extra={"ERROR": str(exc)})

    def _handle(self, message: Inbound) -> None:
        self.counters.messages += 1
        try:
            box_id, leaf = topics.parse_telemetry_topic(self._prefix, message.topic)
            if leaf == "util":
                self._exam(box_id, message.payload)
                return
            if not message.payload:
                return  # a retained message being cleared
            kind = MessageKind.HEARTBEAT if leaf == "health" else _state_kind(message.payload)
            self.apply(fleet.decode(kind, box_id, message.payload))
        except FrameError as exc:
            self.counters.rejected += 1
            log.warning("telemetry rejected", extra={"MESSAGE_ID": MSG.TELEMETRY_REJECTED.value, "ERROR": str(exc)})

    def apply(self, msg: fleet.Telemetry) -> None:
        now = self._clock()
        with self._lock:
            before = self.boxes.get(msg.box_id)
            after = fleet.apply(before, msg, now)
            if after is None or after is before:
                return
            self.boxes[msg.box_id] = after
            self._dirty.add(msg.box_id)
        if msg.kind is MessageKind.HEARTBEAT and isinstance(msg.body.get("at"), int | float):
            self.counters.lag_s_max = max(self.counters.lag_s_max, now - float(msg.body["at"]))
        if before is None or before.online != after.online:
            _log_transition(after, msg.kind.value)

    def _exam(self, box_id: str, payload: bytes) -> None:
        record = _exam_record(box_id, payload)
        if self.store.upsert_exam(record):
            self.counters.exams += 1
            ack = json.dumps({"v": 1, "study_key": record["study_key"], "revision": record["revision"]}).encode()
            self.link.publish(topics.util_ack_topic(self._prefix, box_id), ack, qos=1)

    # -- once a second: persist and evaluate ---------------------------------------------------------------
    def flush(self) -> None:
        now = self._clock()
        with self._lock:
            for box_id, state in list(self.boxes.items()):
                later = fleet.timed_out(state, now, self.fleet.offline_after_s)
                if later is not state:
                    self.boxes[box_id] = later
                    self._dirty.add(box_id)
                    _log_transition(later, "timeout")
            dirty = [self.boxes[b] for b in self._dirty]
            self._dirty.clear()
            boxes = list(self.boxes.values())
        self.store.save_boxes(dirty)
        self.store.add_samples(self._samples(dirty, now))
        self._evaluate(boxes, now)
        self.counters.lag_s_max = 0.0

    def _samples(self, states: list[BoxState], now: float) -> list[dict[str, Any]]:
        out = []
        for s in states:
            if now - self._last_sample.get(s.box_id, 0.0) < self.fleet.history_interval_s:
                continue
            self._last_sample[s.box_id] = now
            h = s.health
            backlog, disk = h.get("backlog") or {}, h.get("disk") or {}
            out.append({"box_id": s.box_id, "at": round(now, 3), "online": int(s.online),
                        "backlog_items": backlog.get("items"), "backlog_bytes": backlog.get("bytes"),
                        "oldest_age_s": backlog.get("oldest_unacked_age_s"),
                        "disk_used_percent": disk.get("used_percent"), "cpu_temp_c": h.get("cpu_temp_c"),
                        "reconnects": h.get("reconnects")})
        return out

    def _evaluate(self, boxes: list[BoxState], now: float) -> None:
        active: dict[tuple[str, AlertKind, str], str] = {}
        for state in boxes:
            for (kind, subject), detail in fleet.evaluate(state, self.rules, now).items():
                active[(state.box_id, kind, subject)] = detail
        for key, detail in active.items():
            if key not in self._open:
                alert = self.store.raise_alert(key[0], key[1], key[2], detail, now)
                self._open[key] = alert
                log.warning("alert raised", extra={"MESSAGE_ID": MSG.ALERT_RAISED.value, "BOX_ID": key[0],
                                                   "ALERT": key[1].value, "SUBJECT": key[2], "DETAIL": detail})
        for key in [k for k in self._open if k not in active]:
            alert = self._open.pop(key)
            self.store.clear_alert(alert.id, now)
            log.info("alert cleared", extra={"MESSAGE_ID": MSG.ALERT_CLEARED.value, "BOX_ID": key[0],
                                             "ALERT": key[1].value, "SUBJECT": key[2]})

    # -- for the API --------------------------------------------------------------------------------------
    def registry(self) -> list[BoxState]:
        with self._lock:
            return list(self.boxes.values())

    def open_alerts(self) -> list[Alert]:
        return list(self._open.values())

    def box(self, box_id: str) -> BoxState | None:
        with self._lock:
            return self.boxes.get(box_id)


def _state_kind(payload: bytes) -> MessageKind:
    try:
        kind = json.loads(payload.decode("utf-8")).get("kind")
    except (UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise FrameError("state: not a JSON object") from exc
    if kind not in (MessageKind.BIRTH.value, MessageKind.DEATH.value):
        raise FrameError("state: kind must be birth or death")
    return MessageKind(kind)


def _exam_record(box_id: str, payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError("util: not JSON") from exc
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("box_id") != box_id:
        raise FrameError("util: not a version 1 record of this box")
    for key, tp in _EXAM_KEYS.items():
        if not isinstance(doc.get(key), tp) or isinstance(doc.get(key), bool):
            raise FrameError(f"util: '{key}' missing or mistyped")
    stored = doc.get("cloud_stored_at")
    if stored is not None and not isinstance(stored, int | float):
        raise FrameError("util: 'cloud_stored_at' mistyped")
    doc["site"] = str(doc.get("site") or box_id)[:64]
    doc["modality"] = doc["modality"][:16]
    _check_storable(doc)
    return doc


def _check_storable(doc: dict[str, Any]) -> None:
    """What both fleet store backends hold alike: counts in 0..2**31-1, finite times, text without NUL."""
    for key in ("revision", "images", "series"):
        if not 0 <= doc[key] < 2**31:
            raise FrameError(f"util: '{key}' out of range")
    for key in ("start", "end", "first_received_at", "last_received_at", "cloud_stored_at"):
        if doc.get(key) is not None and not math.isfinite(doc[key]):
            raise FrameError(f"util: '{key}' is not a finite time")
    if any("\x00" in doc[key] for key in ("study_key", "modality", "source", "status", "site")):
        raise FrameError("util: text holds a NUL character")


def _log_transition(state: BoxState, cause: str) -> None:
    msg = MSG.BOX_ONLINE if state.online else MSG.BOX_OFFLINE
    log.info("box %s", "online" if state.online else "offline", extra={
        "MESSAGE_ID": msg.value, "BOX_ID": state.box_id, "CAUSE": cause, "BD_SEQ": state.bd_seq})
