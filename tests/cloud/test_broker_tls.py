"""Mutual TLS and per-box ACLs on a real mosquitto, with certificates from the real fleet CA."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from gateway.cloud import broker as broker_pki
from gateway.cloud.authority import INGEST_IDENTITY, FleetAuthority
from tests.peers import wait_for
from tests.tls_peers import PREFIX, Client, box_identity, start_tls_broker

HEX = "0" * 31 + "1"


@pytest.fixture
def fleet(tmp_path: Path):
    authority = FleetAuthority(tmp_path / "ca")
    broker = start_tls_broker(authority, tmp_path / "broker")
    clients: list[Client] = []

    def client(name: str | None, *, cert: tuple[Path, Path] | None = None) -> Client:
        if cert is None and name is not None:
            cert = box_identity(authority, name, tmp_path / "boxes")
        c = Client(broker.port, authority.ca_cert_path, *(cert or (None, None)), client_id=name or "anon")
        clients.append(c)
        return c

    yield authority, broker, client, tmp_path
    for c in clients:
        c.close()
    broker.stop()
    authority.close()


def _ingest_cert(authority: FleetAuthority, out: Path) -> tuple[Path, Path]:
    key, cert = broker_pki.issue_ingest_identity(authority, out)
    return cert, key


def test_box_connects_when_it_presents_its_fleet_certificate(fleet) -> None:
    _, _, client, _ = fleet
    assert client("box-a").connect() == "ok"


def test_broker_refuses_client_when_it_presents_no_certificate(fleet) -> None:
    _, _, client, _ = fleet
    assert client(None).connect().startswith(("tls:", "closed"))


def test_broker_refuses_client_when_its_certificate_is_from_another_ca(fleet) -> None:
    authority, broker, client, tmp_path = fleet
    rogue = FleetAuthority(tmp_path / "rogue-ca")
    cert, key = box_identity(rogue, "box-a", tmp_path / "rogue")
    rogue.close()
    assert client("box-a", cert=(cert, key)).connect().startswith(("tls:", "closed"))


def test_broker_refuses_box_when_its_certificate_is_revoked(fleet) -> None:
    authority, broker, client, tmp_path = fleet
    cert = box_identity(authority, "box-r", tmp_path / "boxes")
    assert client("box-r", cert=cert).connect() == "ok"
    assert authority.revoke_box("box-r", "stolen") == 1
    assert broker.tls is not None
    broker_pki.refresh_crl(authority, broker.tls)
    broker.stop()
    broker.start()
    assert client("box-r", cert=cert).connect().startswith(("tls:", "closed"))
    assert client("box-ok").connect() == "ok"


def test_revocation_takes_effect_without_a_restart_when_the_broker_reloads(fleet) -> None:
    authority, broker, client, tmp_path = fleet
    cert = box_identity(authority, "box-r", tmp_path / "boxes")
    assert client("box-r", cert=cert).connect() == "ok"
    authority.revoke_box("box-r", "stolen")
    broker_pki.refresh_crl(authority, broker.tls)
    broker.reload()
    wait_for(lambda: client("box-r", cert=cert).connect(timeout_s=2) != "ok", 15, "the reloaded CRL to refuse box-r")
    assert client("box-ok").connect() == "ok"


def test_box_cannot_publish_into_another_box_topics_when_acl_applies(fleet) -> None:
    authority, _, client, tmp_path = fleet
    ingest = client(INGEST_IDENTITY, cert=_ingest_cert(authority, tmp_path / "ingest"))
    assert ingest.connect() == "ok"
    assert ingest.subscribe(f"$share/ingest/{PREFIX}/+/up/+")[0] < 0x80
    box_a = client("box-a")
    assert box_a.connect() == "ok"
    box_a.publish(f"{PREFIX}/box-b/up/{HEX}", b"forged")
    box_a.publish(f"{PREFIX}/box-a/up/{HEX}", b"genuine")
    topic, payload = ingest.messages.get(timeout=10)
    assert (topic, payload) == (f"{PREFIX}/box-a/up/{HEX}", b"genuine")
    assert ingest.messages.empty()


def test_box_cannot_read_another_box_acks_when_acl_applies(fleet) -> None:
    authority, _, client, tmp_path = fleet
    ingest = client(INGEST_IDENTITY, cert=_ingest_cert(authority, tmp_path / "ingest"))
    box_a, box_b = client("box-a"), client("box-b")
    for c in (ingest, box_a, box_b):
        assert c.connect() == "ok"
    # mosquitto 2.0 grants the SUBACK and enforces "read" on every delivery: B's acks never reach A
    box_a.subscribe(f"{PREFIX}/box-b/ack")
    box_a.subscribe(f"{PREFIX}/+/ack")
    assert box_b.subscribe(f"{PREFIX}/box-b/ack")[0] < 0x80
    ingest.publish(f"{PREFIX}/box-b/ack", b"ack for b")
    ingest.publish(f"{PREFIX}/box-a/ack", b"ack for a")
    assert box_b.messages.get(timeout=10) == (f"{PREFIX}/box-b/ack", b"ack for b")
    assert box_a.messages.get(timeout=10) == (f"{PREFIX}/box-a/ack", b"ack for a")
    with pytest.raises(queue.Empty):
        box_a.messages.get_nowait()


def test_box_cannot_impersonate_ingest_when_it_publishes_acks(fleet) -> None:
    authority, _, client, tmp_path = fleet
    ingest = client(INGEST_IDENTITY, cert=_ingest_cert(authority, tmp_path / "ingest"))
    box_a, box_b = client("box-a"), client("box-b")
    assert ingest.connect() == "ok" and box_a.connect() == "ok" and box_b.connect() == "ok"
    assert box_b.subscribe(f"{PREFIX}/box-b/ack")[0] < 0x80
    box_a.publish(f"{PREFIX}/box-b/ack", b"forged ack")  # returns once the broker has handled it (PUBACK)
    ingest.publish(f"{PREFIX}/box-b/ack", b"genuine ack")
    # a forged ack the broker had routed would be queued to box-b ahead of the genuine one
    assert box_b.messages.get(timeout=10) == (f"{PREFIX}/box-b/ack", b"genuine ack")
