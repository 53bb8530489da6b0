"""Remote commands through the console's API, over real HTTPS, on a real fleet service and a real mosquitto.

A stand-in box (a real MQTT client with its own X25519 key and the cloud's command keyring) takes
each frame the fleet publishes, checks and opens it as the edge does (``core.command_wire``) and
answers: received, then succeeded (a bundle in sealed parts first), or failed for the boxes told to
fail. Role checks and audit rows, bundle download, config versions and their diff, refusals raising
the ``command_refused`` alert, hostile replies set aside without ending the loop, a queued command
delivered when its box comes online, and a wave rollout that stops at its first failure."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.adapters import keystore
from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud.authority import ack_keys
from gateway.cloud.fleet.service import FleetService
from gateway.config import MqttSettings
from gateway.core import command_wire, fleet, topics
from gateway.core.access import Role
from gateway.core.fleet import MessageKind
from gateway.paths import Paths
from tests.backends import Backend
from tests.cloud.test_console import request
from tests.cloud.test_fleet import PREFIX
from tests.cloud.test_fleet import settings as cloud_settings
from tests.console_auth import bearer, token
from tests.peers import wait_for

BUNDLE = b"\x1f\x8b" + os.urandom(150_000)  # what the stand-in box uploads (gzip magic: a .tar.gz name)


class StandInBox:
    """A box's command side over a real MQTT client: checks, opens and answers every frame."""

    def __init__(self, broker: MosquittoBroker, svc: FleetService, box_id: str, fail: bool = False) -> None:
        self.box_id, self.svc, self.fail = box_id, svc, fail
        private = X25519PrivateKey.generate()
        self.private, self.public_hex = private.private_bytes_raw(), private.public_key().public_bytes_raw().hex()
        paths = svc._paths
        self.keyring = ack_keys.keyring_of(paths.key_file(svc.settings.fleet.command_key_file))
        envelope = keystore.load_or_create_x25519(paths.key_file(svc.settings.cloud.envelope_key_file))
        self.envelope_public = X25519PrivateKey.from_private_bytes(envelope).public_key().public_bytes_raw()
        self.last_seq = 0
        self.executed: list[command_wire.Command] = []
        self.lock = threading.Lock()
        self.link = MqttLink(MqttSettings(port=broker.port), client_id=f"test-cmd-{box_id}",
                             subscriptions=[(topics.command_topic(PREFIX, box_id), 1)], on_message=self._frame)
        self.link.start()
        assert self.link.wait_connected(60)

    def born(self, bd_seq: int = 1) -> None:
        self._send(topics.telemetry_topic(PREFIX, self.box_id, "state"), fleet.encode(
            MessageKind.BIRTH, self.box_id, bd_seq, site="clinic-a", version="9.9", worklist_key=self.public_hex))

    def _send(self, topic: str, payload: bytes) -> None:
        assert self.link.publish(topic, payload, qos=1)

    def reply(self, doc: dict[str, Any]) -> None:
        self._send(topics.command_result_topic(PREFIX, self.box_id),
                   json.dumps({"v": 1, "box_id": self.box_id, "at": time.time(), **doc}).encode())

    def _frame(self, message: Inbound) -> None:
        with self.lock:
            try:
                header = command_wire.check(message.payload, self.box_id, self.keyring, time.time(), self.last_seq)
                command = command_wire.open_frame(message.payload, header, self.box_id, self.private)
            except command_wire.CommandRefused as exc:
                if exc.seq is not None and exc.seq <= self.last_seq:
                    return  # a redelivery of one already answered
                self.reply({"state": "refused", "id": exc.command_id, "seq": exc.seq, "reason": exc.refusal.value,
                            "message": exc.detail})
                return
            self.last_seq = command.seq
            self.executed.append(command)
        ids = {"id": command.id, "seq": command.seq, "kind": command.kind.value}
        self.reply({"state": "received", **ids})
        if self.fail:
            self.reply({"state": "failed", "message": "the health check failed; rolled back", **ids})
            return
        detail: dict[str, Any] = {"status": "0x0000", "rtt_ms": 3.5} if command.kind is command_wire.Kind.ECHO else {}
        if command.kind is command_wire.Kind.BUNDLE:
            detail = self._upload(command.id)
        self.reply({"state": "succeeded", "detail": detail, **ids})

    def _upload(self, command_id: str) -> dict[str, Any]:
        sealed = command_wire.seal_blob(self.envelope_public, self.box_id, command_id, BUNDLE,
                                        data_key=os.urandom(32), eph_private=os.urandom(32), nonce=os.urandom(12))
        digest = hashlib.sha256(sealed).hexdigest()
        size = command_wire.BLOB_PART_BYTES
        parts = [sealed[i:i + size] for i in range(0, len(sealed), size)]
        for n, data in enumerate(parts):
            self._send(topics.command_blob_topic(PREFIX, self.box_id), json.dumps({
                "v": 1, "box_id": self.box_id, "id": command_id, "part": n, "parts": len(parts), "size": len(sealed),
                "sha256": digest, "data": base64.b64encode(data).decode()}).encode())
        return {"bytes": len(sealed), "parts": len(parts), "sha256": digest}


@pytest.fixture
def svc(broker: MosquittoBroker, tmp_path: Path) -> Iterator[FleetService]:
    service = FleetService(cloud_settings(broker, Backend("sqlite"), offline_after_s=60.0, command_resend_s=1.0),
                           Paths(tmp_path, tmp_path / "cloud", tmp_path))
    service.start()
    try:
        assert service.link.wait_connected(60)
        wait_for(lambda: service.leading, 60, "the fleet service leads")
        yield service
    finally:
        service.stop()


@pytest.fixture
def boxes(broker: MosquittoBroker, svc: FleetService) -> Iterator[list[StandInBox]]:
    made: list[StandInBox] = []
    yield made
    for box in made:
        box.link.stop()


def online(broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox], box_id: str,
           fail: bool = False) -> StandInBox:
    box = StandInBox(broker, svc, box_id, fail)
    boxes.append(box)
    box.born()
    wait_for(lambda: (s := svc.box(box_id)) is not None and s.online and svc.store.commands.box(box_id) is not None
             and svc.store.commands.box(box_id).inbound_key != "", 60, f"{box_id} online with its key")  # type: ignore[union-attr]
    return box


def call(svc: FleetService, method: str, target: str, secret: str,
         doc: dict[str, Any] | None = None) -> tuple[int, Any]:
    body = None if doc is None else json.dumps(doc).encode()
    headers = {**bearer(secret), **({"Content-Type": "application/json"} if body is not None else {})}
    status, response_headers, raw = request(svc, method, target, body, headers)
    if response_headers.get("content-type", "").startswith("application/json"):
        return status, json.loads(raw)
    return status, raw


def state_of(svc: FleetService, secret: str, command_id: str) -> str:
    return str(call(svc, "GET", f"/api/v1/commands/{command_id}", secret)[1]["state"])


def audit_actions(svc: FleetService) -> list[tuple[str, str, str]]:
    return [(r.action, r.target, r.outcome) for r in svc.store.auth.audit(limit=1000)]


def test_echo_and_bundle_succeed_and_the_bundle_downloads_when_an_operator_issues_them(
        broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox]) -> None:
    box = online(broker, svc, boxes, "box-a")
    operator = token(svc.store, "olga", Role.OPERATOR)
    status, echo = call(svc, "POST", "/api/v1/boxes/box-a/commands", operator, {"kind": "echo"})
    assert status == 200 and echo["state"] == "pending" and echo["seq"] == 1
    assert echo["issued_by"].startswith("token:")  # an API token's principal
    status, bundle = call(svc, "POST", "/api/v1/boxes/box-a/commands", operator,
                          {"kind": "bundle", "args": {"log_lines": 500}, "ttl_s": 600})
    assert status == 200 and bundle["seq"] == 2 and bundle["args"] == {"log_lines": 500}
    wait_for(lambda: state_of(svc, operator, bundle["id"]) == "succeeded", 60, "the bundle command succeeded")
    assert state_of(svc, operator, echo["id"]) == "succeeded"
    assert [c.kind.value for c in box.executed] == ["echo", "bundle"]  # in seq order, each once
    listed = call(svc, "GET", "/api/v1/boxes/box-a/commands", operator)[1]
    assert [(c["kind"], c["state"], c["bundle"]) for c in listed["commands"]] == [
        ("bundle", "succeeded", True), ("echo", "succeeded", False)]
    assert listed["commands"][1]["detail"] == {"rtt_ms": 3.5, "status": "0x0000"}
    status, headers, raw = request(svc, "GET", f"/api/v1/commands/{bundle['id']}/bundle", headers=bearer(operator))
    assert status == 200 and raw == BUNDLE
    assert headers["content-disposition"] == f'attachment; filename="mgw-bundle-box-a-{bundle["id"][:8]}.tar.gz"'
    actions = audit_actions(svc)
    assert ("command.issue", "box-a", "ok") in actions and ("command.bundle_download", "box-a", "ok") in actions
    assert sum(a == "command.issue" for a, _, _ in actions) == 2


def test_roles_are_refused_and_audited_when_a_principal_issues_beyond_its_role(
        broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox]) -> None:
    online(broker, svc, boxes, "box-a")
    viewer, operator = token(svc.store, "vic", Role.VIEWER), token(svc.store, "olga", Role.OPERATOR)
    assert call(svc, "POST", "/api/v1/boxes/box-a/commands", viewer, {"kind": "echo"})[0] == 403
    for doc in ({"kind": "config", "args": {"document": "a = 1"}},
                {"kind": "resend", "args": {"accession": "A1"}},
                {"kind": "quarantine", "args": {"action": "drop", "item": 3}}):
        assert call(svc, "POST", "/api/v1/boxes/box-a/commands", operator, doc)[0] == 403
    assert call(svc, "POST", "/api/v1/boxes/box-a/commands", operator,
                {"kind": "quarantine", "args": {"action": "list"}})[0] == 200
    assert call(svc, "GET", "/api/v1/boxes/box-a/commands", viewer)[0] == 200
    assert call(svc, "POST", "/api/v1/rollouts", operator, {"kind": "config", "args": {"document": "a = 1"},
                                                           "boxes": ["box-a"]})[0] == 403
    refused = [r for r in svc.store.auth.audit(limit=1000) if r.outcome == "refused"]
    assert len(refused) == 5 and all(r.target == "" and "/commands" in r.action or "rollouts" in r.action
                                     for r in refused)
    assert call(svc, "POST", "/api/v1/boxes/box-z/commands", operator, {"kind": "echo"})[0] == 404
    for doc in ({"kind": "reboot"}, {"kind": "echo", "args": {"x": 1}}, {"kind": "echo", "args": []},
                {"kind": "echo", "ttl_s": 5}, {"kind": "bundle", "args": {"log_lines": 10**9}}):
        status, answer = call(svc, "POST", "/api/v1/boxes/box-a/commands", operator, doc)
        assert status == 400 and answer["error"].startswith("bad request"), doc
    assert len(svc.store.commands.commands(box_id="box-a")) == 1


def test_config_versions_and_their_diff_are_shown_when_an_admin_changed_the_configuration(
        broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox]) -> None:
    online(broker, svc, boxes, "box-a")
    admin, viewer = token(svc.store, "ada", Role.ADMIN), token(svc.store, "vic", Role.VIEWER)
    first = call(svc, "POST", "/api/v1/boxes/box-a/commands", admin,
                 {"kind": "config", "args": {"document": "[dicom]\nae_title = \"CT1\"\nport = 104\n"}})[1]
    second = call(svc, "POST", "/api/v1/boxes/box-a/commands", admin,
                  {"kind": "config", "args": {"document": "[dicom]\nae_title = \"CT2\"\nport = 104\n"}})[1]
    assert (first["args"], second["args"]) == ({"version": 1}, {"version": 2})
    wait_for(lambda: state_of(svc, admin, second["id"]) == "succeeded", 60, "config version 2 applied")
    versions = call(svc, "GET", "/api/v1/boxes/box-a/config-versions", viewer)[1]
    assert [(v["version"], v["state"]) for v in versions["versions"]] == [(2, "succeeded"), (1, "succeeded")]
    assert call(svc, "GET", "/api/v1/boxes/box-a/config-diff?from=1&to=2", viewer)[0] == 403
    diff = call(svc, "GET", "/api/v1/boxes/box-a/config-diff?from=1&to=2", admin)[1]
    assert "-ae_title = \"CT1\"\n+ae_title = \"CT2\"\n" in diff["diff"] and " port = 104" in diff["diff"]
    assert call(svc, "GET", "/api/v1/boxes/box-a/config-diff?from=1&to=9", admin)[0] == 404
    assert "CT1" not in json.dumps(call(svc, "GET", "/api/v1/boxes/box-a/commands", viewer)[1])  # no document


def test_queued_command_is_delivered_when_its_box_comes_online(
        broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox]) -> None:
    box = online(broker, svc, boxes, "box-b")
    operator = token(svc.store, "olga", Role.OPERATOR)
    box.link.stop()
    boxes.remove(box)
    svc.apply(fleet.decode("state", "box-b", fleet.encode(MessageKind.DEATH, "box-b", 1)))
    wait_for(lambda: not svc.box("box-b").online, 60, "box-b offline")  # type: ignore[union-attr]
    queued = call(svc, "POST", "/api/v1/boxes/box-b/commands", operator, {"kind": "echo"})[1]
    assert svc.store.commands.command(queued["id"]).sends == 0  # type: ignore[union-attr]
    back = StandInBox(broker, svc, "box-b")
    back.private, back.public_hex = box.private, box.public_hex
    back.last_seq = box.last_seq
    boxes.append(back)
    back.born(bd_seq=2)
    wait_for(lambda: state_of(svc, operator, queued["id"]) == "succeeded", 60, "the queued echo ran on reconnect")
    assert [c.id for c in back.executed] == [queued["id"]]


def test_refusal_raises_an_alert_and_hostile_replies_do_not_end_the_loop_when_a_box_misbehaves(
        broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox]) -> None:
    box = online(broker, svc, boxes, "box-a")
    other = online(broker, svc, boxes, "box-c")
    operator = token(svc.store, "olga", Role.OPERATOR)
    mine = call(svc, "POST", "/api/v1/boxes/box-c/commands", operator, {"kind": "echo"})[1]
    wait_for(lambda: state_of(svc, operator, mine["id"]) == "succeeded", 60, "box-c's echo")
    for hostile in (b"", b"{not json", b"x" * 120_000, json.dumps({"v": 1, "box_id": "box-c", "state": "succeeded",
                                                                  "at": 1.0, "id": mine["id"], "seq": 1}).encode(),
                    json.dumps({"v": 1, "box_id": "box-a", "state": "succeeded", "at": 1.0, "id": mine["id"],
                                "seq": 1}).encode()):
        box._send(topics.command_result_topic(PREFIX, "box-a"), hostile)
    box.reply({"state": "refused", "reason": "untrusted", "message": "forged frame"})
    wait_for(lambda: len(svc.store.dead_letters(box_id="box-a")) >= 1
             and sum(d.messages for d in svc.store.dead_letters(box_id="box-a")) >= 5, 60, "hostile replies set aside")
    wait_for(lambda: any(a.kind.value == "command_refused" and a.box_id == "box-a" for a in svc.open_alerts()), 60,
             "the command_refused alert")
    assert svc.store.commands.command(mine["id"]).state == "succeeded"  # type: ignore[union-attr]
    after = call(svc, "POST", "/api/v1/boxes/box-c/commands", operator, {"kind": "echo"})[1]
    wait_for(lambda: state_of(svc, operator, after["id"]) == "succeeded", 60, "the loop goes on")
    assert svc.alive() and len(other.executed) == 2
    status, headers, metrics = request(svc, "GET", "/metrics")
    assert b'mgw_fleet_command_refusals_total{box_id="box-a",reason="untrusted"} 1' in metrics


def test_wave_rollout_stops_at_its_first_failure_when_a_box_fails(
        broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox]) -> None:
    for n, fail in ((1, False), (2, False), (3, True), (4, False), (5, False)):
        online(broker, svc, boxes, f"wave-{n}", fail=fail)
    admin = token(svc.store, "ada", Role.ADMIN)
    status, started = call(svc, "POST", "/api/v1/rollouts", admin, {
        "kind": "update", "args": {"url": "https://updates.example/mgw-2.1.bundle", "sha256": "b" * 64,
                                   "version": "2.1"}, "site": "clinic-a", "canary": 1, "wave_size": 2})
    assert status == 200 and started["total"] == 5 and started["state"] == "running"
    path = f"/api/v1/rollouts/{started['id']}"
    wait_for(lambda: call(svc, "GET", path, admin)[1]["state"] == "stopped", 60, "the rollout stopped")
    progress = call(svc, "GET", path, admin)[1]
    assert [(b["box_id"], b["wave"], b["state"]) for b in progress["boxes"]] == [
        ("wave-1", 0, "succeeded"), ("wave-2", 1, "succeeded"), ("wave-3", 1, "failed"), ("wave-4", 2, "waiting"),
        ("wave-5", 2, "waiting")]
    assert progress["detail"].startswith("wave-3: failed")
    assert not boxes[3].executed and not boxes[4].executed
    assert ("rollout.start", str(started["id"]), "ok") in audit_actions(svc)


def _archive_from(svc: FleetService, tmp_path: Path) -> None:
    """A real ingest worker with the fleet's envelope key archives real images: two studies of box-a under
    ACCESSION, one of box-a under another number, one of box-b under ACCESSION."""
    from gateway.cloud import backends
    from gateway.cloud.ingest.pipeline import Ingest
    from gateway.config import IngestSettings
    from gateway.core import envelope
    from tests.cloud.test_ingest import ACCESSION, ACK_SIGNER, KeyPair, archive_real

    private = keystore.load_or_create_x25519(svc._paths.key_file(svc.settings.cloud.envelope_key_file))
    keys = KeyPair(private, envelope.public_key_of(private))
    archive = backends.open_archive(svc.settings, svc._paths)
    ingest = Ingest(IngestSettings(), private, ACK_SIGNER, archive, tmp_path / "staging")
    try:
        archived = (("box-a", "1.2.3.701", ACCESSION), ("box-a", "1.2.3.702", ACCESSION),
                    ("box-a", "1.2.3.703", "OTHER-1"), ("box-b", "1.2.3.704", ACCESSION))
        for n, (box_id, study, number) in enumerate(archived):
            archive_real(ingest, keys, box_id, study, number, n)
    finally:
        ingest.close()
        archive.close()


def test_resend_by_accession_queues_one_resend_per_study_when_the_cloud_archived_it_from_the_box(
        broker: MosquittoBroker, svc: FleetService, boxes: list[StandInBox], tmp_path: Path) -> None:
    from gateway.core import accession
    from tests.cloud.test_ingest import ACCESSION

    box = online(broker, svc, boxes, "box-a")
    _archive_from(svc, tmp_path)
    admin = token(svc.store, "ada", Role.ADMIN)
    status, doc = call(svc, "POST", "/api/v1/boxes/box-a/commands", admin,
                       {"kind": "resend", "args": {"accession": ACCESSION}})
    assert status == 200 and doc["kind"] == "resend" and len(doc["commands"]) == 2, doc
    assert doc["id"] == doc["commands"][0]["id"] and doc["args"] == {}  # no patient data in the answer
    wait_for(lambda: len(box.executed) == 2, 60, "both resends delivered")
    assert sorted(c.args["study_instance_uid"] for c in box.executed) == ["1.2.3.701", "1.2.3.702"]
    assert all(set(c.args) == {"study_instance_uid"} for c in box.executed)  # sealed as any resend by UID
    status, refused = call(svc, "POST", "/api/v1/boxes/box-a/commands", admin,
                           {"kind": "resend", "args": {"accession": "ACC-UNKNOWN"}})
    assert status == 404 and refused["error"] == "no study archived from box-a has this accession number"
    status, bad = call(svc, "POST", "/api/v1/boxes/box-a/commands", admin,
                       {"kind": "resend", "args": {"accession": "A" * 17}})
    assert status == 400 and bad["error"].startswith("bad request: 'accession'")
    assert len(svc.store.commands.commands(box_id="box-a")) == 2
    digest = svc.commands.accession_digest("box-a", ACCESSION)
    rows = [r for r in svc.store.auth.audit(limit=1000) if r.action == "command.issue"]
    assert [(r.outcome, json.loads(r.detail).get("accession")) for r in rows].count(("ok", digest)) == 2
    assert [r.outcome for r in rows].count("refused") == 1
    refusal = next(r for r in rows if r.outcome == "refused")
    assert json.loads(refusal.detail)["accession"] == accession.digest(
        accession.index_key(keystore.read_x25519(svc._paths.key_file(svc.settings.cloud.envelope_key_file))),
        "box-a", "ACC-UNKNOWN")
    stored = [p for p in tmp_path.rglob("*.db*") if p.is_file()]
    assert len(stored) >= 2 and not [p for p in stored if ACCESSION.encode() in p.read_bytes()
                                     or b"ACC-UNKNOWN" in p.read_bytes()]
