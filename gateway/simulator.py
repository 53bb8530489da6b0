"""``mgw simulate``: N simulated boxes against a real broker and cloud, for a bounded time.

Each simulated box publishes what a real edge publishes (core.fleet and core.exam
formats, the same topics): a birth, heartbeats with plausible health figures, exam
records (a backfill of the day so far, then live exams), and now and then an outage: its
death (as the broker would publish its last will), silence, then a new birth with the
next ``bd_seq``. The broker-side will is replaced by an explicit death.

Two ways to connect:

- **A secure broker** (the cloud configuration names a broker CA: TLS, and the fleet's guard
  lets each certificate publish only under its own box id). Each simulated box is enrolled as a
  real box would be: a one-time token from the fleet CA, its own key and CSR, redeemed at the
  enrolment endpoint over HTTPS (``enrol_boxes``), and its own MQTT connection under that
  certificate. Identities are kept under ``<state_dir>/simulator`` and reused by later runs
  while valid (tokens are single-use). At most ``MAX_SECURE_BOXES`` (one connection each).
- **A plain broker** (development): the boxes share a small pool of connections.

Either way it fails loudly: a box that cannot enrol or connect ends the run with the reason
before anything is sent, and a publish the broker refuses (``MqttLink.refused``) is counted
in the report and makes ``mgw simulate`` exit 1.
"""

from __future__ import annotations

import heapq
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.adapters.mqtt_link import MqttLink
from gateway.config import CloudSettings, MqttSettings, SiteSettings
from gateway.core import fleet, topics
from gateway.core.errors import GatewayError, LocalError
from gateway.core.fleet import MessageKind
from gateway.i18n import _
from gateway.paths import Paths

MODALITIES = ("CT", "MR", "DX", "US", "MG", "CR")
MAX_BOXES, MAX_MINUTES = 5000, 1440.0
MAX_SECURE_BOXES = 500  # one TLS connection (and thread) each
CONNECT_TIMEOUT_S = 30.0
RENEW_BEFORE_S = 86400.0  # an identity with less than a day left is enrolled again


@dataclass
class SimBox:
    box_id: str
    modality: str
    site: str
    bd_seq: int = 0
    seq: int = 0
    started: float = 0.0
    online: bool = True
    back_at: float = 0.0
    backlog_items: int = 0
    disk_used: float = 50.0
    cert_not_after: float = 0.0
    quarantine: int = 0
    last_study: float | None = None
    exams: int = 0
    next_exam: float = 0.0


@dataclass
class SimReport:
    boxes: int = 0
    seconds: float = 0.0
    births: int = 0
    deaths: int = 0
    heartbeats: int = 0
    exams: int = 0
    outages: int = 0
    publish_failures: int = 0  # not handed to the broker (link down, queue full)
    publish_refused: int = 0  # refused by the broker (not authorised, quota, ...)
    last_heartbeat: dict[str, float] = field(default_factory=dict)  # box -> "at" of its last heartbeat


@dataclass(frozen=True)
class Identity:
    """A simulated box's certificate and key, issued by the fleet CA through the enrolment endpoint."""

    cert_file: Path
    key_file: Path


def box_id(i: int) -> str:
    return f"sim-{i:04d}"


def site_of(i: int) -> str:
    return f"site-{i // 4:03d}"


def enrol_boxes(settings: CloudSettings, paths: Paths, boxes: int, say: Callable[[str], None] = lambda _m: None,
                clock: Callable[[], float] = time.time) -> dict[str, Identity]:
    """An identity for each of ``boxes`` simulated boxes: kept ones while valid, new ones enrolled
    (a token from the fleet CA, a key and CSR made here, redeemed at the enrolment endpoint).
    ``LocalError`` naming the box and the reason when one cannot be had."""
    from gateway.adapters import blobs, enrolment_client, host
    from gateway.adapters.keystore import FileKeyStore
    from gateway.cloud.authority.ca import FleetAuthority

    a = settings.authority
    pki = paths.key_file(a.pki_dir)
    if not (pki / "ca.key").exists():  # never make a CA of our own: the broker would not trust it
        raise LocalError(_("the simulator enrols its boxes with the fleet CA, and {path} holds none: run it on the "
                           "cloud host, with the cloud configuration").format(path=pki))
    try:
        authority = FleetAuthority(pki)
    except GatewayError as exc:
        raise LocalError(_("the simulator enrols its boxes with the fleet CA in {path}, which is unusable here: "
                           "{reason}").format(path=pki, reason=exc)) from exc
    url = f"https://{a.enrol_hostnames[0] if a.enrol_hostnames else a.enrol_host}:{a.enrol_port}"
    root = paths.state_dir / "simulator"
    store = FileKeyStore(root / "keys")
    out: dict[str, Identity] = {}
    enrolled = 0
    try:
        ca_pem = authority.ca_pem
        for i in range(boxes):
            box = box_id(i)
            ident = Identity(root / f"{box}.pem", store.path(box))
            not_after = host.cert_not_after(str(ident.cert_file)) if ident.key_file.exists() else None
            if not_after is not None and not_after - clock() > RENEW_BEFORE_S:
                out[box] = ident
                continue
            token = authority.create_token(box, site_of(i), MODALITIES[i % len(MODALITIES)], 600)
            store.generate_ec(box)
            try:
                answer = enrolment_client.enrol(url, ca_pem, token, store.csr(box, ""))
            except GatewayError as exc:
                raise LocalError(_("simulated box {box} could not enrol at {url}: {reason}").format(
                    box=box, url=url, reason=exc)) from exc
            blobs.write_atomic(ident.cert_file, str(answer["certificate"]).encode(), mode=0o644)
            out[box] = ident
            enrolled += 1
            if enrolled % 50 == 0:
                say(_("enrolled {count} simulated boxes").format(count=enrolled))
    finally:
        authority.close()
    say(_("{enrolled} simulated boxes enrolled, {reused} identities reused ({path})").format(
        enrolled=enrolled, reused=boxes - enrolled, path=root))
    return out


class Simulator:
    def __init__(self, mqtt: MqttSettings, boxes: int, heartbeat_s: float = 30.0, outage_percent: float = 2.0,
                 seed: int = 1, backfill_hours: float = 8.0, connections: int = 0,
                 clock: Callable[[], float] = time.time, identities: dict[str, Identity] | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if not 1 <= boxes <= MAX_BOXES:
            raise LocalError(_("--boxes must be 1..{max}").format(max=MAX_BOXES))
        if identities is not None and boxes > MAX_SECURE_BOXES:
            raise LocalError(_("--boxes must be 1..{max} against a secure broker (a connection each)").format(
                max=MAX_SECURE_BOXES))
        if heartbeat_s < 1:
            raise LocalError(_("--heartbeat-s must be at least 1"))
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self._clock = clock
        self._prefix = mqtt.topic_prefix
        self.heartbeat_s = heartbeat_s
        self._outage_p = outage_percent / 100.0
        self._backfill_s = backfill_hours * 3600
        self._mqtt = mqtt
        self._connect_timeout_s = connect_timeout_s
        self.boxes = [self._new_box(i) for i in range(boxes)]
        if identities is not None:  # each box on its own connection, under its own certificate
            missing = [b.box_id for b in self.boxes if b.box_id not in identities]
            if missing:
                raise LocalError(_("no identity for simulated box {box}").format(box=missing[0]))
            self._links = [MqttLink(dc_replace(mqtt, cert_file=str(identities[b.box_id].cert_file),
                                               key_file=str(identities[b.box_id].key_file)),
                                    client_id=b.box_id, subscriptions=[], on_message=lambda m: None,
                                    session_expiry_s=0, max_inflight=100) for b in self.boxes]
        else:
            run = uuid.uuid4().hex[:8]
            n_links = connections or max(1, min(8, boxes // 50 + 1))
            self._links = [MqttLink(mqtt, client_id=f"mgw-sim-{run}-{i}", subscriptions=[],
                                    on_message=lambda m: None, session_expiry_s=0, max_inflight=1000)
                           for i in range(n_links)]
        self.report = SimReport(boxes=boxes)
        self._lock = threading.Lock()

    def _new_box(self, i: int) -> SimBox:
        rng = self._rng
        return SimBox(box_id=box_id(i), modality=MODALITIES[i % len(MODALITIES)], site=site_of(i),
                      disk_used=rng.uniform(30, 70) if rng.random() > 0.02 else rng.uniform(86, 95),
                      cert_not_after=self._clock() + 86400 * (rng.uniform(5, 25) if rng.random() < 0.03
                                                              else rng.uniform(60, 365)),
                      bd_seq=rng.randrange(1, 1000))

    # -- running ---------------------------------------------------------------------------------------
    def run(self, seconds: float, stop: threading.Event | None = None) -> SimReport:
        stop = stop or threading.Event()
        for link in self._links:
            link.start()
        try:
            deadline = time.monotonic() + self._connect_timeout_s
            down = [link.client_id for link in self._links
                    if not link.wait_connected(max(0.0, deadline - time.monotonic()))]
            if down:
                raise LocalError(_(
                    "{down} of {links} simulator connections to the broker {host}:{port} are not up after "
                    "{seconds:.0f} s (first: {first}); the log above says why (unreachable, TLS, or the broker "
                    "refused the identity)").format(down=len(down), links=len(self._links), host=self._mqtt.host,
                                                    port=self._mqtt.port, seconds=self._connect_timeout_s,
                                                    first=down[0]))
            self._loop(seconds, stop)
        finally:
            for link in self._links:
                link.stop()
            self.report.publish_refused = sum(link.refused for link in self._links)
        return self.report

    def _loop(self, seconds: float, stop: threading.Event) -> None:
        start = self._clock()
        due: list[tuple[float, int]] = []
        for i, box in enumerate(self.boxes):
            box.started = start
            self._birth(i, box)
            self._backfill(i, box, start)
            heapq.heappush(due, (start + self._rng.uniform(0, self.heartbeat_s), i))
        while not stop.is_set() and self._clock() - start < seconds:
            when, i = due[0]
            wait = when - self._clock()
            if wait > 0:
                stop.wait(min(wait, 0.2))
                continue
            heapq.heappop(due)
            heapq.heappush(due, (when + self.heartbeat_s, i))
            self._tick(i, self.boxes[i], self._clock())
        for i, box in enumerate(self.boxes):  # a clean stop: each box's death, as its will would say
            if box.online:
                self._publish(i, "state", fleet.encode(MessageKind.DEATH, box.box_id, box.bd_seq), retain=True)
                self.report.deaths += 1
        self.report.seconds = round(self._clock() - start, 1)

    def _tick(self, i: int, box: SimBox, now: float) -> None:
        if not box.online:
            if now >= box.back_at:
                box.online, box.bd_seq = True, box.bd_seq + 1
                self._birth(i, box)
            return
        if self._rng.random() < self._outage_p * self.heartbeat_s / 60.0:
            box.online, box.back_at = False, now + self._rng.uniform(60, 180)
            self._publish(i, "state", fleet.encode(MessageKind.DEATH, box.box_id, box.bd_seq), retain=True)
            self.report.deaths += 1
            self.report.outages += 1
            return
        while box.next_exam and box.next_exam <= now:
            self._exam(i, box, box.next_exam)
            box.next_exam += self._rng.expovariate(1 / 600.0)
        self._heartbeat(i, box, now)

    # -- messages ---------------------------------------------------------------------------------------
    def _publish(self, i: int, leaf: str, payload: bytes, retain: bool = False, expiry_s: int | None = None) -> None:
        link = self._links[i % len(self._links)]
        if not link.publish(topics.telemetry_topic(self._prefix, self.boxes[i].box_id, leaf), payload, qos=1,
                            retain=retain, expiry_s=expiry_s):
            self.report.publish_failures += 1

    def _birth(self, i: int, box: SimBox) -> None:
        self._publish(i, "state", fleet.encode(MessageKind.BIRTH, box.box_id, box.bd_seq, at=self._clock(),
                                               version=__version__, site=box.site, heartbeat_s=self.heartbeat_s),
                      retain=True)
        self.report.births += 1

    def _heartbeat(self, i: int, box: SimBox, now: float) -> None:
        rng = self._rng
        box.seq += 1
        box.backlog_items = max(0, box.backlog_items + rng.randint(-3, 3))
        box.quarantine = 1 if rng.random() < 0.002 else box.quarantine
        body: dict[str, Any] = {
            "seq": box.seq, "at": round(now, 3), "uptime_s": round(now - box.started, 1), "version": __version__,
            "site": box.site, "reconnects": box.bd_seq % 7, "uplink_connected": True,
            "backlog": {"items": box.backlog_items, "bytes": box.backlog_items * 520_000,
                        "oldest_unacked_age_s": round(rng.uniform(1, 40), 1) if box.backlog_items else None},
            "quarantine_items": box.quarantine,
            "disk": {"free_bytes": int((100 - box.disk_used) * 2.5e9), "total_bytes": int(2.5e11),
                     "used_percent": round(box.disk_used, 2)},
            "cpu_temp_c": round(rng.uniform(42, 68), 1), "cert_not_after": box.cert_not_after,
            "last_study": {box.modality: box.last_study} if box.last_study else {},
            "utilisation_unacked": 0, "exams_dropped": 0,
        }
        self._publish(i, "health", fleet.encode(MessageKind.HEARTBEAT, box.box_id, box.bd_seq, **body),
                      expiry_s=int(2 * self.heartbeat_s) + 1)
        self.report.heartbeats += 1
        with self._lock:
            self.report.last_heartbeat[box.box_id] = now

    def _backfill(self, i: int, box: SimBox, now: float) -> None:
        t = now - self._backfill_s
        while self._backfill_s and t < now - 900:
            t += self._rng.expovariate(1 / 1200.0)
            if t < now - 900:
                self._exam(i, box, t)
        box.next_exam = now + self._rng.expovariate(1 / 600.0)

    def _exam(self, i: int, box: SimBox, start: float) -> None:
        rng = self._rng
        duration = rng.uniform(240, 1500) if box.modality in ("CT", "MR") else rng.uniform(60, 420)
        images = rng.randint(200, 1500) if box.modality in ("CT", "MR") else rng.randint(1, 6)
        end = start + duration
        received = end + rng.uniform(1, 20)
        box.exams += 1
        box.last_study = received
        record = {"v": 1, "box_id": box.box_id, "study_key": uuid.UUID(int=rng.getrandbits(128)).hex,
                  "revision": 1, "modality": box.modality, "start": round(start, 3), "end": round(end, 3),
                  "images": images, "series": rng.randint(1, 6), "source": "header", "status": "completed",
                  "first_received_at": round(start + 5, 3), "last_received_at": round(received, 3),
                  "cloud_stored_at": round(received + rng.lognormvariate(2.5, 0.6), 3), "site": box.site}
        self._publish(i, "util", json.dumps(record, separators=(",", ":")).encode())
        self.report.exams += 1


def run_simulation(settings: CloudSettings, paths: Paths, *, boxes: int, minutes: float, heartbeat_s: float,
                   outage_percent: float, seed: int, backfill_hours: float = 8.0,
                   say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    if not 0 < minutes <= MAX_MINUTES:
        raise LocalError(_("--minutes must be in (0, {max:.0f}]").format(max=MAX_MINUTES))
    mqtt = settings.mqtt
    identities = None
    if mqtt.ca_file:  # a secure broker: every simulated box is enrolled and connects as itself
        if boxes > MAX_SECURE_BOXES:
            raise LocalError(_("--boxes must be 1..{max} against a secure broker (a connection each)").format(
                max=MAX_SECURE_BOXES))
        identities = enrol_boxes(settings, paths, boxes, say)
    sim = Simulator(mqtt, boxes, heartbeat_s, outage_percent, seed, backfill_hours, identities=identities)
    report = sim.run(minutes * 60)
    doc = {k: v for k, v in report.__dict__.items() if k != "last_heartbeat"}
    return doc


REGIONS = ("North", "East", "South", "West", "Xinjiang")
VERSIONS = (__version__, "1.4.2", "1.3.9")


def snapshot_sites(boxes: int, per_site: int = 10) -> dict[str, SiteSettings]:
    """Per-site settings for ``fleet_snapshot``'s sites: a region each, Xinjiang's in Asia/Urumqi."""
    out = {}
    for s in range((boxes + per_site - 1) // per_site):
        region = REGIONS[s % len(REGIONS)]
        out[f"site-{s:03d}"] = SiteSettings(region=region,
                                            time_zone="Asia/Urumqi" if region == "Xinjiang" else "Asia/Shanghai")
    return out


def fleet_snapshot(boxes: int, now: float, seed: int = 1, per_site: int = 10) -> list[fleet.Telemetry]:
    """A birth and one heartbeat per box, as a fleet's registry holds them after a minute: for filling
    a fleet service directly (``FleetService.apply``, the console's tests and bench) without a broker
    round trip per box. Box ``sim-NNNN`` is at ``site-(N // per_site)``; about 2% are offline (a
    death follows), a few have a full disk, an old backlog or an expiring certificate."""
    rng = random.Random(seed)  # noqa: S311 - simulation, not security
    out = []
    for i in range(boxes):
        box_id, site = f"sim-{i:04d}", f"site-{i // per_site:03d}"
        modality, version = MODALITIES[i % len(MODALITIES)], VERSIONS[0 if rng.random() < 0.8 else 1 + i % 2]
        out.append(fleet.decode("state", box_id, fleet.encode(MessageKind.BIRTH, box_id, 1, at=now, version=version,
                                                               site=site)))
        items = rng.choice((0, 0, 0, 2, 5, 40))
        body: dict[str, Any] = {
            "seq": 1, "at": round(now, 3), "uptime_s": 86400.0, "version": version, "site": site, "reconnects": i % 3,
            "uplink_connected": True, "quarantine_items": 0, "cpu_temp_c": 50.0, "utilisation_unacked": 0,
            "backlog": {"items": items, "bytes": items * 520_000,
                        "oldest_unacked_age_s": rng.uniform(1, 40) if items else None},
            "disk": {"free_bytes": 10**11, "total_bytes": 2 * 10**11,
                     "used_percent": rng.uniform(86, 95) if rng.random() < 0.01 else rng.uniform(30, 70)},
            "cert_not_after": now + 86400 * (rng.uniform(5, 25) if rng.random() < 0.02 else rng.uniform(60, 365)),
            "last_study": {modality: now - rng.uniform(60, 3 * 3600)}}
        out.append(fleet.decode("health", box_id, fleet.encode(MessageKind.HEARTBEAT, box_id, 1, **body)))
        if rng.random() < 0.02:
            out.append(fleet.decode("state", box_id, fleet.encode(MessageKind.DEATH, box_id, 1)))
    return out
