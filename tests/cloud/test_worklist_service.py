"""The worklist feed in the fleet service, with real peers: a real mosquitto; Orthanc's worklist
plugin as the RIS read by C-FIND; python-hl7's ``mllp_send`` as an HL7 RIS sending orders; an
MLLP endpoint (a socket server parsing with python-hl7 and answering ACKs) and a pynetdicom MPPS
SCP taking the statuses; a box played by a real MQTT client that announces its worklist key,
opens the retained frame as the box does, and reports a step performed."""

from __future__ import annotations

import json
import socketserver
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.mpps_scu import MPPS_SOP_CLASS
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud.authority import ack_keys
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
from gateway.core.access import Role
from gateway.core.fleet import MessageKind
from gateway.paths import Paths
from tests.adapters.test_hl7_orders import mllp_send, orm
from tests.adapters.test_worklist_scu import wl_file
from tests.backends import Backend
from tests.console_auth import bearer, service_token, token
from tests.orthanc import AET, orthanc
from tests.peers import wait_for

PREFIX = "mgw/v1"


class RisEndpoint:
    """The RIS's MLLP inbound for status updates: parses each message with python-hl7, ACKs AA."""

    def __init__(self) -> None:
        self.messages: list[hl7.Message] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buffer = b""
                while b"\x1c\x0d" not in buffer:
                    piece = self.request.recv(65536)
                    if not piece:
                        return
                    buffer += piece
                text = buffer[1:buffer.index(b"\x1c\x0d")].decode("utf-8")
                message = hl7.parse(text)
                outer.messages.append(message)
                control = str(message.segment("MSH")[10])
                ack = f"MSH|^~\\&|RIS||MGW||20261204||ACK|A{control}|P|2.5\rMSA|AA|{control}\r"
                self.request.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MppsScp:
    """The RIS's MPPS SCP (pynetdicom): records N-CREATE and N-SET."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []  # (what, instance uid, status)
        self.ae = AE(ae_title="RISMPPS")
        self.ae.add_supported_context(MPPS_SOP_CLASS)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_N_CREATE, self._create), (evt.EVT_N_SET, self._set)])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _create(self, event: Any) -> tuple[int, Dataset]:
        ds = event.attribute_list
        self.events.append(("create", event.request.AffectedSOPInstanceUID, str(ds.PerformedProcedureStepStatus)))
        return 0x0000, ds

    def _set(self, event: Any) -> tuple[int, Dataset]:
        ds = event.attribute_list
        self.events.append(("set", event.request.RequestedSOPInstanceUID, str(ds.PerformedProcedureStepStatus)))
        return 0x0000, ds

    def stop(self) -> None:
        self.server.shutdown()


class Box:
    """A box as a real MQTT client: its worklist key, its birth, the frames and acks it gets."""

    def __init__(self, broker: MosquittoBroker, box_id: str) -> None:
        self.box_id = box_id
        self.private = X25519PrivateKey.generate()
        self.frames: list[bytes] = []
        self.acks: list[dict[str, Any]] = []
        self.link = MqttLink(MqttSettings(port=broker.port), client_id=f"test-{box_id}",
                             subscriptions=[(topics.worklist_topic(PREFIX, box_id), 1),
                                            (topics.worklist_status_ack_topic(PREFIX, box_id), 1)],
                             on_message=self._on)
        self.link.start()
        assert self.link.wait_connected(60)

    def _on(self, message: Inbound) -> None:
        if message.topic.endswith("/ack"):
            self.acks.append(json.loads(message.payload))
        else:
            self.frames.append(message.payload)

    def birth(self, site: str = "clinic-a") -> None:
        key = self.private.public_key().public_bytes_raw().hex()
        payload = fleet.encode(MessageKind.BIRTH, self.box_id, 1, site=site, version="9.9", worklist_key=key)
        assert self.link.publish(topics.telemetry_topic(PREFIX, self.box_id, "state"), payload, qos=1, retain=True)

    def worklist(self, keyring: Any) -> schema.WorklistUpdate | None:
        if not self.frames or not self.frames[-1]:
            return None
        return worklist_wire.open_frame(self.frames[-1], self.box_id, self.private.private_bytes_raw(), keyring)

    def status(self, ref: str, status: str, box_id: str | None = None) -> None:
        doc = {"v": 1, "box_id": box_id or self.box_id, "ref": ref, "status": status, "at": 1796371200.0}
        assert self.link.publish(topics.worklist_status_topic(PREFIX, self.box_id), json.dumps(doc).encode(), qos=1)


@pytest.fixture
def peers() -> Iterator[tuple[RisEndpoint, MppsScp]]:
    ris, mpps = RisEndpoint(), MppsScp()
    yield ris, mpps
    ris.stop()
    mpps.stop()


def steps(update: schema.WorklistUpdate | None) -> dict[str, str]:
    """step id -> ref"""
    if update is None:
        return {}
    return {op.entry.step.step_id: op.entry.ref for op in update.ops if isinstance(op, schema.WorklistUpsert)}


def test_box_gets_its_stations_steps_and_its_statuses_reach_the_ris_when_the_fleet_runs_the_feed(
        broker: MosquittoBroker, tmp_path: Path, backend: Backend, peers: tuple[RisEndpoint, MppsScp]) -> None:
    ris, mpps = peers
    folder = tmp_path / "worklists"
    folder.mkdir()
    today = time.strftime("%Y%m%d", time.gmtime())
    wl_file(folder, "s1", "S1", "ACC1", "Doe^John", "CT1", today)
    wl_file(folder, "s2", "S2", "ACC2", "Other^Station", "CT2", today)
    wl_file(folder, "s3", "S3", "ACC3", "Roe^Jane", "MR1", today, modality="MR")
    wl_file(folder, "s4", "S4", "ACC4", "Cancel^Me", "CT1", today)
    with orthanc(tmp_path / "orthanc", worklists=folder) as rispacs:
        w = FleetWorklistSettings(enabled=True, mwl_host="127.0.0.1", mwl_port=rispacs.dicom_port, mwl_called_ae=AET,
                                  poll_s=1.0, publish_s=0.5, hl7_port=0, ris_hl7_host="127.0.0.1",
                                  ris_hl7_port=ris.port, mpps_host="127.0.0.1", mpps_port=mpps.port,
                                  mpps_called_ae="RISMPPS", retry_s=1.0)
        settings = _fill_defaults(CloudSettings(
            mqtt=MqttSettings(port=broker.port, reconnect_min_s=0.2), ingest=IngestSettings(),
            fleet=FleetSettings(http_port=0, worklist=w), index=backend.index_settings()))
        paths = Paths(tmp_path, tmp_path / "cloud", tmp_path)
        svc = FleetService(settings, paths)
        svc.start()
        ct1, ct2 = Box(broker, "ct-01"), Box(broker, "ct-02")
        try:
            assert svc.link.wait_connected(60)
            wait_for(svc.alive, 30, "the fleet service and the feed's threads alive")
            keyring = ack_keys.keyring_of(paths.key_file(settings.cloud.ack_key_file))
            svc.store.worklist.add_route("ct-01", "CT", "CT1", "", 0.0)
            svc.store.worklist.add_route("ct-02", "CT", "CT2", "", 0.0)
            order = tmp_path / "order.hl7"
            date = today + "093000"
            order.write_text(orm("H1", step="H1", accession="ACCH1", name="Zhang^Wei").replace(
                "20261203093000", date))
            assert "MSA|AA|H1" in mllp_send(svc.ports()["hl7"], order).replace("\r", "\n")
            ct1.birth()
            ct2.birth(site="clinic-b")
            wait_for(lambda: set(steps(ct1.worklist(keyring))) == {"S1", "S4", "H1"}, 90,
                     "ct-01's worklist: its station's steps, and the HL7 order for its modality")
            # an HL7 order names no station: every route of its modality serves it; S3 is MR's, no one's here
            wait_for(lambda: set(steps(ct2.worklist(keyring))) == {"S2", "H1"}, 60, "ct-02's worklist")
            refs = steps(ct1.worklist(keyring))
            for frame in ct1.frames + ct2.frames:  # what rests in the broker is sealed
                assert b"Doe" not in frame and b"Zhang" not in frame and b"ACC1" not in frame

            ct2.status(refs["S1"], "COMPLETED")  # another box's step: refused, no ack
            wait_for(lambda: any(d.reason == "refused" for d in svc.store.dead_letters(box_id="ct-02")), 60,
                     "the other box's status dead-lettered")
            assert ct2.acks == []

            ct1.status(refs["H1"], "COMPLETED")
            ct1.status(refs["S1"], "IN PROGRESS")
            wait_for(lambda: len(ct1.acks) == 2, 60, "the two acks")
            assert svc.worklist is not None and svc.worklist.statuses == 2
            assert {worklist_wire.verify_status_ack(a, "ct-01", keyring) for a in ct1.acks} == {
                (refs["H1"], "COMPLETED"), (refs["S1"], "IN PROGRESS")}
            wait_for(lambda: ris.messages, 60, "the HL7 status at the RIS")
            m = ris.messages[0]
            assert (str(m.segment("ORC")[1]), str(m.segment("ORC")[5])) == ("SC", "CM")
            assert (str(m.segment("OBR")[18]), str(m.segment("OBR")[20])) == ("ACCH1", "H1")
            wait_for(lambda: mpps.events, 60, "the MPPS N-CREATE at the RIS")
            assert mpps.events[0][0] == "create" and mpps.events[0][2] == "IN PROGRESS"

            ct1.status(refs["S1"], "COMPLETED")  # the MPPS instance is set COMPLETED
            wait_for(lambda: ("set", mpps.events[0][1], "COMPLETED") in mpps.events, 60, "the MPPS N-SET at the RIS")
            assert [e[0] for e in mpps.events] == ["create", "set"]  # the instance created once
            assert len(ris.messages) == 1  # each status once

            (folder / "s4.wl").unlink()  # the RIS cancels S4: it leaves the next snapshot
            wait_for(lambda: set(steps(ct1.worklist(keyring))) == set(), 90,
                     "S4 cancelled, S1 and H1 performed: ct-01's worklist empty")
            assert ct1.worklist(keyring) is not None
            feed_api(svc)
        finally:
            ct1.link.stop()
            ct2.link.stop()
            svc.stop()


def feed_api(svc: FleetService) -> None:
    """``GET /api/v1/worklist/feed``: counts per box, the principal's sites only, no patient data."""
    assert svc.http is not None and svc.tls.ca_file is not None
    context = ssl.create_default_context(cafile=str(svc.tls.ca_file))

    def get(secret: str, path: str = "/api/v1/worklist/feed") -> tuple[bytes, dict[str, Any]]:
        req = urllib.request.Request(svc.http.url.rstrip("/") + path, headers=bearer(secret))
        with urllib.request.urlopen(req, timeout=10, context=context) as rsp:  # noqa: S310
            body = rsp.read()
        return body, {} if path == "/metrics" else json.loads(body)

    wait_for(lambda: svc.box("ct-02") is not None and svc.box("ct-02").site == "clinic-b", 30, "ct-02's site")
    wait_for(lambda: [b["entries"] for b in get(service_token(svc))[1]["boxes"] if b["box_id"] == "ct-02"] == [1],
             30, "ct-02's last snapshot: S2 (H1 was performed)")
    body, doc = get(service_token(svc))
    by_box = {b["box_id"]: b for b in doc["boxes"]}
    assert doc["enabled"] and set(by_box) == {"ct-01", "ct-02"} and by_box["ct-01"]["routes"] == ["CT@CT1"]
    assert by_box["ct-01"]["entries"] == 0 and by_box["ct-01"]["seq"] >= 2 and by_box["ct-02"]["entries"] == 1
    assert {s["source"] for s in doc["sources"]} == {"mwl", "hl7"} and doc["outbox"]["sent"] == 3
    assert b"Doe" not in body and b"Zhang" not in body and b"ACC" not in body
    metrics = get(service_token(svc), "/metrics")[0].decode()
    assert "mgw_fleet_worklist_statuses_total 3.0" in metrics and "mgw_fleet_worklist_outbox_pending 0.0" in metrics
    _, theirs = get(token(svc.store, "bo", Role.VIEWER, frozenset({"clinic-b"})))
    assert [b["box_id"] for b in theirs["boxes"]] == ["ct-02"] and theirs["sources"] == [] and theirs["outbox"] is None
