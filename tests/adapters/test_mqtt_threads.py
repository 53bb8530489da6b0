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
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud import broker as broker_pki
from gateway.cloud.authority import FleetAuthority
from gateway.config import MqttSettings
from tests.peers import _missing, wait_for
from tests.tls_peers import PREFIX, box_identity, broken_streams, broker_log_offset, start_tls_broker

BOX = "box-1"
PUBLISHERS = 4
PER_PUBLISHER = 250
INGEST_WORKERS = 2


@pytest.fixture
def tls_fleet(tmp_path: Path) -> Iterator[tuple[FleetAuthority, MosquittoBroker]]:
    authority = FleetAuthority(tmp_path / "ca")
    try:
        broker = start_tls_broker(authority, tmp_path / "broker")
    except Exception as exc:  # noqa: BLE001 - only to skip or fail with the reason
        authority.close()
        _missing(str(exc))
    yield authority, broker
    broker.stop()
    authority.close()


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
    ingest_key, ingest_cert = broker_pki.issue_ingest_identity(authority, tmp_path / "ids")
    chunk_topic = f"{PREFIX}/{BOX}/up/" + "0" * 31 + "1"
    ack_topic = f"{PREFIX}/{BOX}/ack"

    inbox: queue.Queue[Inbound] = queue.Queue()
    received: list[str] = []  # sha256 of each chunk, on the ingest worker thread
    acks_seen: list[bytes] = []  # on the box link's network thread
    ingest = MqttLink(_settings(broker, ca, ingest_cert, ingest_key), "mgw-ingest-threads",
                      subscriptions=[(f"{PREFIX}/+/up/+", 1)], on_message=inbox.put, manual_ack=True,
                      session_expiry_s=0)
    box = MqttLink(_settings(broker, ca, box_cert, box_key), "mgw-edge-threads",
                   subscriptions=[(ack_topic, 1)], on_message=lambda m: acks_seen.append(m.payload), session_expiry_s=0)
    stop = threading.Event()

    def ingest_worker() -> None:  # like CloudService._work: publish an ack, then PUBACK, off the network thread
        while not stop.is_set():
            try:
                message = inbox.get(timeout=0.1)
            except queue.Empty:
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
        assert ingest.wait_connected(15) and box.wait_connected(15)
        since = broker_log_offset(broker)  # both clients are in; what follows must be quiet
        threads = [threading.Thread(target=publisher, args=(t,), name=f"test-publisher-{t}") for t in range(PUBLISHERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        total = PUBLISHERS * PER_PUBLISHER
        wait_for(lambda: (len(received) >= total and len(acks_seen) >= total) or box.reconnects or ingest.reconnects,
                 180, "every chunk at the ingest link and every ack back at the box link")
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
