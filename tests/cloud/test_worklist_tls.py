"""The worklist feed through the real, guarded broker: mutual-TLS mosquitto with the guard plugin and
certificates from the real fleet CA; the fleet service as ``cloud.fleet.1``; boxes as raw MQTT
clients holding their own box certificates. A box reads only its own worklist, the frame resting
in the broker carries no patient data in the clear, another box's status for a ref is refused, and
the routed box's status reaches the RIS over MLLP."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.authority import ack_keys
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.fleet.service import FleetService
from gateway.config import (
    CloudSettings,
    FleetSettings,
    FleetWorklistSettings,
    IngestSettings,
    MqttSettings,
    _fill_defaults,
)
from gateway.core import fleet, schema, topics, worklist_wire
from gateway.core.fleet import MessageKind
from gateway.paths import Paths
from tests.adapters.test_hl7_orders import mllp_send, orm
from tests.backends import Backend
from tests.cloud.test_worklist_service import RisEndpoint, steps
from tests.peers import wait_for
from tests.tls_peers import PREFIX, Client, box_identity, fleet_ca_and_tls_broker, service_identity

NOT_AUTHORIZED = 0x87
NAME = "Zhang^Wei"


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[FleetAuthority, MosquittoBroker]]:
    with fleet_ca_and_tls_broker(tmp_path) as made:
        yield made


class TlsBox:
    def __init__(self, authority: FleetAuthority, broker: MosquittoBroker, box_id: str, out: Path) -> None:
        assert broker.tls is not None
        self.box_id = box_id
        self.private = X25519PrivateKey.generate()
        self.client = Client(broker.port, broker.tls.ca_file, *box_identity(authority, box_id, out), client_id=box_id)
        assert self.client.connect() == "ok"
        self.frames: list[bytes] = []
        self.acks: list[dict[str, Any]] = []

    def drain(self) -> None:
        while True:
            try:
                topic, payload = self.client.messages.get_nowait()
            except queue.Empty:
                return
            (self.acks.append(json.loads(payload)) if topic.endswith("/ack") else self.frames.append(payload))

    def worklist(self, keyring: Any) -> schema.WorklistUpdate | None:
        self.drain()
        if not self.frames or not self.frames[-1]:
            return None
        return worklist_wire.open_frame(self.frames[-1], self.box_id, self.private.private_bytes_raw(), keyring)

    def birth(self) -> None:
        key = self.private.public_key().public_bytes_raw().hex()
        self.client.publish(topics.telemetry_topic(PREFIX, self.box_id, "state"),
                            fleet.encode(MessageKind.BIRTH, self.box_id, 1, site="s", version="9", worklist_key=key))

    def status(self, ref: str, status: str) -> None:
        doc = {"v": 1, "box_id": self.box_id, "ref": ref, "status": status, "at": time.time()}
        self.client.publish(topics.worklist_status_topic(PREFIX, self.box_id), json.dumps(doc).encode())


def test_worklist_crosses_the_guarded_broker_sealed_and_statuses_are_checked_when_boxes_hold_certificates(
        tls: tuple[FleetAuthority, MosquittoBroker], tmp_path: Path, backend: Backend) -> None:
    authority, broker = tls
    assert broker.tls is not None
    ris = RisEndpoint()
    cert, key = service_identity(authority, "fleet", "1", tmp_path / "ids")
    w = FleetWorklistSettings(enabled=True, publish_s=0.5, hl7_port=0, ris_hl7_host="127.0.0.1",
                              ris_hl7_port=ris.port, retry_s=1.0)
    settings = _fill_defaults(CloudSettings(
        mqtt=MqttSettings(port=broker.port, ca_file=str(broker.tls.ca_file), cert_file=str(cert), key_file=str(key),
                          reconnect_min_s=0.2),
        ingest=IngestSettings(), fleet=FleetSettings(http_port=0, worklist=w), index=backend.index_settings()))
    paths = Paths(tmp_path, tmp_path / "cloud", tmp_path)
    svc = FleetService(settings, paths)
    svc.start()
    boxes: list[TlsBox] = []
    try:
        assert svc.link.wait_connected(60)
        keyring = ack_keys.keyring_of(paths.key_file(settings.cloud.ack_key_file))
        ct1, ct2 = (TlsBox(authority, broker, b, tmp_path / "ids") for b in ("ct-01", "ct-02"))
        boxes += [ct1, ct2]
        for box in boxes:
            assert box.client.subscribe(topics.worklist_topic(PREFIX, box.box_id)) == [1]
            assert box.client.subscribe(topics.worklist_status_ack_topic(PREFIX, box.box_id)) == [1]
        assert ct2.client.subscribe(topics.worklist_topic(PREFIX, "ct-01")) == [NOT_AUTHORIZED]
        assert ct2.client.subscribe(f"{PREFIX}/+/worklist") == [NOT_AUTHORIZED]
        svc.store.worklist.add_route("ct-01", "CT", "CT1", "", 0.0)
        svc.store.worklist.add_route("ct-02", "MR", "MR1", "", 0.0)
        order = tmp_path / "order.hl7"
        order.write_text(orm("O1", step="S1", accession="ACC-S1", name=NAME).replace(
            "20261203093000", time.strftime("%Y%m%d", time.gmtime()) + "093000"))
        assert "MSA|AA|O1" in mllp_send(svc.ports()["hl7"], order).replace("\r", "\n")
        ct1.birth()
        ct2.birth()
        wait_for(lambda: set(steps(ct1.worklist(keyring))) == {"S1"}, 90, "ct-01's worklist through the broker")
        wait_for(lambda: ct2.worklist(keyring) is not None, 60, "ct-02's (empty) worklist")
        assert steps(ct2.worklist(keyring)) == {}  # an MR station: the CT order is not its
        for frame in ct1.frames + ct2.frames:
            assert b"Zhang" not in frame and b"ACC-S1" not in frame and b"PID-77" not in frame
        ref = steps(ct1.worklist(keyring))["S1"]

        ct2.status(ref, "COMPLETED")  # not routed to ct-02: refused, dead-lettered, no ack
        wait_for(lambda: any(d.reason == "refused" for d in svc.store.dead_letters(box_id="ct-02")), 60,
                 "ct-02's status refused")
        ct1.status(ref, "COMPLETED")
        wait_for(lambda: ct1.drain() or ct1.acks, 60, "ct-01's status ack")
        assert worklist_wire.verify_status_ack(ct1.acks[0], "ct-01", keyring) == (ref, "COMPLETED")
        ct2.drain()
        assert ct2.acks == []
        wait_for(lambda: ris.messages, 60, "the status at the RIS")
        assert str(ris.messages[0].segment("ORC")[5]) == "CM"
        wait_for(lambda: ct1.worklist(keyring) is not None and steps(ct1.worklist(keyring)) == {}, 60,
                 "the performed step off ct-01's worklist")
    finally:
        for box in boxes:
            box.client.close()
        svc.stop()
        ris.stop()
