"""The edge's telemetry: birth, death (last will), heartbeats, utilisation records, /metrics.

A second MQTT connection (client id ``<box>:telemetry``; the broker binds client ids to the
certificate's identity) so telemetry never waits
behind image chunks in the uplink's window, and its last will says "this box is gone".
Every connect registers a will carrying a fresh ``bd_seq`` (persisted, growing); the birth
published right after carries the same number (Sparkplug B). A clean stop disconnects with
reason 0x04, so the broker publishes the death at once. Utilisation records are business
data: QoS 1, no expiry, resent until the cloud acknowledges each revision on ``util/ack``;
an ack counts only if signed by a key in the box's ack keyring (``gateway.core.acksig``).
The worklist feed rides this connection too (``edge/worklist_feed.WorklistFeed``): its frames and
status acks are queued by paho's callback and handled on the telemetry thread; the birth carries
the box's worklist key, the heartbeat the cache's figures. Remote commands ride it as well
(``edge/commands.CommandChannel``, the same way: queued by paho, judged on the telemetry thread);
the birth and heartbeat carry ``config_version``, the heartbeat the commands' figures.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.adapters import host
from gateway.adapters.exam_store import ExamStore
from gateway.adapters.metrics_http import MetricsServer, Sample
from gateway.adapters.mqtt_link import Inbound, MqttLink, Will
from gateway.config import EdgeSettings
from gateway.core import acksig, fleet, topics
from gateway.core import exam as exams
from gateway.core.acksig import AckKeyring
from gateway.core.command_wire import Refusal
from gateway.core.errors import FrameError, UnexpectedAckError
from gateway.core.fleet import MessageKind
from gateway.edge.commands import CommandChannel
from gateway.edge.exams import ExamRecorder
from gateway.edge.worklist_feed import WorklistFeed
from gateway.logs import MSG
from gateway.paths import Paths
from gateway.supervision import build_info

log = logging.getLogger(__name__)
_TICK_S = 1.0
REFUSALS = tuple(r.value for r in Refusal)


class Telemetry:
    def __init__(self, settings: EdgeSettings, paths: Paths, recorder: ExamRecorder, uplink: MqttLink,
                 clock: Callable[[], float], keyring: Callable[[], AckKeyring],
                 dicom_counts: Callable[[], dict[str, dict[str, int]]] = dict,
                 worklist: WorklistFeed | None = None, commands: CommandChannel | None = None,
                 config_version: Callable[[], int] = lambda: 0) -> None:
        self._settings = settings
        self._worklist = worklist
        self._commands = commands
        self._config_version = config_version
        self._dicom_counts = dicom_counts  # DicomListener.counts: refusals by reason
        self._keyring = keyring
        self.acks_rejected = 0
        self._paths = paths
        self._recorder = recorder
        self._store: ExamStore = recorder.store
        self._uplink = uplink
        self._clock = clock
        self._started = clock()
        self._box = settings.box.id
        self._prefix = settings.mqtt.topic_prefix
        self._bd_seq = -1
        self._seq = 0
        self._births = 0
        self._acks: queue.Queue[bytes] = queue.Queue()
        self._connected_flag = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.link = MqttLink(
            settings.mqtt, client_id=f"{self._box}:telemetry",
            subscriptions=[(topics.util_ack_topic(self._prefix, self._box), 1),
                           *(worklist.subscriptions() if worklist is not None else []),
                           *(commands.subscriptions() if commands is not None else [])],
            on_message=self._on_message, on_state=self._on_state, will_factory=self._will,
        )
        h = settings.health
        self.metrics = MetricsServer(h.metrics_bind, h.metrics_port, self._samples) if h.metrics_bind else None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.start()
        self.link.start()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self.link.stop(send_will=True)
        if self.metrics is not None:
            self.metrics.stop()
        if self._worklist is not None:
            self._worklist.close()

    def announce(self) -> None:
        """Publish the birth again at the next round (what it carries changed: ``config_version``)."""
        self._connected_flag.set()
        self._wake.set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.link.alive()

    # -- MQTT callbacks (paho's thread) -----------------------------------------------------------------
    def _will(self) -> Will:
        self._bd_seq = self._store.next_counter("bd_seq")
        payload = fleet.encode(MessageKind.DEATH, self._box, self._bd_seq)
        return Will(topics.telemetry_topic(self._prefix, self._box, "state"), payload, qos=1, retain=True)

    def _on_state(self, up: bool) -> None:
        if up:
            self._connected_flag.set()
            self._wake.set()

    def _on_message(self, message: Inbound) -> None:
        if self._worklist is not None and self._worklist.wants(message.topic):
            self._worklist.offer(message)
        elif self._commands is not None and self._commands.wants(message.topic):
            self._commands.offer(message)
        else:
            self._acks.put(message.payload)
        self._wake.set()

    # -- the telemetry thread -------------------------------------------------------------------------
    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            try:
                if self._connected_flag.is_set() and self.link.connected:
                    self._connected_flag.clear()
                    self._publish_birth()
                    next_beat = 0.0  # a heartbeat right after the birth
                self._drain_acks()
                if self._worklist is not None:
                    self._worklist.pump(self.link)
                if self._commands is not None:
                    self._commands.pump(self.link)
                self._recorder.pump()
                if self.link.connected:
                    self._send_records()
                    if self._clock() >= next_beat:
                        self._publish_heartbeat()
                        next_beat = self._clock() + self._settings.health.heartbeat_s
            except Exception:  # observer: telemetry must never stop the box
                log.exception("telemetry round failed")
            self._wake.wait(_TICK_S)
            self._wake.clear()

    def _publish_birth(self) -> None:
        rules = self._settings.site  # the site's zone and hours, as provisioning set them
        inbound = self._worklist.public_hex if self._worklist is not None else \
            self._commands.public_hex if self._commands is not None else ""
        extra = {"worklist_key": inbound} if inbound else {}
        payload = fleet.encode(MessageKind.BIRTH, self._box, self._bd_seq, at=round(self._clock(), 3),
                               version=__version__, site=self._site(), heartbeat_s=self._settings.health.heartbeat_s,
                               time_zone=rules.time_zone, weekly_hours=list(rules.weekly_hours), region=rules.region,
                               config_version=self._config_version(), **extra)
        self.link.publish(topics.telemetry_topic(self._prefix, self._box, "state"), payload, qos=1, retain=True)
        self._births += 1

    def _publish_heartbeat(self) -> None:
        self._seq += 1
        body = self.snapshot()
        payload = fleet.encode(MessageKind.HEARTBEAT, self._box, self._bd_seq, seq=self._seq, **body)
        expiry = int(2 * self._settings.health.heartbeat_s) + 1
        self.link.publish(topics.telemetry_topic(self._prefix, self._box, "health"), payload, qos=1, expiry_s=expiry)

    def _send_records(self) -> None:
        now = self._clock()
        for stored in self._store.due(now - self._settings.utilisation.resend_s):
            record = exams.to_record(stored.exam, self._box, stored.revision)
            record["site"] = self._site()
            payload = json.dumps(record, separators=(",", ":")).encode()
            if self.link.publish(topics.telemetry_topic(self._prefix, self._box, "util"), payload, qos=1):
                self._store.mark_sent(stored.exam.study_key, stored.revision, now)

    def _drain_acks(self) -> None:
        while True:
            try:
                payload = self._acks.get_nowait()
            except queue.Empty:
                return
            try:
                key, revision = acksig.verify_util_ack(json.loads(payload), self._box, self._keyring())
            except (ValueError, RecursionError, FrameError, UnexpectedAckError) as exc:
                self.acks_rejected += 1
                log.warning("exam-record ack ignored", extra={"MESSAGE_ID": MSG.ACK_REJECTED.value, "ERROR": str(exc)})
                continue
            self._store.mark_acked(key, revision)

    def _site(self) -> str:
        return self._settings.box.site or self._box  # box.site is written by provisioning

    # -- figures ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The heartbeat body (docs/protocol.md): health figures, no patient data."""
        now = self._clock()
        backlog = self._store.backlog()
        disk = host.disk(self._paths.state_dir)
        return {
            "at": round(now, 3), "uptime_s": round(now - self._started, 1), "version": __version__,
            "site": self._site(),
            "backlog": {"items": backlog.items, "bytes": backlog.bytes, "spool_items": backlog.spool_items,
                        "outbox_items": backlog.outbox_items,
                        "oldest_unacked_age_s": None if backlog.oldest_received_at is None
                        else round(max(0.0, now - backlog.oldest_received_at), 1)},
            "quarantine_items": backlog.quarantined,
            "disk": None if disk is None else {"free_bytes": disk.free_bytes, "total_bytes": disk.total_bytes,
                                               "used_percent": round(disk.used_percent, 2)},
            "cpu_temp_c": host.cpu_temp_c(Path(self._settings.health.thermal_dir)),
            "reconnects": self._uplink.reconnects, "uplink_connected": self._uplink.connected,
            "last_study": self._store.last_study_per_modality(),
            "cert_not_after": host.cert_not_after(self._settings.mqtt.cert_file),
            "utilisation_unacked": self._store.unacked(), "exams_dropped": self._recorder.dropped,
            **({"worklist": self._worklist.figures(now)} if self._worklist is not None else {}),
            "config_version": self._config_version(),
            **({"commands": self._commands.figures()} if self._commands is not None else {}),
        }

    def _samples(self) -> Iterator[Sample]:
        snap = self.snapshot()
        box = {"box_id": self._box}
        yield Sample("mgw_edge_up", "1 while the edge service runs", 1, box)
        yield Sample("mgw_edge_uptime_seconds", "seconds since the edge service started", snap["uptime_s"], box)
        yield Sample("mgw_edge_uplink_connected", "1 while the image uplink is connected",
                     int(snap["uplink_connected"]), box)
        yield Sample("mgw_edge_uplink_reconnects_total", "uplink connections lost", snap["reconnects"], box, True)
        yield Sample("mgw_edge_backlog_items", "instances not yet acknowledged by the cloud",
                     snap["backlog"]["items"], box)
        yield Sample("mgw_edge_backlog_stage_items", "unacknowledged instances by stage",
                     snap["backlog"]["spool_items"], {**box, "stage": "spool"})
        yield Sample("mgw_edge_backlog_stage_items", "unacknowledged instances by stage",
                     snap["backlog"]["outbox_items"], {**box, "stage": "outbox"})
        yield Sample("mgw_edge_backlog_bytes", "bytes not yet acknowledged by the cloud", snap["backlog"]["bytes"], box)
        yield Sample("mgw_edge_backlog_oldest_age_seconds", "age of the oldest unacknowledged instance",
                     snap["backlog"]["oldest_unacked_age_s"] or 0.0, box)
        yield Sample("mgw_edge_quarantine_items", "instances set aside in quarantine", snap["quarantine_items"], box)
        if snap["disk"] is not None:
            yield Sample("mgw_edge_disk_free_bytes", "free bytes on the state disk", snap["disk"]["free_bytes"], box)
            yield Sample("mgw_edge_disk_used_ratio", "used fraction of the state disk",
                         snap["disk"]["used_percent"] / 100.0, box)
        if snap["cpu_temp_c"] is not None:
            yield Sample("mgw_edge_cpu_temperature_celsius", "hottest thermal zone", snap["cpu_temp_c"], box)
        if snap["cert_not_after"] is not None:
            yield Sample("mgw_edge_certificate_expiry_timestamp_seconds", "client certificate notAfter",
                         snap["cert_not_after"], box)
        for modality, when in snap["last_study"].items():
            yield Sample("mgw_edge_last_study_timestamp_seconds", "last study received per modality", when,
                         {**box, "modality": modality})
        yield Sample("mgw_edge_utilisation_unacked", "exam records the cloud has not acknowledged",
                     snap["utilisation_unacked"], box)
        yield Sample("mgw_edge_births_total", "birth messages published", self._births, box, True)
        yield build_info("edge")
        yield from self._dicom_samples(box)
        if self._worklist is not None:
            yield from self._worklist_samples(snap["worklist"], box)
        if self._commands is not None:
            yield from self._command_samples(box)

    def _command_samples(self, box: dict[str, str]) -> Iterator[Sample]:
        channel = self._commands
        assert channel is not None
        yield Sample("mgw_edge_config_version", "version of the remote-managed settings the box runs",
                     self._config_version(), box)
        yield Sample("mgw_edge_command_last_seq", "sequence number of the last remote command accepted",
                     channel.figures()["last_seq"], box)
        for reason in sorted({*REFUSALS, *channel.refused}):
            yield Sample("mgw_edge_commands_refused_total", "remote command frames refused, by reason",
                         channel.refused[reason], {**box, "reason": reason}, True)
        for state in ("succeeded", "failed"):
            yield Sample("mgw_edge_commands_finished_total", "remote commands run, by result",
                         channel.finished[state], {**box, "state": state}, True)
        yield Sample("mgw_edge_commands_redelivered_total", "commands delivered again and answered from the store",
                     channel.redelivered, box, True)

    def _worklist_samples(self, figures: dict[str, Any], box: dict[str, str]) -> Iterator[Sample]:
        feed = self._worklist
        assert feed is not None
        yield Sample("mgw_edge_worklist_entries", "worklist steps cached and not done", figures["entries"], box)
        yield Sample("mgw_edge_worklist_last_seq", "sequence number of the last worklist update applied",
                     figures["last_seq"], box)
        if figures["update_age_s"] is not None:
            yield Sample("mgw_edge_worklist_update_age_seconds", "seconds since the last worklist update applied",
                         figures["update_age_s"], box)
        yield Sample("mgw_edge_worklist_statuses_unacked", "performed statuses the cloud has not acknowledged",
                     figures["statuses_unacked"], box)
        for outcome in ("applied", "not_newer", "unsigned", "tampered", "malformed", "failed"):
            yield Sample("mgw_edge_worklist_frames_total", "worklist frames received, by outcome",
                         feed.frames[outcome], {**box, "outcome": outcome}, True)
        yield Sample("mgw_edge_worklist_status_acks_rejected_total", "worklist status acks that did not verify",
                     feed.acks_rejected, box, True)
        yield Sample("mgw_edge_worklist_messages_dropped_total", "feed messages dropped with the inbox full",
                     feed.dropped, box, True)

    def _dicom_samples(self, box: dict[str, str]) -> Iterator[Sample]:
        counts = self._dicom_counts()
        for reason, n in sorted(counts.get("associations_rejected", {}).items()):
            yield Sample("mgw_edge_dicom_associations_rejected_total", "DICOM connections and associations refused",
                         n, {**box, "reason": reason}, True)
        for reason, n in sorted(counts.get("datasets_refused", {}).items()):
            yield Sample("mgw_edge_dicom_datasets_refused_total", "C-STORE datasets refused and quarantined",
                         n, {**box, "reason": reason}, True)
