"""Mutual TLS and the guard plugin on a real mosquitto, with certificates from the real fleet CA.

Identity is the certificate's CN: the client id is bound to it, each box is confined to its
own topics (subscriptions included), oversize packets drop their sender, and a revoked
certificate's open connections are dropped within REVOCATION_BOUND_S.
"""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.adapters.mqtt_link import MqttLink
from gateway.cloud.authority.ca import FleetAuthority
from gateway.config import MqttSettings
from tests.peers import wait_for
from tests.tls_peers import PREFIX, Client, box_identity, service_identity, start_tls_broker

HEX = "0" * 31 + "1"
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code, CONNACK and SUBACK
REVOCATION_BOUND_S = 3.0  # the plugin polls the CRL every second; docs/security.md states this bound


@pytest.fixture
def fleet(tmp_path: Path):
    authority = FleetAuthority(tmp_path / "ca", crl_copies=(tmp_path / "broker" / "crl.pem",))
    broker = start_tls_broker(authority, tmp_path / "broker")
    clients: list[Client] = []

    def client(name: str | None, *, cert: tuple[Path, Path] | None = None, client_id: str | None = None) -> Client:
        if cert is None and name is not None:
            cert = box_identity(authority, name, tmp_path / "boxes")
        c = Client(broker.port, authority.ca_cert_path, *(cert or (None, None)), client_id=client_id or name or "anon")
        clients.append(c)
        return c

    def service(role: str, worker: str = "1") -> Client:
        cert = service_identity(authority, role, worker, tmp_path / "cloud")
        return client(f"cloud.{role}.{worker}", cert=cert)

    yield authority, broker, client, service, tmp_path
    for c in clients:
        c.close()
    broker.stop()
    authority.close()


def test_box_connects_when_it_presents_its_fleet_certificate(fleet) -> None:
    _, _, client, _, _ = fleet
    assert client("box-a").connect() == "ok"


def test_broker_refuses_client_when_it_presents_no_certificate(fleet) -> None:
    _, _, client, _, _ = fleet
    assert client(None).connect().startswith(("tls:", "closed"))


def test_broker_refuses_client_when_its_certificate_is_from_another_ca(fleet) -> None:
    _, _, client, _, tmp_path = fleet
    rogue = FleetAuthority(tmp_path / "rogue-ca")
    cert, key = box_identity(rogue, "box-a", tmp_path / "rogue")
    rogue.close()
    assert client("box-a", cert=(cert, key)).connect().startswith(("tls:", "closed"))


def test_box_is_refused_and_victims_keep_their_connections_when_it_uses_another_client_id(fleet) -> None:
    authority, _, client, service, tmp_path = fleet
    victims = [client("box-b"), service("ingest"), service("fleet")]
    for victim in victims:
        assert victim.connect(clean_start=False) == "ok"
    mine = box_identity(authority, "box-a", tmp_path / "boxes")
    for stolen_id in ("box-b", "cloud.ingest.1", "cloud.fleet.1", "box-b:telemetry", "box-a-x", "box-a:Up", "anon"):
        assert client(None, cert=mine, client_id=stolen_id).connect(clean_start=False) == f"refused:{NOT_AUTHORIZED}"
    assert not any(v.disconnected.is_set() for v in victims)
    ingest = victims[1]
    assert ingest.subscribe(f"$share/ingest/{PREFIX}/+/up/+") == [1]
    victims[0].publish(f"{PREFIX}/box-b/up/{HEX}", b"still flowing")
    assert ingest.messages.get(timeout=10) == (f"{PREFIX}/box-b/up/{HEX}", b"still flowing")


def test_box_connects_under_its_own_role_client_ids_when_they_are_bound_to_its_identity(fleet) -> None:
    authority, _, client, _, tmp_path = fleet
    mine = box_identity(authority, "box-a", tmp_path / "boxes")
    for own_id in ("box-a", "box-a:telemetry", "box-a:selftest"):
        assert client(None, cert=mine, client_id=own_id).connect() == "ok"


def test_box_subscriptions_are_refused_and_ingest_gets_every_chunk_when_a_box_targets_the_share_group(fleet) -> None:
    _, _, client, service, _ = fleet
    ingest = service("ingest")
    box_a, box_b = client("box-a"), client("box-b")
    for c in (ingest, box_a, box_b):
        assert c.connect() == "ok"
    assert ingest.subscribe(f"$share/ingest/{PREFIX}/+/up/+") == [1]
    for hostile in (f"$share/ingest/{PREFIX}/+/up/+", f"$share/other/{PREFIX}/box-a/ack", f"{PREFIX}/box-b/ack",
                    f"{PREFIX}/+/ack", f"{PREFIX}/+/up/+", f"{PREFIX}/box-a/#", "#", "$SYS/#"):
        assert box_a.subscribe(hostile) == [NOT_AUTHORIZED], hostile
    assert box_a.subscribe(f"{PREFIX}/box-a/ack") == [1]
    sent = {f"{PREFIX}/box-b/up/{n:032x}" for n in range(40)}
    for topic in sorted(sent):
        box_b.publish(topic, b"chunk")
    got = {ingest.messages.get(timeout=10)[0] for _ in sent}
    assert got == sent
    with pytest.raises(queue.Empty):
        box_a.messages.get(timeout=0.5)


def test_box_cannot_publish_into_another_box_topics_when_acl_applies(fleet) -> None:
    _, _, client, service, _ = fleet
    ingest = service("ingest")
    assert ingest.connect() == "ok"
    assert ingest.subscribe(f"$share/ingest/{PREFIX}/+/up/+")[0] < 0x80
    box_a = client("box-a")
    assert box_a.connect() == "ok"
    box_a.publish(f"{PREFIX}/box-b/up/{HEX}", b"forged")
    box_a.publish(f"{PREFIX}/box-a/up/{HEX}", b"genuine")
    topic, payload = ingest.messages.get(timeout=10)
    assert (topic, payload) == (f"{PREFIX}/box-a/up/{HEX}", b"genuine")
    assert ingest.messages.empty()


def test_box_cannot_impersonate_ingest_when_it_publishes_acks(fleet) -> None:
    _, _, client, service, _ = fleet
    ingest = service("ingest")
    box_a, box_b = client("box-a"), client("box-b")
    assert ingest.connect() == "ok" and box_a.connect() == "ok" and box_b.connect() == "ok"
    assert box_b.subscribe(f"{PREFIX}/box-b/ack")[0] < 0x80
    box_a.publish(f"{PREFIX}/box-b/ack", b"forged ack")  # returns once the broker has handled it (PUBACK)
    ingest.publish(f"{PREFIX}/box-b/ack", b"genuine ack")
    # a forged ack the broker had routed would be queued to box-b ahead of the genuine one
    assert box_b.messages.get(timeout=10) == (f"{PREFIX}/box-b/ack", b"genuine ack")


def test_oversize_publish_drops_only_the_offender_when_it_exceeds_the_packet_limit(fleet) -> None:
    _, _, client, service, _ = fleet
    ingest = service("ingest")
    box_a, box_b = client("box-a"), client("box-b")
    for c in (ingest, box_a, box_b):
        assert c.connect() == "ok"
    assert ingest.subscribe(f"$share/ingest/{PREFIX}/+/up/+") == [1]
    box_a._mqtt.publish(f"{PREFIX}/box-a/up/{HEX}", b"\0" * (60 * 1024 * 1024), qos=1)
    wait_for(box_a.disconnected.is_set, 30, "the broker to drop the 60 MiB publisher")
    box_b.publish(f"{PREFIX}/box-b/up/{HEX}", b"\1" * (128 * 1024))  # a full-size chunk frame still passes
    assert ingest.messages.get(timeout=10) == (f"{PREFIX}/box-b/up/{HEX}", b"\1" * (128 * 1024))
    assert not box_b.disconnected.is_set() and not ingest.disconnected.is_set()
    with pytest.raises(queue.Empty):
        ingest.messages.get(timeout=0.5)


def test_revoked_box_connections_are_dropped_within_the_bound_and_refused_when_revoked(fleet) -> None:
    authority, _, client, _, tmp_path = fleet
    cert = box_identity(authority, "box-r", tmp_path / "boxes")
    uplink, telemetry = client("box-r", cert=cert), client(None, cert=cert, client_id="box-r:telemetry")
    bystander = client("box-ok")
    for c in (uplink, telemetry, bystander):
        assert c.connect() == "ok"
    revoked_at = time.monotonic()
    assert authority.revoke_box("box-r", "stolen") == 1  # writes the broker's CRL copy, nothing else
    wait_for(lambda: uplink.disconnected.is_set() and telemetry.disconnected.is_set(), 15,
             "the revoked box's connections to drop")
    assert time.monotonic() - revoked_at < REVOCATION_BOUND_S
    assert client("box-r", cert=cert).connect().startswith(("tls:", "closed", "refused"))
    assert not bystander.disconnected.is_set()
    assert client("box-ok2").connect() == "ok"


def test_revocation_takes_effect_without_a_restart_when_the_broker_reloads(fleet) -> None:
    authority, broker, client, _, tmp_path = fleet
    cert = box_identity(authority, "box-r", tmp_path / "boxes")
    assert client("box-r", cert=cert).connect() == "ok"
    authority.revoke_box("box-r", "stolen")
    broker.reload()  # mosquitto's own crlfile too: refused at the TLS handshake from now on
    wait_for(lambda: client("box-r", cert=cert).connect(timeout_s=2) != "ok", 60, "the reloaded CRL to refuse box-r")
    assert client("box-ok").connect() == "ok"


def _renew(authority: FleetAuthority, cert: Path, out: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "box-n")])).sign(key, hashes.SHA256()))
    issued = authority.renew(cert.read_bytes(), csr.public_bytes(serialization.Encoding.PEM), days=30)
    new_cert, new_key = out / "renewed.pem", out / "renewed.key"
    new_cert.write_bytes(issued.certificate_pem)
    new_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return new_cert, new_key


def test_superseded_certificate_is_refused_and_the_renewed_one_admitted_when_a_box_renews(fleet) -> None:
    authority, _, client, _, tmp_path = fleet
    old = box_identity(authority, "box-n", tmp_path / "boxes")
    on_old = client("box-n", cert=old)
    assert on_old.connect() == "ok"
    old_serial = format(x509.load_pem_x509_certificate(old[0].read_bytes()).serial_number, "x")
    new = _renew(authority, old[0], tmp_path / "boxes")
    record = authority.record(old_serial)
    assert record is not None and record.revoke_reason == "superseded"
    wait_for(on_old.disconnected.is_set, 60, "the connection on the superseded certificate to drop")
    assert client("box-n", cert=new).connect() == "ok"  # the box's reconnect with its new certificate
    assert client("box-n", cert=old).connect().startswith(("tls:", "closed", "refused"))


def test_link_logs_which_subscriptions_the_broker_refused_when_a_box_asks_for_another_box_topics(
        fleet, caplog: pytest.LogCaptureFixture) -> None:
    authority, broker, _, _, tmp_path = fleet
    cert, key = box_identity(authority, "box-a", tmp_path / "link")
    settings = MqttSettings(host="127.0.0.1", port=broker.port, ca_file=str(authority.ca_cert_path),
                            cert_file=str(cert), key_file=str(key))
    link = MqttLink(settings, "box-a", subscriptions=[(f"{PREFIX}/box-a/ack", 1), (f"{PREFIX}/box-b/ack", 1)],
                    on_message=lambda m: None)
    caplog.set_level(logging.INFO, logger="gateway.adapters.mqtt_link")
    link.start()
    try:
        refused = wait_for(lambda: [r for r in caplog.records if r.getMessage() == "broker refused subscription"],
                           30, "the refused subscription logged")
    finally:
        link.stop()
    assert refused[0].levelno == logging.ERROR
    assert getattr(refused[0], "REFUSED") == f"{PREFIX}/box-b/ack: Not authorized"
    assert not [r for r in caplog.records if r.getMessage() == "subscriptions granted"]
