"""One thread owns each paho client and its TLS socket (gateway.adapters.mqtt_link).

Several threads publish through one ``MqttLink`` at once, and another thread
publishes acks and sends manual PUBACKs through a second one, while both network
threads read, against a real mosquitto with mutual TLS. Before the link queued
its commands, the callers wrote to the TLS socket themselves, next to the network
thread: OpenSSL's state was corrupted (heap corruption, "bad record mac",
"protocol error" at the broker).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.mqtt_link import Inbound, MqttLink, Will
from gateway.cloud.authority.ca import FleetAuthority
from gateway.config import MqttSettings
from gateway.link_proxy import LinkProxy
from tests.peers import _missing, wait_for
from tests.tls_peers import (
    PREFIX,
    box_identity,
    broken_streams,
    broker_log_offset,
    fleet_ca_and_tls_broker,
    service_identity,
)

BOX = "box-1"
PUBLISHERS = 4
PER_PUBLISHER = 250
PROBE = b"probe"
INGEST_WORKERS = 2


@pytest.fixture
def tls_fleet(tmp_path: Path) -> Iterator[tuple[FleetAuthority, MosquittoBroker]]:
    with fleet_ca_and_tls_broker(tmp_path) as made:
        yield made


def _settings(broker: MosquittoBroker, ca: Path, cert: Path, key: Path) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=broker.port, ca_file=str(ca), cert_file=str(cert),
                        key_file=str(key), reconnect_min_s=0.2, reconnect_max_s=1.0)


def _payload(thread: int, n: int) -> bytes:
    size = 1024 + (thread * 7919 + n * 4099) % 30000  # 1-31 KiB: many partial socket writes
    return (f"{thread}:{n}:".encode() * (size // 8 + 1))[:size]


def test_every_message_arrives_without_a_reconnect_when_many_threads_publish_and_ack_at_once(
        tls_fleet: tuple[FleetAuthority, MosquittoBroker], tmp_path: Path) -> None:
    authority, broker = tls_fleet
    assert broker.tls is not None
    ca = broker.tls.ca_file
    box_cert, box_key = box_identity(authority, BOX, tmp_path / "ids")
    ingest_cert, ingest_key = service_identity(authority, "ingest", "1", tmp_path / "ids")
    chunk_topic = f"{PREFIX}/{BOX}/up/" + "0" * 31 + "1"
    ack_topic = f"{PREFIX}/{BOX}/ack"

    inbox: queue.Queue[Inbound] = queue.Queue()
    received: list[str] = []  # sha256 of each chunk, on the ingest worker thread
    acks_seen: list[bytes] = []  # on the box link's network thread
    ingest = MqttLink(_settings(broker, ca, ingest_cert, ingest_key), "cloud.ingest.1",  # client id = certificate CN
                      subscriptions=[(f"$share/threads/{PREFIX}/+/up/+", 1)], on_message=inbox.put, manual_ack=True,
                      session_expiry_s=0)
    box = MqttLink(_settings(broker, ca, box_cert, box_key), BOX,
                   subscriptions=[(ack_topic, 1)], on_message=lambda m: acks_seen.append(m.payload), session_expiry_s=0)
    stop, subscribed = threading.Event(), threading.Event()

    def ingest_worker() -> None:  # like CloudService._work: publish an ack, then PUBACK, off the network thread
        while not stop.is_set():
            try:
                message = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if message.payload == PROBE:
                subscribed.set()
                ingest.ack(message)
                continue
            digest = hashlib.sha256(message.payload).hexdigest()
            received.append(digest)
            ingest.publish(ack_topic, digest.encode(), qos=1)
            ingest.ack(message)

    refused: list[tuple[int, int]] = []

    def publisher(thread: int) -> None:  # like Sender.pump on the edge loop, four of them at once
        for n in range(PER_PUBLISHER):
            if not box.publish(chunk_topic, _payload(thread, n), qos=1):
                refused.append((thread, n))

    workers = [threading.Thread(target=ingest_worker, name=f"test-ingest-worker-{n}", daemon=True)
               for n in range(INGEST_WORKERS)]
    ingest.start()
    box.start()
    for worker in workers:
        worker.start()
    try:
        assert ingest.wait_connected(60) and box.wait_connected(60)
        # CONNACK comes before SUBACK: probes until one reaches the ingest link (the box's own
        # subscription is in effect before its first probe leaves: one connection is in order).
        assert any(box.publish(chunk_topic, PROBE) and subscribed.wait(0.5) for _ in range(30))
        since = broker_log_offset(broker)  # both clients are in; what follows must be quiet
        threads = [threading.Thread(target=publisher, args=(t,), name=f"test-publisher-{t}") for t in range(PUBLISHERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        total = PUBLISHERS * PER_PUBLISHER
        wait_for(lambda: (len(received) >= total and len(acks_seen) >= total) or box.reconnects or ingest.reconnects
                 or refused, 180, "every chunk at the ingest link and every ack back at the box link")
        expected = sorted(hashlib.sha256(_payload(t, n)).hexdigest()
                          for t in range(PUBLISHERS) for n in range(PER_PUBLISHER))
        broken = broken_streams(broker, since)  # before our own disconnects
        assert broken == []
        assert box.reconnects == 0 and ingest.reconnects == 0
        assert refused == []
        assert sorted(received) == expected  # every message, exactly once (no reconnect, so no resend)
        assert box.connected and ingest.connected
        assert sorted(a.decode() for a in acks_seen) == expected
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        box.stop()
        ingest.stop()
    assert not box.alive() and not ingest.alive()


@pytest.fixture
def plain_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MosquittoBroker]:
    """No TLS; ``@pytest.mark.parametrize("plain_broker", [limits], indirect=True)`` sets broker limits."""
    try:
        broker = MosquittoBroker(tmp_path / "plain-broker", limits=getattr(request, "param", None))
    except Exception as exc:  # noqa: BLE001 - only to skip or fail with the reason
        _missing(str(exc))
    broker.start()
    yield broker
    broker.stop()


def wait_subscribed(link: MqttLink, topic: str, inbox: queue.Queue[Inbound]) -> None:
    """CONNACK comes before SUBACK; a message the link itself publishes to ``topic`` after
    subscribing comes back once the subscription is in effect (one connection is in order)."""
    assert link.publish(topic, PROBE)
    probe = inbox.get(timeout=15)
    assert probe.payload == PROBE
    link.ack(probe)


# One QoS 1 message in flight per client: a later message proves the earlier PUBACK arrived.
@pytest.mark.parametrize("plain_broker", [{"max_inflight_messages": 1}], indirect=True)
def test_puback_of_an_ended_connection_is_dropped_and_the_broker_redelivers_when_the_link_reconnects(
        plain_broker: MosquittoBroker) -> None:
    proxy = LinkProxy()
    proxy.target = ("127.0.0.1", plain_broker.port)
    inbox: queue.Queue[Inbound] = queue.Queue()
    sub = MqttLink(MqttSettings(port=proxy.port, reconnect_min_s=0.1, reconnect_max_s=0.5), "redeliver-sub",
                   subscriptions=[("t/#", 1)], on_message=inbox.put, manual_ack=True, session_expiry_s=300)
    pub = MqttLink(MqttSettings(port=plain_broker.port), "redeliver-pub", subscriptions=[],
                   on_message=lambda m: None, session_expiry_s=0)
    sub.start()
    pub.start()
    try:
        assert sub.wait_connected(60) and pub.wait_connected(60)
        wait_subscribed(sub, "t/probe", inbox)
        assert pub.publish("t/1", b"first")
        first = inbox.get(timeout=10)
        proxy.cut()
        wait_for(lambda: not sub.connected, 60, "the cut noticed")
        assert not sub.publish("t/x", b"refused")  # down: refused at once, nothing queued
        proxy.restore()
        again = inbox.get(timeout=15)  # not acknowledged, so the broker sends it again on the new connection
        assert (again.payload, again.epoch) == (first.payload, first.epoch + 1)
        sub.ack(first)  # its connection is gone: dropped, never sent on the new one
        wait_for(lambda: sub.dropped == 1, 60, "the stale PUBACK dropped")
        assert pub.publish("t/2", b"marker")  # the broker holds it until "first" is acknowledged
        sub.ack(again)
        assert inbox.get(timeout=15).payload == b"marker"
        assert sub.reconnects == 1
    finally:
        sub.stop()
        pub.stop()
        proxy.close()


def test_queued_messages_leave_before_the_will_when_the_link_stops(plain_broker: MosquittoBroker) -> None:
    got: queue.Queue[Inbound] = queue.Queue()
    sub = MqttLink(MqttSettings(port=plain_broker.port), "stop-sub", subscriptions=[("s/#", 1)],
                   on_message=got.put, session_expiry_s=0)
    pub = MqttLink(MqttSettings(port=plain_broker.port), "stop-pub", subscriptions=[], on_message=lambda m: None,
                   session_expiry_s=0, will=Will("s/will", b"gone", qos=1, retain=False))
    sub.start()
    pub.start()
    try:
        assert sub.wait_connected(60) and pub.wait_connected(60)
        wait_subscribed(sub, "s/probe", got)
        sent = [f"m{n}".encode() * 500 for n in range(100)]  # more than the broker lets be in flight (64)
        assert all(pub.publish("s/m", body) for body in sent)
        pub.stop(send_will=True)  # at once: most of them are still queued, the last 36 held back by paho
        assert not pub.alive() and pub.reconnects == 0
        assert [got.get(timeout=15).payload for _ in range(len(sent) + 1)] == [*sent, b"gone"]
    finally:
        pub.stop()
        sub.stop()


@pytest.mark.parametrize("resumed", [True, False], ids=["session kept", "new session"])
def test_publishes_queued_at_a_cut_go_on_the_next_connection_only_when_the_broker_kept_the_session(
        plain_broker: MosquittoBroker, resumed: bool) -> None:
    """A throttled link holds most publishes in the link's queue; then it is cut. With the session
    kept, every publish the link accepted arrives (paho redelivers what it had written, the queue
    goes on the new connection); with a new session the queued ones are dropped (the sender resends)."""
    proxy = LinkProxy()
    proxy.target = ("127.0.0.1", plain_broker.port)
    inbox: queue.Queue[Inbound] = queue.Queue()
    sub = MqttLink(MqttSettings(port=plain_broker.port), "queued-sub", subscriptions=[("q/#", 1)],
                   on_message=inbox.put, session_expiry_s=300)
    pub = MqttLink(MqttSettings(port=proxy.port, reconnect_min_s=0.1, reconnect_max_s=0.5), "queued-pub",
                   subscriptions=[], on_message=lambda m: None, session_expiry_s=300 if resumed else 0)
    sub.start()
    pub.start()
    try:
        assert sub.wait_connected(60) and pub.wait_connected(60)
        wait_subscribed(sub, "q/probe", inbox)
        proxy.rate_bps = 4096  # the socket buffers fill, then paho's, then the link's queue
        accepted: list[int] = []
        for n in range(1000):  # until the queue is full (publish waits for room, then says no)
            if not pub.publish(f"q/{n}", n.to_bytes(4, "big") + bytes(65532)):
                break
            accepted.append(n)
        assert len(accepted) > 100
        proxy.cut()
        wait_for(lambda: not pub.connected, 60, "the cut noticed")
        proxy.rate_bps = 0
        proxy.restore()
        wait_for(lambda: pub.connected, 60, "the publisher reconnected")
        assert pub.session_present is resumed
        got: set[int] = set()

        def arrived() -> bool:
            while True:
                try:
                    got.add(int.from_bytes(inbox.get(timeout=0.5).payload[:4], "big"))
                except queue.Empty:
                    return set(accepted) <= got
        if resumed:
            try:
                wait_for(arrived, 120, "every accepted publish at the subscriber")
            except BaseException:
                print("accepted", len(accepted), "got", len(got), "missing", sorted(set(accepted) - got)[:20],
                      "dropped", pub.dropped)
                raise
            assert pub.dropped == 0
        else:
            wait_for(lambda: pub.dropped > 0, 60, "the queued publishes of the old session dropped")
            arrived()
            assert not set(accepted) <= got  # lost with the session: the sender's window resends them
    finally:
        sub.stop()
        pub.stop()
        proxy.close()
