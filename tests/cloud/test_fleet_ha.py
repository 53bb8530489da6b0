"""Two fleet service instances on one fleet store (one SQLite file, or one PostgreSQL database),
against a real mosquitto: both see every box, one leads (the leader lease), an alert is raised
once, acknowledgements made through one show on the other, and when the leader stops the other
takes the lease, goes on raising and clearing alerts and its console keeps answering."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.adapters.postgres_cluster import PostgresCluster
from gateway.cloud.authority import ack_keys
from gateway.cloud.fleet.service import FleetService
from gateway.cloud.fleet.store import AlertState
from gateway.config import CloudSettings, FleetSettings, IngestSettings, MqttSettings, _fill_defaults
from gateway.core import fleet, topics
from gateway.core.acksig import verify_util_ack
from gateway.core.fleet import AlertKind, MessageKind
from gateway.paths import Paths
from tests.backends import Backend
from tests.console_auth import bearer, service_token
from tests.peers import wait_for

PREFIX = "mgw/v1"
LEASE_S = 3.0


def _settings(broker: MosquittoBroker, backend: Backend, worker_id: str) -> CloudSettings:
    return _fill_defaults(CloudSettings(
        mqtt=MqttSettings(port=broker.port, reconnect_min_s=0.2), ingest=IngestSettings(worker_id=worker_id),
        fleet=FleetSettings(http_port=0, offline_after_s=30.0, lease_s=LEASE_S, opening_hours="00:00-24:00",
                            open_weekdays=(1, 2, 3, 4, 5, 6, 7)),
        index=backend.index_settings()))


class Pair:
    """Instances ``a`` and ``b`` on one store (the same state directory: one fleet.db, one ack key)."""

    def __init__(self, broker: MosquittoBroker, backend: Backend, root: Path) -> None:
        paths = Paths(root, root / "cloud", root)
        self.running: list[FleetService] = []
        self.a = self._start(FleetService(_settings(broker, backend, "1"), paths))
        self.b = self._start(FleetService(_settings(broker, backend, "2"), paths))

    def _start(self, svc: FleetService) -> FleetService:
        self.running.append(svc)
        svc.start()
        assert svc.link.wait_connected(60)
        return svc

    def stop(self, svc: FleetService) -> None:
        self.running.remove(svc)
        svc.stop()

    def leader(self) -> FleetService:
        wait_for(lambda: sum(s.leading for s in self.running) == 1, 60, "one instance to hold the lease")
        return next(s for s in self.running if s.leading)


@pytest.fixture
def pair(broker: MosquittoBroker, backend: Backend, tmp_path: Path) -> Iterator[Pair]:
    p = Pair(broker, backend, tmp_path)
    yield p
    while p.running:
        p.running.pop().stop()


@pytest.fixture
def box_link(broker: MosquittoBroker) -> Iterator[MqttLink]:
    link = MqttLink(MqttSettings(port=broker.port), client_id="test-boxes", subscriptions=[],
                     on_message=lambda _message: None)
    link.start()
    assert link.wait_connected(60)
    yield link
    link.stop()


def state(link: MqttLink, box_id: str, kind: MessageKind, bd_seq: int) -> None:
    payload = fleet.encode(kind, box_id, bd_seq, site=f"site-{box_id}", version="9.9")
    assert link.publish(topics.telemetry_topic(PREFIX, box_id, "state"), payload, qos=1)


def get(svc: FleetService, path: str) -> Any:
    assert svc.http is not None and svc.tls.ca_file is not None
    context = ssl.create_default_context(cafile=str(svc.tls.ca_file))
    headers = {} if path == "/healthz" else bearer(service_token(svc))
    request = urllib.request.Request(svc.http.url.rstrip("/") + path, headers=headers)
    with urllib.request.urlopen(request, timeout=10, context=context) as rsp:  # noqa: S310
        body = rsp.read()
        return body.decode() if path == "/metrics" else json.loads(body)


def offline_alerts(svc: FleetService, box_id: str) -> list[Any]:
    """Every box_offline alert of the box in the shared store, open or resolved."""
    return [a for a in svc.list_alerts(state=AlertState.ALL, grouped=False)
            if a.box_id == box_id and a.kind is AlertKind.BOX_OFFLINE]


def test_both_instances_see_every_box_and_exactly_one_leads_when_they_share_a_store(
        pair: Pair, box_link: MqttLink) -> None:
    for box_id in ("ha-1", "ha-2"):
        state(box_link, box_id, MessageKind.BIRTH, 1)
    for svc in (pair.a, pair.b):
        wait_for(lambda s=svc: {b["box_id"] for b in get(s, "/api/v1/registry")["boxes"]} >= {"ha-1", "ha-2"}, 60,
                 f"{svc.instance} to list both boxes")
    leader = pair.leader()
    follower = pair.b if leader is pair.a else pair.a
    assert get(leader, "/healthz")["leader"] is True and get(follower, "/healthz")["leader"] is False
    assert get(follower, "/healthz")["leader_instance"] == leader.instance
    assert "\nmgw_fleet_leader 1.0" in get(leader, "/metrics")
    assert "\nmgw_fleet_leader 0.0" in get(follower, "/metrics")


def test_an_alert_is_raised_once_and_acknowledged_through_either_when_two_instances_share_a_store(
        pair: Pair, box_link: MqttLink) -> None:
    state(box_link, "ha-3", MessageKind.BIRTH, 1)
    wait_for(lambda: all(s.box("ha-3") is not None for s in pair.running), 60, "both instances to know the box")
    state(box_link, "ha-3", MessageKind.DEATH, 1)
    for svc in (pair.a, pair.b):  # the follower shows the leader's alert, read from the store
        wait_for(lambda s=svc: any(a.box_id == "ha-3" for a in s.open_alerts()), 60,
                 f"{svc.instance} to show the offline alert")
    assert len(offline_alerts(pair.a, "ha-3")) == 1
    leader = pair.leader()
    follower = pair.b if leader is pair.a else pair.a
    (alert,) = offline_alerts(follower, "ha-3")
    assert follower.ack(alert.id, "operator-b", "site called, power cut")  # through the follower
    wait_for(lambda: any(a.acked_by == "operator-b" for a in leader.open_alerts() if a.box_id == "ha-3"), 60,
             "the leader to show the acknowledgement made through the follower")
    acked = [a for a in leader.list_alerts(state=AlertState.ACKED, grouped=False) if a.box_id == "ha-3"]
    assert [(a.id, a.ack_note) for a in acked] == [(alert.id, "site called, power cut")]
    assert len(offline_alerts(pair.a, "ha-3")) == 1  # a flush of each later, still one


def test_the_other_instance_takes_the_lease_and_raises_and_clears_alerts_when_the_leader_stops(
        pair: Pair, box_link: MqttLink) -> None:
    state(box_link, "ha-4", MessageKind.BIRTH, 1)
    state(box_link, "ha-5", MessageKind.BIRTH, 1)
    wait_for(lambda: all(s.box("ha-5") is not None for s in pair.running), 60, "both instances to know the boxes")
    state(box_link, "ha-4", MessageKind.DEATH, 1)
    wait_for(lambda: all(any(a.box_id == "ha-4" for a in s.open_alerts()) for s in pair.running), 60,
             "both instances to show ha-4's offline alert")
    old = pair.leader()
    pair.stop(old)
    (new,) = pair.running
    wait_for(lambda: new.leading, 60, "the remaining instance to take the lease")
    assert get(new, "/healthz")["leader"] is True and get(new, "/healthz")["leader_instance"] == new.instance
    assert {b["box_id"] for b in get(new, "/api/v1/registry")["boxes"]} >= {"ha-4", "ha-5"}  # its console answers
    state(box_link, "ha-4", MessageKind.BIRTH, 2)  # back: the new leader clears the old leader's alert
    state(box_link, "ha-5", MessageKind.DEATH, 1)  # gone: the new leader raises its alert
    wait_for(lambda: [a.cleared_at is not None for a in offline_alerts(new, "ha-4")] == [True], 60,
             "the new leader to clear ha-4's alert")
    wait_for(lambda: len(offline_alerts(new, "ha-5")) == 1, 60, "the new leader to raise ha-5's alert")
    assert len(offline_alerts(new, "ha-4")) == 1  # taken over, not raised again


def test_exam_record_is_stored_once_and_acknowledged_by_each_instance_when_two_share_a_store(
        pair: Pair, box_link: MqttLink, broker: MosquittoBroker, tmp_path: Path) -> None:
    acks: list[dict[str, Any]] = []

    def on_ack(message: Inbound) -> None:
        acks.append(json.loads(message.payload))

    box = MqttLink(MqttSettings(port=broker.port), client_id="test-ha-6",
                   subscriptions=[(topics.util_ack_topic(PREFIX, "ha-6"), 1)], on_message=on_ack)
    box.start()
    try:
        assert box.wait_connected(60)
        state(box_link, "ha-6", MessageKind.BIRTH, 1)  # both subscriptions are live once both know the box
        wait_for(lambda: all(s.box("ha-6") is not None for s in pair.running), 60, "both instances to know the box")
        t0 = time.time() - 4000  # over and stored before now, whatever the time of day
        record = {"v": 1, "box_id": "ha-6", "study_key": "ab" * 16, "revision": 1, "modality": "CT", "start": t0,
                  "end": t0 + 600, "images": 30, "series": 1, "source": "header", "status": "completed",
                  "first_received_at": t0 + 10, "last_received_at": t0 + 620, "cloud_stored_at": t0 + 650,
                  "site": "site-ha-6"}
        assert box.publish(topics.telemetry_topic(PREFIX, "ha-6", "util"), json.dumps(record).encode(), qos=1)
        wait_for(lambda: len(acks) >= 2, 60, "an ack from each instance")
        keyring = ack_keys.keyring_of(tmp_path / "cloud" / "keys" / "ack.key")  # one key, shared by both
        assert [verify_util_ack(a, "ha-6", keyring) for a in acks] == [("ab" * 16, 1)] * 2  # the box takes either
        assert len(pair.a.store.exams(box_id="ha-6")) == 1
    finally:
        box.stop()


def test_no_instance_leads_while_the_store_is_out_of_reach_and_one_leads_again_when_it_is_back(
        broker: MosquittoBroker, pg_cluster: PostgresCluster, box_link: MqttLink, tmp_path: Path) -> None:
    import psycopg

    backend = Backend("postgres", pg_cluster)
    database = backend.dsn.split("dbname=", 1)[1].split()[0]
    pair = Pair(broker, backend, tmp_path)
    try:
        pair.leader()
        state(box_link, "ha-7", MessageKind.BIRTH, 1)
        wait_for(lambda: all(s.box("ha-7") is not None for s in pair.running), 120, "both instances to know the box")
        for svc in pair.running:
            assert "ha-7" in {b["box_id"] for b in get(svc, "/api/v1/registry")["boxes"]}
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:  # the database goes out of reach
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [database])
        try:
            wait_for(lambda: not any(s.leading for s in pair.running), 60, "every instance to give up the lead")
            for svc in pair.running:  # the consoles answer; the API fails closed: no session nor token is checkable
                assert get(svc, "/healthz")["leader"] is False
                with pytest.raises(urllib.error.HTTPError) as refused:
                    get(svc, "/api/v1/registry")
                assert refused.value.code == 503
        finally:
            with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        pair.leader()  # one takes the lease again once the store is back
    finally:
        while pair.running:
            pair.running.pop().stop()
