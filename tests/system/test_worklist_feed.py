"""The worklist feed, edge side, with real peers: a provisioned edge behind mosquitto with mutual
TLS and the guard; the test plays the cloud with a real MQTT client holding a ``cloud.fleet``
identity and the deployment's ack key; DCMTK ``findscu`` asks for the worklist and a pynetdicom
MPPS SCU reports the procedure (docs/protocol.md, "Worklist feed")."""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud.authority import ack_keys
from gateway.cloud.broker import pki as broker_pki
from gateway.config import MqttSettings
from gateway.core import acksig, schema, topics, worklist_wire
from gateway.loopback import BOX_ID, MODALITY_AE, LoopbackDeployment
from tests.adapters.test_mpps_scp import mpps
from tests.adapters.test_worklist_scp import BASE, findscu
from tests.peers import wait_for
from tests.system.test_metrics import scrape

Deploy = Callable[..., LoopbackDeployment]
PREFIX = "mgw/v1"
SEQ = 2**52  # above any seq a real publisher could have sent first; a float (/metrics) holds it exactly
NAME, PATIENT_ID = "张^伟", "PID-7731"
REFS = {"S1": "a1" * 16, "S2": "b2" * 16, "S3": "c3" * 16}


def _entry(step: str) -> dict[str, Any]:
    return {"op": "upsert", "entry": {
        "accession_number": f"ACC-{step}", "patient_name": NAME, "patient_id": PATIENT_ID, "ref": REFS[step],
        "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{step[1:]}",
        "step": {"step_id": step, "modality": "CT", "station_ae_title": MODALITY_AE, "start_date": "20261203",
                 "start_time": f"0{step[1:]}0000"}}}


def _update(seq: int, steps: list[str], box_id: str = BOX_ID, replace: bool = True) -> schema.WorklistUpdate:
    body = {"v": 1, "box_id": box_id, "seq": seq, "ops": [_entry(s) for s in steps], "replace": replace}
    return schema.parse(schema.WorklistUpdate, json.dumps(body).encode(), "update", schema.MAX_WORKLIST_BYTES)


def _seal(update: schema.WorklistUpdate, box_public: bytes, signer: acksig.AckSigner) -> bytes:
    return worklist_wire.seal(update, box_public, signer, data_key=os.urandom(32), eph_private=os.urandom(32),
                              nonce=os.urandom(12))


class Cloud:
    """The test's cloud: a real MQTT client with a cloud.fleet identity (mutual TLS, the guard)."""

    def __init__(self, d: LoopbackDeployment, tmp: Path) -> None:
        assert d.broker.tls is not None
        key, cert = broker_pki.issue_service_identity(d.authority, "fleet", "9", tmp)
        settings = MqttSettings(host="127.0.0.1", port=d.broker.port, ca_file=str(d.broker.tls.ca_file),
                                cert_file=str(cert), key_file=str(key))
        self.signer = ack_keys.load_signer(d.ack_key_file)
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.births: list[dict[str, Any]] = []
        self.statuses: list[schema.WorklistStatus] = []
        self.raw_statuses: list[bytes] = []
        self._up = threading.Event()
        self.link = MqttLink(settings, broker_pki.service_client_id(settings, "fleet", "9"), subscriptions=[
            (f"{PREFIX}/+/state", 1), (topics.worklist_status_subscription(PREFIX), 1)],  # as the fleet subscribes
            on_message=self._on_message, on_state=lambda ok: self._up.set() if ok else None)

    def _on_message(self, message: Inbound) -> None:
        if message.topic == topics.telemetry_topic(PREFIX, BOX_ID, "state"):
            self.births.append(json.loads(message.payload))
        elif message.topic == topics.worklist_status_topic(PREFIX, BOX_ID):
            self.raw_statuses.append(message.payload)
            self.statuses.append(schema.parse(schema.WorklistStatus, message.payload, "status"))

    def start(self) -> None:
        self.link.start()
        wait_for(self._up.is_set, 60, "the test cloud connected to the broker")

    def box_key(self) -> bytes:
        births = wait_for(lambda: [b for b in self.births if b.get("kind") == "birth" and b.get("worklist_key")],
                          60, "a birth carrying the box's worklist key")
        return bytes.fromhex(births[-1]["worklist_key"])

    def publish_frame(self, frame: bytes) -> None:
        assert self.link.publish(topics.worklist_topic(PREFIX, BOX_ID), frame, qos=1, retain=True)

    def ack(self, ref: str, status: str, signer: acksig.AckSigner | None = None) -> None:
        doc = worklist_wire.sign_status_ack(signer or self.signer, BOX_ID, ref, status)
        assert self.link.publish(topics.worklist_status_ack_topic(PREFIX, BOX_ID), json.dumps(doc).encode(), qos=1)

    def seen(self, ref: str, status: str) -> int:
        return sum(1 for s in list(self.statuses) if (s.ref, s.status) == (ref, status))


@contextmanager
def _cloud(d: LoopbackDeployment, tmp: Path) -> Iterator[Cloud]:
    cloud = Cloud(d, tmp)
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.link.stop()


def metric(d: LoopbackDeployment, name: str, **labels: str) -> float:
    """One sample of the edge's /metrics (0 when absent)."""
    text = scrape(f"http://127.0.0.1:{d.edge_metrics_port}/metrics")
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def _worklist(d: LoopbackDeployment, tmp: Path) -> list[str]:
    statuses, answers = findscu(d.dicom_port, tmp, *BASE, calling=MODALITY_AE)
    assert statuses[-1] == 0x0000
    return sorted(str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID) for a in answers)


def _stop_fleet(d: LoopbackDeployment) -> None:
    """The test is the only cloud on the box's worklist topics."""
    d.stop_fleet()


def test_box_serves_the_fed_worklist_and_refuses_bad_frames_when_the_cloud_publishes_them(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    _stop_fleet(d)
    with _cloud(d, tmp_path / "cloud-id") as cloud:
        box_public = cloud.box_key()
        cloud.publish_frame(_seal(_update(SEQ + 10, ["S1", "S2", "S3"]), box_public, cloud.signer))
        wait_for(lambda: metric(d, "mgw_edge_worklist_frames_total", outcome="applied") == 1, 60, "the frame applied")
        assert _worklist(d, tmp_path) == ["S1", "S2", "S3"]
        assert metric(d, "mgw_edge_worklist_last_seq") == SEQ + 10

        forged = _seal(_update(SEQ + 11, ["S1"]), box_public, acksig.AckSigner(os.urandom(32)))  # another signer
        other_box = _seal(_update(SEQ + 12, ["S1"], box_id="other-box"), box_public, cloud.signer)
        older = _seal(_update(SEQ + 5, ["S1"]), box_public, cloud.signer)
        tampered = bytearray(_seal(_update(SEQ + 13, ["S1"]), box_public, cloud.signer))
        tampered[worklist_wire.HEAD_BYTES + 3] ^= 1  # the ciphertext: the signature no longer verifies
        expected = {"unsigned": 3, "not_newer": 1, "malformed": 1}
        for frame in (forged, other_box, older, bytes(tampered), b"garbage, not a worklist frame"):
            cloud.publish_frame(frame)
        wait_for(lambda: all(metric(d, "mgw_edge_worklist_frames_total", outcome=o) >= n for o, n in expected.items()),
                 60, "every bad frame refused and counted")
        assert metric(d, "mgw_edge_worklist_frames_total", outcome="applied") == 1
        assert metric(d, "mgw_edge_worklist_last_seq") == SEQ + 10
        assert _worklist(d, tmp_path) == ["S1", "S2", "S3"], "a refused frame must leave the cache unchanged"
        log = (d.root / "edge.log").read_text(errors="replace")
        assert log.count("worklist frame refused") >= 5 and "Traceback" not in log

        cloud.publish_frame(_seal(_update(SEQ + 20, ["S2"]), box_public, cloud.signer))  # a replace snapshot
        wait_for(lambda: metric(d, "mgw_edge_worklist_last_seq") == SEQ + 20, 60, "the snapshot applied")
        assert _worklist(d, tmp_path) == ["S2"], "a snapshot removes every step it does not name"

    d.broker.stop()  # the uplink is down: the modality still gets its worklist, before and after a restart
    assert _worklist(d, tmp_path) == ["S2"]
    d.kill_edge()
    d.start_edge()
    assert _worklist(d, tmp_path) == ["S2"]
    log = (d.root / "edge.log").read_text(errors="replace")
    for value in (NAME, PATIENT_ID, "ACC-S2"):
        assert value not in log


def test_mpps_statuses_go_to_the_cloud_by_ref_until_a_genuine_ack_when_the_modality_performs_a_step(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True, edge_overrides={"worklist": {"status_resend_s": 1.0}})
    _stop_fleet(d)
    with _cloud(d, tmp_path / "cloud-id") as cloud:
        cloud.publish_frame(_seal(_update(SEQ + 1, ["S1", "S2"]), cloud.box_key(), cloud.signer))
        wait_for(lambda: metric(d, "mgw_edge_worklist_last_seq") == SEQ + 1, 60, "the worklist applied")
        uid = "1.2.826.0.1.3680043.8.498.991"
        started = {"PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
                   "PerformedProcedureStepStartDate": "20261203", "PerformedProcedureStepStartTime": "083500"}
        done = {"PerformedProcedureStepStatus": "COMPLETED", "PerformedProcedureStepEndDate": "20261203",
                "PerformedProcedureStepEndTime": "084500"}
        assert mpps(d.dicom_port, [
            {"op": "create", "uid": uid, "study": "1.2.826.0.1.3680043.8.498.1",
             "scheduled": {"ScheduledProcedureStepID": "S1", "AccessionNumber": "ACC-S1"}, "attrs": started},
            {"op": "set", "uid": uid, "attrs": done}]) == [0x0000, 0x0000]
        assert _worklist(d, tmp_path) == ["S2"]  # S1 is done

        ref = REFS["S1"]
        wait_for(lambda: cloud.seen(ref, "IN PROGRESS") >= 2 and cloud.seen(ref, "COMPLETED") >= 2, 60,
                 "both statuses published, and resent while not acknowledged")
        assert {(s.ref, s.status) for s in cloud.statuses} == {(ref, "IN PROGRESS"), (ref, "COMPLETED")}
        assert all(s.box_id == BOX_ID for s in cloud.statuses)
        for raw in cloud.raw_statuses:  # no patient data: the ref names the entry
            for value in (NAME, PATIENT_ID, "ACC-S1", uid, "1.2.826.0.1.3680043.8.498.1"):
                assert value.encode() not in raw

        rejected = metric(d, "mgw_edge_worklist_status_acks_rejected_total")
        cloud.ack(ref, "IN PROGRESS", acksig.AckSigner(os.urandom(32)))  # forged: another key
        cloud.ack(ref, "COMPLETED", acksig.AckSigner(os.urandom(32)))
        wait_for(lambda: metric(d, "mgw_edge_worklist_status_acks_rejected_total") >= rejected + 2, 60,
                 "both forged acks ignored and counted")
        seen = cloud.seen(ref, "COMPLETED")
        wait_for(lambda: cloud.seen(ref, "COMPLETED") > seen, 60, "the status resent after a forged ack")
        assert metric(d, "mgw_edge_worklist_statuses_unacked") == 2

        cloud.ack(ref, "IN PROGRESS")
        cloud.ack(ref, "COMPLETED")
        wait_for(lambda: metric(d, "mgw_edge_worklist_statuses_unacked") == 0, 60, "the genuine acks taken")
    log = (d.root / "edge.log").read_text(errors="replace")
    assert "worklist status ack ignored" in log and "Traceback" not in log
    for value in (NAME, PATIENT_ID, "ACC-S1"):
        assert value not in log
