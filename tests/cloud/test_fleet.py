"""The fleet service against a real mosquitto: telemetry in, registry, exam records acknowledged,
alerts raised and cleared, the REST API and /metrics over real HTTPS, and the simulator."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud.authority import ack_keys
from gateway.cloud.fleet.service import FleetService
from gateway.config import CloudSettings, FleetSettings, IngestSettings, MqttSettings, SiteSettings, _fill_defaults
from gateway.core import fleet, topics
from gateway.core.acksig import verify_util_ack
from gateway.core.errors import UnexpectedAckError
from gateway.core.fleet import MessageKind
from gateway.paths import Paths
from gateway.simulator import Simulator
from tests.backends import Backend
from tests.console_auth import bearer, service_token
from tests.peers import wait_for

PREFIX = "mgw/v1"


def settings(broker: MosquittoBroker, backend: Backend, **fleet_keys: Any) -> CloudSettings:
    fleet_settings = FleetSettings(http_port=0, opening_hours="00:00-24:00",
                                   open_weekdays=(1, 2, 3, 4, 5, 6, 7), **fleet_keys)
    return _fill_defaults(CloudSettings(mqtt=MqttSettings(port=broker.port, reconnect_min_s=0.2),
                                        ingest=IngestSettings(), fleet=fleet_settings,
                                        index=backend.index_settings()))


@pytest.fixture
def service(broker: MosquittoBroker, tmp_path: Path, backend: Backend) -> Iterator[FleetService]:
    svc = FleetService(settings(broker, backend, offline_after_s=3.0), Paths(tmp_path, tmp_path / "cloud", tmp_path))
    svc.start()
    assert svc.link.wait_connected(60)
    yield svc
    svc.stop()


class Box:
    """A box's telemetry link, as a real client of the broker."""

    made: list[Box] = []  # stopped after each test (see the autouse fixture)

    def __init__(self, broker: MosquittoBroker, box_id: str) -> None:
        Box.made.append(self)
        self.box_id = box_id
        self.acks: list[dict[str, Any]] = []
        self.link = MqttLink(MqttSettings(port=broker.port), client_id=f"test-{box_id}",
                             subscriptions=[(topics.util_ack_topic(PREFIX, box_id), 1)], on_message=self._ack)
        self.link.start()
        assert self.link.wait_connected(60)

    def _ack(self, message: Inbound) -> None:
        self.acks.append(json.loads(message.payload))

    def send(self, leaf: str, payload: bytes) -> None:
        assert self.link.publish(topics.telemetry_topic(PREFIX, self.box_id, leaf), payload, qos=1)

    def state(self, kind: MessageKind, bd_seq: int) -> None:
        self.send("state", fleet.encode(kind, self.box_id, bd_seq, site="clinic-a", version="9.9"))


@pytest.fixture(autouse=True)
def _stop_boxes() -> Iterator[None]:
    yield
    while Box.made:
        Box.made.pop().link.stop()


def get(svc: FleetService, path: str) -> Any:
    assert svc.http is not None and svc.tls.ca_file is not None  # HTTPS, its certificate from the fleet CA
    context = ssl.create_default_context(cafile=str(svc.tls.ca_file))
    req = urllib.request.Request(svc.http.url.rstrip("/") + path, headers=bearer(service_token(svc)))  # admin
    with urllib.request.urlopen(req, timeout=10, context=context) as rsp:  # noqa: S310
        body = rsp.read()
        return body.decode() if path == "/metrics" else json.loads(body)


def box_doc(svc: FleetService, box_id: str) -> dict[str, Any] | None:
    return next((b for b in get(svc, "/api/v1/registry")["boxes"] if b["box_id"] == box_id), None)


def test_registry_ignores_a_stale_death_when_the_box_was_reborn(service: FleetService, broker: MosquittoBroker) -> None:
    box = Box(broker, "box-a")
    box.state(MessageKind.BIRTH, 4)
    wait_for(lambda: (d := box_doc(service, "box-a")) and d["online"], 60, "box-a online")
    box.state(MessageKind.BIRTH, 5)
    box.state(MessageKind.DEATH, 4)  # a late will from the previous connection
    box.send("health", fleet.encode(MessageKind.HEARTBEAT, "box-a", 5, at=1.0, disk={"used_percent": 97.0}))
    wait_for(lambda: "disk_full" in (box_doc(service, "box-a") or {}).get("alerts", []), 60, "disk alert")
    assert box_doc(service, "box-a")["online"] and box_doc(service, "box-a")["site"] == "clinic-a"
    box.state(MessageKind.DEATH, 5)
    wait_for(lambda: not box_doc(service, "box-a")["online"], 60, "box-a offline after its death")

    def kinds() -> set[tuple[str, bool]]:
        return {(a["kind"], a["cleared_at"] is None) for a in get(service, "/api/v1/alerts?all=1")["alerts"]}

    # the offline alert is raised, and the disk alert cleared (an offline box's figures are stale),
    # by the fleet's evaluation passes: wait for both, whichever pass does each
    wait_for(lambda: {("box_offline", True), ("disk_full", False)} <= kinds(), 60,
             "the offline alert raised and the disk alert cleared")


def test_registry_and_open_alerts_survive_when_the_fleet_service_restarts(
        broker: MosquittoBroker, tmp_path: Path, backend: Backend) -> None:
    paths = Paths(tmp_path, tmp_path / "cloud", tmp_path)
    first = FleetService(settings(broker, backend, offline_after_s=60.0), paths)
    first.start()
    assert first.link.wait_connected(60)
    box = Box(broker, "box-r")
    box.state(MessageKind.BIRTH, 3)  # retained: the fleet gets it whenever its subscription is live
    wait_for(lambda: box_doc(first, "box-r"), 30, "box-r known")
    box.send("health", fleet.encode(MessageKind.HEARTBEAT, "box-r", 3, at=1.0, quarantine_items=2))
    wait_for(lambda: (d := box_doc(first, "box-r")) and "quarantine_not_empty" in d["alerts"], 60, "the alert")
    first.stop()
    assert (tmp_path / "cloud" / "fleet.db").exists() == (backend.name == "sqlite")
    second = FleetService(settings(broker, backend, offline_after_s=60.0), paths)
    try:
        state = second.box("box-r")
        assert state is not None and state.bd_seq == 3 and state.health["quarantine_items"] == 2
        assert [(a.box_id, a.kind.value) for a in second.open_alerts()] == [("box-r", "quarantine_not_empty")]
    finally:
        second.store.close()


def test_box_goes_offline_when_heartbeats_stop(service: FleetService, broker: MosquittoBroker) -> None:
    box = Box(broker, "box-b")
    box.state(MessageKind.BIRTH, 1)
    wait_for(lambda: box_doc(service, "box-b"), 30, "box-b known")
    box.send("health", fleet.encode(MessageKind.HEARTBEAT, "box-b", 1, at=1.0))
    wait_for(lambda: (d := box_doc(service, "box-b")) and d["heartbeat_at"] == 1.0, 60, "box-b's heartbeat")
    wait_for(lambda: not box_doc(service, "box-b")["online"], 60, "box-b offline after offline_after_s")
    # the registry turns it offline first; the alert follows in the same flush, after the store's writes
    wait_for(lambda: "box_offline" in box_doc(service, "box-b")["alerts"], 60, "box-b's offline alert")
    metrics = get(service, "/metrics")
    assert 'mgw_fleet_box_up{box_id="box-b",site="clinic-a"} 0.0' in metrics
    assert 'mgw_fleet_alerts_open{kind="box_offline"} 1.0' in metrics


def test_exam_record_is_stored_once_and_acknowledged_when_resent(service: FleetService, broker: MosquittoBroker,
                                                                 tmp_path: Path) -> None:
    box = Box(broker, "box-c")
    box.state(MessageKind.BIRTH, 1)
    # the fleet's subscription is live once it has seen this box (exam records are not retained)
    wait_for(lambda: box_doc(service, "box-c"), 30, "box-c known to the fleet")
    day_start = time.time() // 86400 * 86400
    if time.time() - day_start < 900:  # the exam below (and its storing) must be over, and today (UTC)
        pytest.skip("between 00:00 and 00:15 UTC no finished 10-minute exam fits in today")
    t0 = day_start + 60  # 00:01 to 00:11 UTC today: over before now
    record = {"v": 1, "box_id": "box-c", "study_key": "ab" * 16, "revision": 2, "modality": "CT", "start": t0,
              "end": t0 + 600, "images": 300, "series": 3, "source": "header", "status": "completed",
              "first_received_at": t0 + 10, "last_received_at": t0 + 620, "cloud_stored_at": t0 + 650,
              "site": "clinic-c"}
    box.send("util", json.dumps(record).encode())
    box.send("util", json.dumps({**record, "revision": 1, "images": 1}).encode())  # an older revision, late
    box.send("util", b"{not json")
    for unstorable in ({"images": 2**31}, {"revision": -1}, {"modality": "C\x00T"}):  # on neither backend
        box.send("util", json.dumps({**record, "study_key": "cd" * 16, **unstorable}).encode())
    box.send("util", json.dumps({**record, "study_key": "cd" * 16}).replace('"end": ' + str(t0 + 600),
                                                                          '"end": NaN').encode())
    box.send("util", json.dumps({**record, "study_key": "e" * 256}).encode())  # too long to sign an ack for
    wait_for(lambda: len(box.acks) >= 1, 60, "the ack of revision 2")
    wait_for(lambda: service.counters.rejected >= 6, 60, "the malformed and unstorable records refused")
    keyring = ack_keys.keyring_of(tmp_path / "cloud" / "keys" / "ack.key")  # the service made the key
    assert box.acks[0]["v"] == 2 and verify_util_ack(box.acks[0], "box-c", keyring) == ("ab" * 16, 2)
    with pytest.raises(UnexpectedAckError):
        verify_util_ack(box.acks[0], "box-d", keyring)  # signed for box-c only
    modalities = get(service, "/api/v1/modalities")["modalities"]
    assert [(m["box_id"], m["modality"], m["exams"], m["images"]) for m in modalities] == [("box-c", "CT", 1, 300)]
    site = get(service, "/api/v1/turnaround?days=2")["sites"][0]
    assert (site["p50_s"], site["target_s"], site["over_target"]) == (30.0, service.fleet.turnaround_target_s, False)
    by_modality = get(service, "/api/v1/turnaround/by-modality?days=2")
    assert [(g["site"], g["modality"], g["p50_s"], g["over_target"]) for g in by_modality["groups"]] == [
        ("clinic-c", "CT", 30.0, False)]
    assert by_modality["over_target"] == []
    idle = get(service, "/api/v1/idle-capacity")
    scanner = next(s for s in idle["scanners"] if (s["box_id"], s["modality"]) == ("box-c", "CT"))
    assert scanner["site"] == "clinic-c" and scanner["busy_hours"] == pytest.approx(600 / 3600, abs=0.01)
    assert idle["by_modality"]["CT"]["scanners"] == 1
    # opening time passed is busy or free; what is free this week is that plus what is still to come
    assert scanner["busy_hours"] + scanner["free_passed_hours"] == pytest.approx(scanner["open_hours"], abs=0.02)
    assert scanner["free_hours"] == pytest.approx(scanner["free_passed_hours"] + scanner["remaining_hours"], abs=0.02)
    util = get(service, "/api/v1/utilisation?box=box-c&modality=CT&days=1")
    today = util["days"][-1]  # occupancy over the part of today already passed, not all 24 h
    assert today["exams"] == 1 and today["scheduled_hours"] == 24.0
    assert today["occupancy"] == pytest.approx(600 / (today["open_hours"] * 3600), rel=0.01)


def test_simulated_fleet_is_registered_when_the_simulator_runs(service: FleetService, broker: MosquittoBroker) -> None:
    sim = Simulator(MqttSettings(port=broker.port), boxes=40, heartbeat_s=2.0, outage_percent=0.0, backfill_hours=1)
    stop = threading.Event()
    runner = threading.Thread(target=sim.run, args=(6.0, stop))
    runner.start()
    try:
        wait_for(lambda: sum(b["online"] and b["heartbeat_at"] is not None
                             for b in get(service, "/api/v1/registry")["boxes"]) == 40, 20, "40 boxes' heartbeats")
    finally:
        stop.set()
        runner.join(20)
    assert sim.report.heartbeats >= 40 and sim.report.publish_failures == 0
    wait_for(lambda: service.counters.exams >= sim.report.exams > 0, 60, "every simulated exam stored")
    wait_for(lambda: not any(b["online"] for b in get(service, "/api/v1/registry")["boxes"]), 10,
             "every simulated box offline after its final death")


def test_poison_telemetry_is_dead_lettered_and_alerted_and_the_loop_goes_on_when_fields_have_wrong_types(
        service: FleetService, broker: MosquittoBroker) -> None:
    rogue, honest = Box(broker, "box-rogue"), Box(broker, "box-ok")
    rogue.state(MessageKind.BIRTH, 1)
    # What crashed the fleet service: a heartbeat whose figures have the wrong JSON types, and a
    # retained state message the broker would hand it again after every restart.
    rogue.send("health", json.dumps({"v": 1, "kind": "heartbeat", "box_id": "box-rogue", "bd_seq": 1,
                                     "backlog": [1, 2], "disk": "full"}).encode())
    rogue.send("state", b'{"v":1,"kind":"birth","box_id":"box-rogue","bd_seq":"two"}')
    rogue.send("util", b"[" * 50_000 + b"]" * 50_000)
    honest.state(MessageKind.BIRTH, 7)
    honest.send("health", fleet.encode(MessageKind.HEARTBEAT, "box-ok", 7, at=1.0, disk={"used_percent": 10.0}))
    wait_for(lambda: (d := box_doc(service, "box-ok")) and d["online"] and d["disk"], 60, "the honest box")
    wait_for(lambda: len(get(service, "/api/v1/dead-letters?box=box-rogue")["dead_letters"]) == 3, 20,
             "three dead letters for the rogue box")
    letters = get(service, "/api/v1/dead-letters?box=box-rogue")["dead_letters"]
    assert {d["reason"] for d in letters} == {"malformed"}
    assert any("backlog" in d["detail"] for d in letters) and any("bd_seq" in d["detail"] for d in letters)
    wait_for(lambda: "dead_letters" in (box_doc(service, "box-rogue") or {}).get("alerts", []), 20,
             "the dead_letters alert")
    assert "dead_letters" not in box_doc(service, "box-ok")["alerts"]
    assert service.alive()
    assert 'mgw_fleet_dead_letters_total{reason="malformed"} 3.0' in get(service, "/metrics")


def test_site_rules_come_from_the_box_when_provisioning_set_them_and_the_cloud_has_none(
        broker: MosquittoBroker, tmp_path: Path, backend: Backend) -> None:
    configured = {"clinic-cfg": SiteSettings(time_zone="Asia/Shanghai", weekly_hours=("mon-sun 00:00-24:00",))}
    svc = FleetService(settings(broker, backend, offline_after_s=30.0, sites=configured),
                       Paths(tmp_path, tmp_path / "cloud", tmp_path))
    svc.start()
    try:
        assert svc.link.wait_connected(60)
        box, other, odd = Box(broker, "box-u"), Box(broker, "box-cfg"), Box(broker, "box-odd")
        box.send("state", fleet.encode(MessageKind.BIRTH, "box-u", 1, site="clinic-u", time_zone="Asia/Urumqi",
                                       weekly_hours=["mon-fri 09:00-19:00", "sat 10:00-14:00"], region="Xinjiang"))
        other.send("state", fleet.encode(MessageKind.BIRTH, "box-cfg", 1, site="clinic-cfg", time_zone="Europe/Paris",
                                         weekly_hours=["mon 08:00-09:00"]))
        odd.send("state", fleet.encode(MessageKind.BIRTH, "box-odd", 1, site="clinic-odd",
                                       weekly_hours=["someday 25:00-26:00"]))
        rules = wait_for(lambda: (r := get(svc, "/api/v1/utilisation?box=box-u&modality=CT&days=1"))
                         ["time_zone"] == "Asia/Urumqi" and r, 30, "the announced zone in use")
        assert rules["weekly_hours"]["mon"] == [9 * 3600, 19 * 3600] and rules["weekly_hours"]["sun"] is None
        assert svc.fleet.sites["clinic-u"].region == "Xinjiang"
        wait_for(lambda: svc.box("box-odd") is not None and svc.box("box-cfg") is not None, 30, "every birth applied")
        assert svc.fleet.sites["clinic-cfg"] == configured["clinic-cfg"]  # the operator's table wins
        assert "clinic-odd" not in svc.fleet.sites  # hours that do not parse are not adopted
        assert svc.alive()
    finally:
        svc.stop()
