"""Remote commands, box side, with real peers: a provisioned edge behind mosquitto with mutual TLS and
the guard; the test plays the cloud with a real MQTT client holding a ``cloud.fleet`` identity and a
test command key (installed as the box's ``pki/command_keys.json``), signs and seals each command
(``core.command_wire``) and reads the box's results back (docs/operations.md, "Remote operations")."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway import __version__
from gateway.adapters import keystore
from gateway.adapters.dicom_scu import storescu
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud.broker import pki as broker_pki
from gateway.config import MqttSettings
from gateway.core import acksig, command_wire, schema, topics
from gateway.core.command_wire import Kind
from gateway.edge import command_keyring, diagnostics
from gateway.loopback import BOX_ID, EDGE_AE, LoopbackDeployment
from tests.peers import closed_port, dcmtk, real_images, wait_for
from tests.system.reconcile import acknowledged_count
from tests.system.test_phi import _phi
from tests.system.test_worklist_feed import _stop_fleet, metric

Deploy = Callable[..., LoopbackDeployment]
PREFIX = "mgw/v1"
ECHO_AE = "ECHOSCP"


class Cloud:
    """The test's cloud: a real MQTT client with a cloud.fleet identity, and a command key of its own."""

    def __init__(self, d: LoopbackDeployment, tmp: Path) -> None:
        assert d.broker.tls is not None
        key, cert = broker_pki.issue_service_identity(d.authority, "fleet", "9", tmp)
        settings = MqttSettings(host="127.0.0.1", port=d.broker.port, ca_file=str(d.broker.tls.ca_file),
                                cert_file=str(cert), key_file=str(key))
        self.d = d
        self.signer = acksig.AckSigner(os.urandom(32))
        self.births: list[dict[str, Any]] = []
        self.results: list[schema.CommandResult] = []
        self.parts: list[bytes] = []
        self._up = threading.Event()
        self._seq = 0
        self.link = MqttLink(settings, broker_pki.service_client_id(settings, "fleet", "9"), subscriptions=[
            (f"{PREFIX}/+/state", 1), *((t, 1) for t in topics.command_subscriptions(PREFIX))],
            on_message=self._on_message, on_state=lambda ok: self._up.set() if ok else None)

    def _on_message(self, message: Inbound) -> None:
        if message.topic == topics.telemetry_topic(PREFIX, BOX_ID, "state"):
            self.births.append(json.loads(message.payload))
        elif message.topic == topics.command_result_topic(PREFIX, BOX_ID):
            self.results.append(schema.parse(schema.CommandResult, message.payload, "result", schema.MAX_RESULT_BYTES))
        elif message.topic == topics.command_blob_topic(PREFIX, BOX_ID):
            self.parts.append(message.payload)

    def install_key(self) -> None:
        """What enrolment does with the answer's ``command_keys``."""
        command_keyring.save(command_keyring.keyring_path(self.d.edge_dir), acksig.AckKeyring((self.signer.public,)))

    def box_key(self) -> bytes:
        births = wait_for(lambda: [b for b in self.births if b.get("kind") == "birth" and b.get("worklist_key")],
                          60, "a birth carrying the box's inbound key")
        return bytes.fromhex(births[-1]["worklist_key"])

    def frame(self, kind: Kind, args: dict[str, Any] | None = None, *, seq: int | None = None,
              signer: acksig.AckSigner | None = None, box: str = BOX_ID, issued: float | None = None,
              lifetime_s: float = 600.0, command_id: bytes | None = None) -> tuple[bytes, str]:
        if seq is None:
            self._seq += 1
            seq = self._seq
        cid = command_id or os.urandom(16)
        at = time.time() if issued is None else issued
        frame = command_wire.seal(box, self.box_key(), signer or self.signer, command_id=cid, seq=seq, kind=kind,
                                  args=args or {}, issued_by="王工程师", issued_at=at, expires_at=at + lifetime_s,
                                  data_key=os.urandom(32), eph_private=os.urandom(32), nonce=os.urandom(12))
        return frame, cid.hex()

    def publish(self, frame: bytes) -> None:
        assert self.link.publish(topics.command_topic(PREFIX, BOX_ID), frame, qos=1)

    def send(self, kind: Kind, args: dict[str, Any] | None = None, **kw: Any) -> str:
        frame, cid = self.frame(kind, args, **kw)
        self.publish(frame)
        return cid

    def states(self, cid: str) -> list[str]:
        return [r.state for r in list(self.results) if r.id == cid]

    def final(self, cid: str, timeout_s: float = 90) -> schema.CommandResult:
        return wait_for(lambda: next((r for r in list(self.results) if r.id == cid
                                      and r.state in ("succeeded", "failed")), None), timeout_s,
                        f"the result of command {cid[:8]}")


@contextmanager
def _cloud(d: LoopbackDeployment, tmp: Path) -> Iterator[Cloud]:
    cloud = Cloud(d, tmp)
    cloud.link.start()
    try:
        wait_for(cloud._up.is_set, 60, "the test cloud connected to the broker")
        yield cloud
    finally:
        cloud.link.stop()


@pytest.fixture
def echo_scp() -> Iterator[tuple[int, list[str]]]:
    """The modality's Verification SCP, counting the C-ECHOs it answered."""
    seen: list[str] = []
    ae = AE(ae_title=ECHO_AE)
    ae.add_supported_context(Verification)

    def on_echo(event: Any) -> int:
        seen.append(str(event.assoc.requestor.ae_title))
        return 0x0000

    from pynetdicom import evt
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, on_echo)])
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()


def _study_items(d: LoopbackDeployment, study: str) -> list[tuple[str, float | None]]:
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        return [(str(r[0]), r[1]) for r in conn.execute(
            "SELECT state, acked_at FROM items WHERE study_instance_uid = ?", (study,))]


def _edge_log(d: LoopbackDeployment) -> str:
    return (d.root / "edge.log").read_text(errors="replace")


def test_every_command_kind_runs_once_and_reports_back_when_signed_for_this_box(
        deploy: Deploy, tmp_path: Path, echo_scp: tuple[int, list[str]]) -> None:
    port, echoes = echo_scp
    d = deploy(secure=True, edge_overrides={"commitment": {"modalities": [f"{ECHO_AE}@127.0.0.1:{port}"]}})
    _stop_fleet(d)
    files = real_images()
    dcmtk("storescu")
    assert storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files).returncode == 0
    wait_for(lambda: acknowledged_count(d) >= len(files), 120, "every instance acknowledged")
    with _cloud(d, tmp_path / "cloud-id") as cloud:
        cloud.install_key()
        echo_frame, echo_id = cloud.frame(Kind.ECHO)
        cloud.publish(echo_frame)
        echo = cloud.final(echo_id)
        assert echo.state == "succeeded" and echo.detail["status"] == "0x0000", echo
        assert echo.detail["called_ae"] == ECHO_AE and isinstance(echo.detail["rtt_ms"], float)
        assert cloud.states(echo_id)[0] == "received" and echoes == [EDGE_AE]

        cloud.publish(echo_frame)  # delivered again: answered from the store, not run again
        wait_for(lambda: cloud.states(echo_id).count("succeeded") == 2, 60, "the stored result published again")
        assert echoes == [EDGE_AE] and metric(d, "mgw_edge_commands_redelivered_total") == 1

        listed = cloud.final(cloud.send(Kind.QUARANTINE, {"action": "list"}))
        assert listed.state == "succeeded" and listed.detail["items"] == 0
        missing = cloud.final(cloud.send(Kind.QUARANTINE, {"action": "replay", "item": 999}))
        assert missing.state == "failed" and "no quarantined item" in (missing.message or "")

        bundle_id = cloud.send(Kind.BUNDLE, {"log_lines": 500})
        bundle = cloud.final(bundle_id)
        assert bundle.state == "succeeded" and "running" in cloud.states(bundle_id), bundle
        wait_for(lambda: len(cloud.parts) >= int(bundle.detail["parts"] or 0), 60, "every blob part")
        private = keystore.read_x25519(d.cloud_dir / "keys" / "envelope.key")
        doc = diagnostics.open_parts(cloud.parts, private, BOX_ID, bundle_id)
        assert doc["box_id"] == BOX_ID and doc["logs"] and doc["queue"] and doc["certificate"]["not_after"]
        text = json.dumps(doc, ensure_ascii=False)
        assert "command echo accepted" in text, "the log tail is in the bundle"
        assert "BEGIN" not in text and "王工程师" in text  # no key material; the operator's name is not PHI
        leaks = sorted(v for v in _phi(files) if v in text)
        assert leaks == [], f"patient data in the bundle: {leaks}"

        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        held = _study_items(d, study)
        asked_at = time.time()
        resent = cloud.final(cloud.send(Kind.RESEND, {"study_instance_uid": study}))
        assert resent.state == "succeeded" and resent.detail["instances"] == len(held), resent
        wait_for(lambda: all(s == "acknowledged" and (a or 0) >= asked_at for s, a in _study_items(d, study)), 120,
                 "the study sent again and acknowledged again")
        not_held = cloud.final(cloud.send(Kind.RESEND, {"study_instance_uid": "1.2.3.4.5.6.7.8.9"}))
        assert not_held.state == "failed" and (not_held.message or "").startswith("not held")

        renewed = cloud.final(cloud.send(Kind.RENEW))
        assert renewed.state == "succeeded" and int(renewed.detail["not_after"] or 0) > time.time(), renewed
        fleet_keys = command_keyring.load(command_keyring.keyring_path(d.edge_dir))  # the renewal answer's
        assert fleet_keys is not None and fleet_keys.publics != (cloud.signer.public,)
        cloud.install_key()  # the test's own key again (the renewal installed the fleet's command keys)

        bad = cloud.send(Kind.RESTART, {"service": "sshd"})  # not on the allow-list: refused before it runs
        wait_for(lambda: "refused" in cloud.states(bad), 60, "the restart of a service not allowed refused")
        assert metric(d, "mgw_edge_commands_refused_total", reason="bad-arguments") == 1
        restart_id = cloud.send(Kind.RESTART, {"service": "edge"})
        assert d.edge is not None
        wait_for(lambda: d.edge is not None and d.edge.poll() is not None, 60, "the edge to exit for its restart")
        assert d.edge.returncode == 75  # EX_TEMPFAIL: systemd's Restart=on-failure starts it again
        d.start_edge()  # what systemd does
        assert cloud.final(restart_id).state == "succeeded"
        assert metric(d, "mgw_edge_command_last_seq") == cloud._seq
    log = _edge_log(d)
    assert log.count(f"COMMAND_ID={echo_id}") >= 2 and "Traceback" not in log


def test_forged_garbage_replayed_expired_future_and_foreign_commands_are_refused_and_counted_when_published(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    _stop_fleet(d)
    with _cloud(d, tmp_path / "cloud-id") as cloud:
        command_keyring.keyring_path(d.edge_dir).unlink()  # as a box enrolled before remote commands existed
        no_key = cloud.send(Kind.QUARANTINE, {"action": "list"})  # before the box holds a command key
        wait_for(lambda: "refused" in cloud.states(no_key), 60, "a command refused without a keyring")
        cloud.install_key()
        good = cloud.final(cloud.send(Kind.QUARANTINE, {"action": "list"}, seq=10))
        assert good.state == "succeeded"
        sent = {
            "untrusted": [cloud.send(Kind.QUARANTINE, {"action": "list"}, seq=11,
                                     signer=acksig.AckSigner(os.urandom(32))),
                          cloud.send(Kind.QUARANTINE, {"action": "list"}, seq=12, box="other-box")],
            "replayed": [cloud.send(Kind.QUARANTINE, {"action": "list"}, seq=10),
                         cloud.send(Kind.QUARANTINE, {"action": "list"}, seq=3)],
            "expired": [cloud.send(Kind.QUARANTINE, {"action": "list"}, seq=13, issued=time.time() - 120,
                                   lifetime_s=60)],
            "issued-in-the-future": [cloud.send(Kind.QUARANTINE, {"action": "list"}, seq=14,
                                                issued=time.time() + 3600)],
            "bad-arguments": [cloud.send(Kind.QUARANTINE, {"action": "list", "extra": 1}, seq=15),
                              cloud.send(Kind.RESTART, {"service": "../../bin/sh"}, seq=16)],
        }
        cloud.publish(b"garbage, not a command frame" * 8)
        cloud.publish(b"MGWK" + bytes(300))
        for reason, ids in sent.items():
            wait_for(lambda ids=ids: all("refused" in cloud.states(i) for i in ids), 60, f"{reason} refused")
            got = {r.reason for r in list(cloud.results) if r.id in ids and r.state == "refused"}
            assert got == {reason}, (reason, got)
            assert not any(s in ("received", "succeeded", "failed") for i in ids for s in cloud.states(i))
        wait_for(lambda: metric(d, "mgw_edge_commands_refused_total", reason="malformed") >= 2, 60,
                 "garbage refused and counted")
        assert metric(d, "mgw_edge_commands_refused_total", reason="untrusted") == 2
        assert metric(d, "mgw_edge_commands_refused_total", reason="replayed") == 2
        assert metric(d, "mgw_edge_commands_refused_total", reason="no-command-key") == 1
        assert metric(d, "mgw_edge_command_last_seq") == 10, "nothing refused was accepted"
        assert metric(d, "mgw_edge_commands_finished_total", state="succeeded") == 1
    log = _edge_log(d)
    assert log.count("command refused") >= 11 and "Traceback" not in log


def test_command_queued_while_the_box_is_offline_runs_when_it_reconnects(deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    _stop_fleet(d)
    with _cloud(d, tmp_path / "cloud-id") as cloud:
        cloud.install_key()
        first = cloud.final(cloud.send(Kind.QUARANTINE, {"action": "list"}))  # the box's session subscribed
        assert first.state == "succeeded"
        d.kill_edge()
        wait_for(lambda: any(b.get("kind") == "death" for b in cloud.births), 60, "the box's death (its will)")
        queued = cloud.send(Kind.QUARANTINE, {"action": "list"})  # the broker holds it in the box's session
        d.start_edge()
        assert cloud.final(queued).state == "succeeded"


def _restart_edge_when_it_exits(d: LoopbackDeployment, what: str) -> None:
    """What systemd's Restart=on-failure does when the edge exits 75 for a restart."""
    wait_for(lambda: d.edge is not None and d.edge.poll() is not None, 120, what)
    assert d.edge is not None and d.edge.returncode == 75, d.log_tail()
    d.start_edge()


def test_configuration_applies_after_its_health_check_and_rolls_back_when_the_check_fails(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True, edge_overrides={"health": {"config_check_s": 10.0}})  # the broken version waits it out
    _stop_fleet(d)
    with _cloud(d, tmp_path / "cloud-id") as cloud:
        cloud.install_key()
        refused = cloud.final(cloud.send(Kind.CONFIG, {"version": 2, "document": "[box]\nid = \"other\"\n"}))
        assert refused.state == "failed" and "not remote-managed" in (refused.message or "")
        assert d.edge is not None and d.edge.poll() is None, "a refused configuration restarts nothing"

        good = "[health]\nheartbeat_s = 7.0\n"
        applied_id = cloud.send(Kind.CONFIG, {"version": 3, "document": good})
        _restart_edge_when_it_exits(d, "the edge to restart for version 3")
        applied = cloud.final(applied_id)
        assert applied.state == "succeeded" and applied.detail == {"version": 3, "applied": True,
                                                                    "rolled_back": False}, applied
        wait_for(lambda: any(b.get("config_version") == 3 for b in cloud.births), 60, "a birth with version 3")
        assert metric(d, "mgw_edge_config_version") == 3

        with closed_port() as port:
            broken = f"[mqtt]\nport = {port}\n"  # validates, but the uplink never connects
            broken_id = cloud.send(Kind.CONFIG, {"version": 4, "document": broken})
            _restart_edge_when_it_exits(d, "the edge to restart for version 4")
            _restart_edge_when_it_exits(d, "the edge to roll version 4 back and restart")
        rolled = cloud.final(broken_id)
        assert rolled.state == "failed" and rolled.detail == {"version": 4, "applied": False,
                                                               "rolled_back": True}, rolled
        assert (d.edge_dir / "remote.toml").read_text() == good
        wait_for(lambda: metric(d, "mgw_edge_config_version") == 3, 60, "version 3 running again")
    log = _edge_log(d)
    assert "rolled back" in log and "Traceback" not in log


@contextmanager
def _bundle_server(d: LoopbackDeployment, body: bytes) -> Iterator[str]:
    """An HTTPS server holding one update bundle, with a certificate of the fleet CA (the broker's)."""
    assert d.broker.tls is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d.broker.tls.cert_file, d.broker.tls.key_file)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path != "/bundle.raucb":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/bundle.raucb"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_update_is_fetched_checked_installed_and_reported_by_version_when_the_box_starts_it(
        deploy: Deploy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "installed.raucb"
    installer = tmp_path / "installer"
    installer.write_text(f"#!/bin/sh\ncp \"$1\" {installed}\n")
    installer.chmod(0o755)
    monkeypatch.setenv("MGW_UPDATE_INSTALLER", str(installer))  # the seam for RAUC outside the image
    d = deploy(secure=True)
    _stop_fleet(d)
    body = os.urandom(300_000)
    with _cloud(d, tmp_path / "cloud-id") as cloud, _bundle_server(d, body) as url:
        cloud.install_key()
        wrong = cloud.final(cloud.send(Kind.UPDATE, {"url": url, "sha256": "0" * 64, "version": __version__}))
        assert wrong.state == "failed" and "SHA-256" in (wrong.message or "") and not installed.exists()

        update_id = cloud.send(Kind.UPDATE, {"url": url, "sha256": hashlib.sha256(body).hexdigest(),
                                             "version": __version__})
        _restart_edge_when_it_exits(d, "the edge to start the installed version")
        done = cloud.final(update_id)
        assert done.state == "succeeded" and done.detail["committed"] is True, done
        assert installed.read_bytes() == body
        assert not (d.edge_dir / "update" / "bundle.raucb").exists()
