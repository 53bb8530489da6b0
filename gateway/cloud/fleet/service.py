"""The fleet service (``mgw cloud fleet``): registry, utilisation records, alerts, API, dashboard.

Telemetry arrives on paho's thread and is queued; one worker thread applies it to the
in-memory registry (core.fleet does the state changes), stores exam records and
acknowledges them, and once a second writes the changed boxes and health samples to the
fleet store in one transaction and evaluates the alert rules. The console (``http.FleetDocs``
served by ``starlette_app`` on ``adapters/uvicorn_server``, over HTTPS: ``console_tls``) reads
the registry from memory and history from the store.

Several instances may share one fleet store (docs/operations.md#running-two-fleet-processes).
Each subscribes to all telemetry and keeps the whole registry; box rows and exam records are
written by every instance (idempotent upserts), and every instance acknowledges exam records
(the box takes a duplicate ack as a no-op). What must happen once (raising, clearing, grouping
and suppressing alerts, health samples, dead letters) is done by the instance holding the leader
lease (``FleetStore.take_lease``), renewed at every flush. Every instance reads the open alerts
from the store at every flush, so acknowledgements made through another instance show at once
and a new leader continues from its predecessor's alerts.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway import __version__, config
from gateway.adapters import keystore
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.adapters.uvicorn_server import AsgiServer
from gateway.cloud import backends
from gateway.cloud.archive import versions
from gateway.cloud.archive.index import Index
from gateway.cloud.archive.versions import Version
from gateway.cloud.authority import ack_keys
from gateway.cloud.broker import pki as broker
from gateway.cloud.commands.queue import CommandQueue
from gateway.cloud.commands.rollout import Rollouts
from gateway.cloud.fleet import commission_verify
from gateway.cloud.fleet.accounts import Accounts
from gateway.cloud.fleet.analytics import opening_hours
from gateway.cloud.fleet.console_tls import ConsoleTls, console_tls
from gateway.cloud.fleet.deadletter import DeadLetterReason, DeadLetters
from gateway.cloud.fleet.http import FleetDocs
from gateway.cloud.fleet.oidc_login import OidcLogin
from gateway.cloud.fleet.starlette_app import build_app
from gateway.cloud.fleet.starlette_auth import ConsoleAuth
from gateway.cloud.fleet.store import Alert, AlertState, FleetStore
from gateway.cloud.worklist.feed import WorklistFeed
from gateway.cloud.worklist.ris import Hl7Listener, MwlPoller, StatusSender
from gateway.config import CloudSettings, FleetSettings, SiteSettings
from gateway.core import acksig, alerts, commissioning, fleet, schema, topics
from gateway.core.alerts import Maintenance, Severity, Silence
from gateway.core.errors import (
    AlertRequestError,
    CommandReplyRefused,
    FrameError,
    GatewayError,
    LocalError,
    WorklistRefused,
)
from gateway.core.fleet import AlertKind, AlertRules, BoxState, MessageKind
from gateway.logs import MSG
from gateway.paths import Paths
from gateway.supervision import StartRecord

log = logging.getLogger(__name__)
FLUSH_S = 1.0
_PRUNE_S = 3600.0
TOUCH_S = 60.0  # an open alert's last_seen (and changed detail) is written at most this often
REFUSAL_ALERT_S = 3600.0  # a box that refused a command frame has a command_refused alert this long


@dataclass
class Counters:
    messages: int = 0
    rejected: int = 0
    exams: int = 0
    lag_s_max: float = 0.0  # worst heartbeat "at" -> applied, over the last flush


class FleetService:
    def __init__(self, settings: CloudSettings, paths: Paths, clock: Callable[[], float] = time.time,
                 store: FleetStore | None = None, oidc: OidcLogin | None = None) -> None:
        self.settings = settings
        self.fleet = settings.fleet  # with the sites' rules their boxes announced (``_adopt_site``)
        self._configured_sites = frozenset(settings.fleet.sites)  # the operator's [fleet.sites.<id>] win
        self._clock = clock
        self.store: FleetStore = store or backends.open_fleet_store(settings, paths)
        self._signer = ack_keys.load_signer(paths.key_file(settings.cloud.ack_key_file))  # signs exam-record acks
        f = settings.fleet
        self.rules = _rules(f)
        self._lock = threading.Lock()
        self.boxes: dict[str, BoxState] = {  # stored health is re-checked: it may predate the checks
            s.box_id: replace(s, health=fleet.health_of(s.health)) for s in self.store.load_boxes()}
        self.dead_letters = DeadLetters(self.store, settings.dead_letters, f"fleet-{settings.ingest.worker_id}",
                                        clock)
        self._alerts_lock = threading.Lock()  # the open alerts: the worker evaluates, the API acknowledges
        self._open: dict[tuple[str, AlertKind, str], Alert] = {}
        self._outages: dict[str, frozenset[str]] = {}  # site -> its boxes in the outage (core.alerts.site_outages)
        # the leader lease: this instance's name in it is stable across restarts (host and worker id)
        self.instance = f"{socket.gethostname()}/fleet-{settings.ingest.worker_id}"
        self.leading = False
        self.leader = ""  # who holds the lease, as of the last flush
        self._reload_alerts(outages=True)
        self._dirty: set[str] = set()
        self._last_sample: dict[str, float] = {}
        self.counters = Counters()
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._stop = threading.Event()
        self._prefix = settings.mqtt.topic_prefix
        self._init_worklist(settings, paths, clock)
        self._init_commands(settings, paths, clock)
        subscriptions = [*topics.fleet_subscriptions(self._prefix), topics.commission_subscription(self._prefix),
                         *topics.command_subscriptions(self._prefix)]
        if self.worklist is not None:
            subscriptions.append(topics.worklist_status_subscription(self._prefix))
        self.link = MqttLink(settings.mqtt,
                             client_id=broker.service_client_id(settings.mqtt, "fleet", settings.ingest.worker_id),
                             subscriptions=[(t, 1) for t in subscriptions],
                             on_message=self._inbox.put, max_inflight=256)
        self._worker = threading.Thread(target=self._work, name="fleet", daemon=True)
        self.starts = StartRecord(paths.state_dir, f"fleet-{settings.ingest.worker_id}", time.time)
        self.tls: ConsoleTls = console_tls(settings, paths)
        self.accounts = Accounts(self.store.auth, f.auth)
        self.console_auth = ConsoleAuth(self.accounts, self, f.auth.trusted_proxies,
                                        oidc if oidc is not None else backends.oidc_client(settings, paths), f.oidc)
        self.http: AsgiServer | None = None
        self._paths = paths
        self._archive_index: Index | None = None  # opened at the first versions request (the console's)
        self._archive_lock = threading.Lock()

    def _init_worklist(self, settings: CloudSettings, paths: Paths, clock: Callable[[], float]) -> None:
        """The worklist feed and its RIS readers, when ``[fleet.worklist]`` turns it on. Orders are
        sealed at rest under a key derived from the envelope key (docs/security.md): a cloud secret
        that is never rotated (the ack key is) and that every fleet instance of the deployment has."""
        w = settings.fleet.worklist
        self.worklist: WorklistFeed | None = None
        self.worklist_readers: list[MwlPoller | Hl7Listener | StatusSender] = []
        self.status_sender: StatusSender | None = None
        self._next_publish = 0.0
        if not w.enabled:
            return
        secret = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
        from gateway.adapters.time_zone import zone

        tz = zone(settings.fleet.time_zone, settings.fleet.utc_offset_minutes)
        self.worklist = WorklistFeed(self.store.worklist, w, self._signer, secret, self._prefix, clock,
                                     tz.utc_offset_s)
        if w.mwl_host:
            self.worklist_readers.append(MwlPoller(self.worklist, w, clock))
        if w.hl7_port >= 0:
            self.worklist_readers.append(Hl7Listener(self.worklist, w, clock))
        self.status_sender = StatusSender(self.worklist, w, lambda: self.leading, clock)
        self.worklist_readers.append(self.status_sender)

    def _init_commands(self, settings: CloudSettings, paths: Paths, clock: Callable[[], float]) -> None:
        """The remote commands' queue: frames signed with the command key, arguments sealed at rest under
        a key derived from the envelope key (which also opens the boxes' bundles)."""
        envelope = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
        signer = ack_keys.load_signer(paths.key_file(settings.fleet.command_key_file))
        self.commands = CommandQueue(self.store.commands, signer, envelope, self._prefix, clock,
                                     settings.fleet.command_resend_s)
        self.rollouts = Rollouts(self.commands, lambda: self.fleet.command_ttl_s)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        app = build_app(FleetDocs(self), self.alive, tls=self.tls.cert_file is not None, auth=self.console_auth)
        self.http = AsgiServer(app, self.fleet.http_bind, self.fleet.http_port, "fleet-http",
                               self.tls.cert_file, self.tls.key_file)
        self.http.start()
        if not self.http.wait_started():
            self.http.stop()
            raise LocalError("the fleet console's HTTP server did not start (see the log above)")
        self._worker.start()
        self.link.start()
        for reader in self.worklist_readers:
            reader.start()
        log.info("fleet service started", extra={
            "MESSAGE_ID": MSG.SERVICE_STARTED.value, "VERSION": __version__, "URL": self.http.url,
            "BROKER": f"{self.settings.mqtt.host}:{self.settings.mqtt.port}"})

    def stop(self) -> None:
        self._stop.set()
        for reader in self.worklist_readers:
            reader.stop()
        self.link.stop()
        self._worker.join(10)
        if self.http is not None:
            self.http.stop()
        if self.leading:  # hand over at once rather than after the lease runs out
            self._guarded(lambda: self.store.release_lease(self.instance))
        self.store.close()
        with self._archive_lock:
            if self._archive_index is not None:
                self._archive_index.close()

    def archive_versions(self, sop_instance_uid: str) -> list[Version]:
        """The archive's versions of an instance, from the index the ingest workers share (console API)."""
        with self._archive_lock:
            if self._archive_index is None:
                self._archive_index = backends.open_archive_index(self.settings, self._paths)
            if self._archive_index is None:
                return []  # no archive.db here (yet): nothing archived on this node
            return versions.of_instance(self._archive_index, sop_instance_uid)

    def archive_studies(self, box_id: str, accession_hmac: str, limit: int) -> list[str]:
        """The Study Instance UIDs archived from a box under an accession digest (a resend by accession)."""
        with self._archive_lock:
            if self._archive_index is None:
                self._archive_index = backends.open_archive_index(self.settings, self._paths)
            if self._archive_index is None:
                return []  # no archive.db here (yet): nothing archived on this node
            return self._archive_index.studies_by_accession(box_id, accession_hmac, limit)

    def alive(self) -> bool:
        return (self._worker.is_alive() and self.link.alive() and (self.http is None or self.http.alive())
                and all(r.alive() for r in self.worklist_readers))  # the worklist feed's threads, when it runs

    def ports(self) -> dict[str, int]:
        """``https`` (or ``http`` when fleet.plain_http): the console's port; ``hl7``: the MLLP listener's."""
        out = {} if self.http is None else {"https" if self.http.tls else "http": self.http.port}
        for reader in self.worklist_readers:
            if isinstance(reader, Hl7Listener):
                out["hl7"] = reader.server.port
        return out

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
                self._guarded(self.accounts.prune)
                self._guarded(lambda: self.store.commands.prune(cutoff))  # noqa: B023 - called at once  # sessions past their time, stale OIDC pre-logins
                if self.worklist is not None:
                    self._guarded(lambda: self.worklist.prune(now) if self.worklist else None)  # noqa: B023
                next_prune = now + _PRUNE_S

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except GatewayError as exc:
            log.error("fleet housekeeping failed", extra={"ERROR": str(exc)})
        except Exception:  # a bug in housekeeping must not end the loop; it runs again next second
            log.exception("fleet housekeeping failed")

    def _handle(self, message: Inbound) -> None:
        """Apply one telemetry message; a message that cannot be applied is dead-lettered, never raised."""
        self.counters.messages += 1
        box_id: str | None = None
        try:
            if self.worklist is not None and message.topic.endswith("/worklist/status"):
                box_id = topics.parse_worklist_status_topic(self._prefix, message.topic)
                self._worklist_status(box_id, message.payload)
                return
            if message.topic.endswith(("/cmd/result", "/cmd/blob")):
                box_id, leaf = topics.parse_command_topic(self._prefix, message.topic)
                if leaf == "result":
                    self.commands.take_result(box_id, message.payload)
                else:
                    self.commands.take_blob_part(box_id, message.payload)
                return
            if message.topic.endswith("/commission"):
                box_id = topics.parse_commission_topic(self._prefix, message.topic)
                self._commission(box_id, message.payload)
                return
            box_id, leaf = topics.parse_telemetry_topic(self._prefix, message.topic)
            if leaf == "util":
                self._exam(box_id, message.payload)
            elif message.payload:  # an empty one clears a retained message
                self.apply(fleet.decode(leaf, box_id, message.payload))
        except (WorklistRefused, CommandReplyRefused) as exc:
            self.counters.rejected += 1
            self.dead_letters.put(box_id, message.topic, DeadLetterReason.REFUSED, str(exc), len(message.payload))
        except FrameError as exc:
            self.counters.rejected += 1
            reason = DeadLetterReason.TOPIC if box_id is None else DeadLetterReason.MALFORMED
            self.dead_letters.put(box_id, message.topic, reason, str(exc), len(message.payload))
        except LocalError as exc:  # our store failed; an exam record comes again, a heartbeat soon
            log.error("telemetry not handled", extra={"ERROR": str(exc)})
        except Exception as exc:  # a bug met by this message: set it aside, go on with the next
            log.exception("telemetry handler failed; message dead-lettered")
            self.dead_letters.put(box_id, message.topic, DeadLetterReason.INTERNAL, f"{type(exc).__name__}: {exc}",
                                  len(message.payload))

    def apply(self, msg: fleet.Telemetry) -> None:
        now = self._clock()
        with self._lock:
            before = self.boxes.get(msg.box_id)
            after = fleet.apply(before, msg, now)
            if after is None or after is before:
                return
            self.boxes[msg.box_id] = after
            self._dirty.add(msg.box_id)
        if msg.kind is MessageKind.BIRTH and self.worklist is not None:
            self.worklist.note_birth(msg.box_id, str(msg.body.get("worklist_key") or ""))
        if msg.kind is MessageKind.BIRTH:
            self._adopt_site(after.site, msg.body)
        if msg.kind in (MessageKind.BIRTH, MessageKind.HEARTBEAT):
            self.commands.note_box(msg.box_id, msg.body, born=msg.kind is MessageKind.BIRTH)
        at = msg.body.get("at")
        if msg.kind is MessageKind.HEARTBEAT and isinstance(at, float):
            self.counters.lag_s_max = max(self.counters.lag_s_max, now - at)
        if before is None or before.online != after.online:
            _log_transition(after, msg.kind.value)

    def _adopt_site(self, site: str, birth: dict[str, Any]) -> None:
        """A box announced its site's zone, hours and region (its ``[site]``, set by provisioning):
        they become the site's rules unless the cloud configuration has the site's own table. The
        last box to announce wins; rules that do not parse are ignored with a warning."""
        rules = SiteSettings(time_zone=str(birth.get("time_zone") or ""),
                             weekly_hours=tuple(str(h) for h in birth.get("weekly_hours") or ()),
                             region=str(birth.get("region") or ""))
        if not site or site in self._configured_sites or rules == SiteSettings() \
                or self.fleet.sites.get(site) == rules:
            return
        try:
            config.site_rules_hours(rules)
        except ValueError as exc:
            log.warning("site rules announced by a box ignored", extra={"SITE": site, "ERROR": str(exc)})
            return
        fleet_settings = replace(self.fleet, sites={**self.fleet.sites, site: rules})
        self.rules = _rules(fleet_settings)
        self.fleet = fleet_settings
        self.settings = replace(self.settings, fleet=fleet_settings)
        log.info("site rules adopted from a box", extra={"SITE": site, "TIME_ZONE": rules.time_zone,
                                                          "HOURS": "; ".join(rules.weekly_hours)})

    def _exam(self, box_id: str, payload: bytes) -> None:
        record = schema.parse(schema.ExamRecord, payload, "util")
        if record.box_id != box_id:
            raise FrameError("util: box id differs from the topic's")
        try:  # before storing: a record we could not acknowledge would be resent for ever
            ack = acksig.sign_util_ack(self._signer, box_id, record.study_key, record.revision)
        except ValueError as exc:
            raise FrameError("util: 'study_key' too long or not text") from exc
        doc = schema.to_builtins(record)
        doc["site"] = record.site or box_id
        if self.store.upsert_exam(doc):
            self.counters.exams += 1
            self.link.publish(topics.util_ack_topic(self._prefix, box_id), json.dumps(ack).encode(), qos=1)

    def _worklist_status(self, box_id: str, payload: bytes) -> None:
        assert self.worklist is not None
        ack = self.worklist.take_status(box_id, payload)
        self.link.publish(topics.worklist_status_ack_topic(self._prefix, box_id), json.dumps(ack).encode(), qos=1)

    def _worklist_round(self, now: float) -> None:
        """The leader's share of the feed: publish changed snapshots (statuses go to the RIS from the
        sender's own thread)."""
        if self.worklist is None or not self.leading or now < self._next_publish:
            return
        self._next_publish = now + self.fleet.worklist.publish_s
        self.worklist.publish(lambda topic, payload, retain: self.link.publish(topic, payload, qos=1, retain=retain))

    def _command_round(self) -> None:
        """The leader's share of remote commands: expire, move rollouts on, publish what is due (through
        the MQTT client's own thread: ``MqttLink.publish`` hands the frame over)."""
        if not self.leading:
            return
        self.commands.expire()
        self.rollouts.advance()
        with self._lock:
            online = {b for b, s in self.boxes.items() if s.online}
        self.commands.publish(lambda topic, frame: self.link.publish(topic, frame, qos=1), online.__contains__)

    def _commission(self, box_id: str, payload: bytes) -> None:
        """A signed commissioning report: verified (``commission_verify``), stored, acknowledged (signed)."""
        cas = commission_verify.load_cas(self._fleet_ca())
        report, signed = commission_verify.verify(payload, box_id, cas)
        ack = commissioning.sign_ack(self._signer, box_id, report.report_id)
        if self.store.commissions.add(report, signed, self._clock()):
            log.info("commissioning report stored", extra={
                "MESSAGE_ID": MSG.COMMISSION_REPORT_STORED.value, "BOX": box_id, "REPORT": report.report_id,
                "RESULT": report.result})
        self.link.publish(topics.commission_ack_topic(self._prefix, box_id), json.dumps(ack).encode(), qos=1)

    def _fleet_ca(self) -> bytes:
        """The fleet CA certificate(s): the CA file the fleet's MQTT connection trusts (the broker's issuer)."""
        ca_file = self.settings.mqtt.ca_file
        try:
            return Path(ca_file).read_bytes() if ca_file else b""
        except OSError as exc:
            raise LocalError(f"fleet CA file {ca_file}: {exc.strerror}") from exc

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
        took_over = self._lead(now)
        if self.leading:
            self.store.add_samples(self._samples(dirty, now))
            self.dead_letters.flush()
        else:
            self.dead_letters.drop_pending()  # the leader records the same letters
        self._reload_alerts(outages=took_over)
        if self.leading:
            self._evaluate(boxes, now)
        self.counters.lag_s_max = 0.0
        self._guarded(lambda: self._worklist_round(now))
        self._guarded(self._command_round)

    # -- several instances on one store: the leader lease ------------------------------------------------
    def _lead(self, now: float) -> bool:
        """Take or renew the leader lease; True if this instance has just become the leader."""
        was = self.leading
        try:
            lease = self.store.take_lease(self.instance, now, self.fleet.lease_s)
        except GatewayError:  # the store is out of reach: no lease can be renewed, and nothing written
            self.leading = False
            if was:
                log.warning("fleet leadership lost", extra={
                    "MESSAGE_ID": MSG.FLEET_LEADER_LOST.value, "INSTANCE": self.instance, "LEADER": ""})
            raise
        self.leading, self.leader = lease.held_by(self.instance), lease.holder
        if self.leading != was:
            log.info("fleet leadership %s", "taken" if self.leading else "lost", extra={
                "MESSAGE_ID": (MSG.FLEET_LEADER_TAKEN if self.leading else MSG.FLEET_LEADER_LOST).value,
                "INSTANCE": self.instance, "LEADER": lease.holder, "TERM": lease.term})
        return self.leading and not was

    def _reload_alerts(self, *, outages: bool) -> None:
        """Read the open alerts from the store (another instance may have raised, cleared or
        acknowledged some); with ``outages``, rebuild the site outages from them as well (at start
        and on taking the lease: the evaluation goes on from where the store stands). The leader
        clears a second open alert of the same condition (two leaders for a moment)."""
        found = self.store.alerts(open_only=True)
        fresh: dict[tuple[str, AlertKind, str], Alert] = {}
        doubles: list[Alert] = []
        for a in sorted(found, key=lambda a: a.id):
            key = (a.box_id, a.kind, a.subject)
            (doubles if key in fresh else []).append(a)
            fresh.setdefault(key, a)
        with self._alerts_lock:
            self._open = fresh
            if outages:
                self._outages = {
                    a.subject: frozenset(c.box_id for c in fresh.values() if c.parent_id == a.id)
                    for a in fresh.values() if a.kind is AlertKind.SITE_OFFLINE}
        if self.leading:
            for a in doubles:
                self.store.clear_alert(a.id, self._clock())

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
        site_of = {b.box_id: b.site for b in boxes}
        for state in boxes:
            for (kind, subject), detail in fleet.evaluate(state, self.rules, now).items():
                active[(state.box_id, kind, subject)] = detail
        for refused in self.store.commands.refusals(now - REFUSAL_ALERT_S):
            active[(refused["box_id"], AlertKind.COMMAND_REFUSED, "")] = (
                f"{refused['refusals']} command frames refused (last: {refused['reason'] or 'no reason'})")
        for letter in self.store.dead_letter_summary(now - self.settings.dead_letters.alert_window_s):
            active[(letter.box_id, AlertKind.DEAD_LETTERS, "")] = (
                f"{letter.messages} messages set aside (last: {letter.reason}: {letter.detail})")
        outages = alerts.site_outages(boxes, self._outages, self.fleet.site_outage_boxes,
                                      self.fleet.site_outage_window_s)
        self._outages = outages
        for site, members in outages.items():
            active[("", AlertKind.SITE_OFFLINE, site)] = alerts.outage_detail(members)
        silences = self.store.silences(active_at=now)
        windows = self.store.maintenance_windows(active_at=now)

        def site_for(key: tuple[str, AlertKind, str]) -> str:
            return key[2] if key[1] is AlertKind.SITE_OFFLINE else site_of.get(key[0], "")

        with self._alerts_lock:
            # site alerts first: the box alerts of their outage are grouped under them
            for key in sorted(active, key=lambda k: (k[1] is not AlertKind.SITE_OFFLINE, k)):
                if key in self._open:
                    continue
                detail, where = active[key], site_for(key)
                parent = self._parent(key, outages)
                hushed = alerts.suppression(key[0], where, key[1].value, now, silences, windows)
                alert = self.store.raise_alert(key[0], key[1], key[2], detail, now, site=where,
                                               parent_id=parent, suppressed_by=hushed)
                self._open[key] = alert
                log.warning("alert raised", extra={
                    "MESSAGE_ID": MSG.ALERT_RAISED.value, "BOX_ID": key[0], "SITE": where, "ALERT": key[1].value,
                    "SUBJECT": key[2], "DETAIL": detail, "SEVERITY": alert.severity.value,
                    "SUPPRESSED_BY": hushed})
            for key in [k for k in self._open if k not in active]:
                alert = self._open.pop(key)
                self.store.clear_alert(alert.id, now)
                log.info("alert cleared", extra={"MESSAGE_ID": MSG.ALERT_CLEARED.value, "BOX_ID": key[0],
                                                 "ALERT": key[1].value, "SUBJECT": key[2]})
            self._update_open(active, outages, silences, windows, now)

    def _parent(self, key: tuple[str, AlertKind, str], outages: dict[str, frozenset[str]]) -> int | None:
        """The open site alert a box_offline alert belongs under, if its box is in an outage."""
        if key[1] is not AlertKind.BOX_OFFLINE:
            return None
        for site, members in outages.items():
            if key[0] in members:
                parent = self._open.get(("", AlertKind.SITE_OFFLINE, site))
                return None if parent is None else parent.id
        return None

    def _update_open(self, active: dict[tuple[str, AlertKind, str], str], outages: dict[str, frozenset[str]],
                     silences: list[Silence], windows: list[Maintenance], now: float) -> None:
        """Group, suppress or un-suppress, and touch the alerts that stay open."""
        grouped: dict[int, list[int]] = {}
        marks: list[tuple[int, str]] = []
        touched: list[tuple[int, str, float]] = []
        for key, alert in list(self._open.items()):
            changed = alert
            parent = self._parent(key, outages)
            if parent is not None and alert.parent_id is None:
                grouped.setdefault(parent, []).append(alert.id)
                changed = replace(changed, parent_id=parent)
            hushed = alerts.suppression(alert.box_id, alert.site, alert.kind.value, now, silences, windows)
            if hushed != alert.suppressed_by:
                marks.append((alert.id, hushed))
                changed = replace(changed, suppressed_by=hushed)
            detail = active[key]
            if now - alert.last_seen >= TOUCH_S:
                touched.append((alert.id, detail, now))
                changed = replace(changed, detail=detail, last_seen=now)
            self._open[key] = changed
        for parent, ids in grouped.items():
            self.store.group_alerts(ids, parent)
        self.store.suppress_alerts(marks)
        self.store.touch_alerts(touched)

    # -- the alert lifecycle, for the console ------------------------------------------------------------
    def list_alerts(self, *, state: AlertState = AlertState.OPEN, severity: Severity | None = None,
                    site: str | None = None, kind: AlertKind | None = None, since: float = 0.0,
                    grouped: bool = True, limit: int = 1000) -> list[Alert]:
        return self.store.list_alerts(state=state, severity=severity, site=site, kind=kind, since=since,
                                      grouped=grouped, limit=limit)

    def ack(self, alert_id: int, who: str, note: str, now: float | None = None) -> dict[str, tuple[object, object]]:
        """Acknowledge an alert: ``{field: (old, new)}`` of what changed (empty if nothing), for the
        caller's audit; ``AlertRequestError`` for an unknown alert or no ``who``."""
        at = self._clock() if now is None else now
        with self._alerts_lock:
            alert = self.store.alert(alert_id)
            if alert is None:
                raise AlertRequestError(f"no alert {alert_id}")
            change = alerts.ack(alerts.Acknowledgement(alert.acked_at, alert.acked_by, alert.ack_note), who, note, at)
            if change:
                who_now, note_now = str(change["acked_by"][1]), str(change["ack_note"][1])
                self.store.acknowledge(alert_id, who_now, note_now, at)
                key = (alert.box_id, alert.kind, alert.subject)
                if key in self._open and self._open[key].id == alert_id:
                    self._open[key] = replace(self._open[key], acked_at=at, acked_by=who_now, ack_note=note_now)
        return change

    def silence(self, *, box_id: str = "", site: str = "", kind: str = "", ends_at: float, who: str, reason: str,
                starts_at: float | None = None, now: float | None = None) -> Silence:
        """Create a silence; matching open alerts are marked suppressed by the next evaluation (within a second)."""
        at = self._clock() if now is None else now
        start = at if starts_at is None else starts_at
        box_id, site, kind, who, reason = alerts.check_silence(box_id, site, kind, start, ends_at, who, reason)
        return self.store.add_silence(box_id, site, kind, start, ends_at, who, reason, at)

    def expire_silence(self, silence_id: int, now: float | None = None) -> Silence:
        silence = self.store.expire_silence(silence_id, self._clock() if now is None else now)
        if silence is None:
            raise AlertRequestError(f"no silence {silence_id}")
        return silence

    def silences(self, *, active_only: bool = True, now: float | None = None) -> list[Silence]:
        return self.store.silences(active_at=(self._clock() if now is None else now) if active_only else None)

    def maintenance(self, *, site: str = "", box_id: str = "", starts_at: float, ends_at: float, who: str,
                    reason: str = "", now: float | None = None) -> Maintenance:
        """Plan a maintenance window: alerts of the site or box are suppressed while it is in force."""
        at = self._clock() if now is None else now
        site, box_id, who, reason = alerts.check_maintenance(site, box_id, starts_at, ends_at, who, reason)
        return self.store.add_maintenance(site, box_id, starts_at, ends_at, who, reason, at)

    def end_maintenance(self, window_id: int, now: float | None = None) -> Maintenance:
        window = self.store.end_maintenance(window_id, self._clock() if now is None else now)
        if window is None:
            raise AlertRequestError(f"no maintenance window {window_id}")
        return window

    def maintenance_windows(self, *, active_only: bool = True, now: float | None = None) -> list[Maintenance]:
        return self.store.maintenance_windows(active_at=(self._clock() if now is None else now) if active_only
                                              else None)

    # -- for the API --------------------------------------------------------------------------------------
    def registry(self) -> list[BoxState]:
        with self._lock:
            return list(self.boxes.values())

    def open_alerts(self) -> list[Alert]:
        with self._alerts_lock:
            return list(self._open.values())

    def box(self, box_id: str) -> BoxState | None:
        with self._lock:
            return self.boxes.get(box_id)


def _rules(f: FleetSettings) -> AlertRules:
    return AlertRules(f.offline_after_s, f.backlog_alert_minutes * 60, f.disk_alert_percent, f.cert_alert_days,
                      f.silent_modality_hours * 3600, opening_hours(f),
                      {site: opening_hours(f, site) for site in f.sites})


def _log_transition(state: BoxState, cause: str) -> None:
    msg = MSG.BOX_ONLINE if state.online else MSG.BOX_OFFLINE
    log.info("box %s", "online" if state.online else "offline", extra={
        "MESSAGE_ID": msg.value, "BOX_ID": state.box_id, "CAUSE": cause, "BD_SEQ": state.bd_seq})
