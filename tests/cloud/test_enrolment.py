"""Enrolment over real HTTPS against the real fleet CA, and `provision` on a box state dir."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography import x509

from gateway.adapters import enrolment_client
from gateway.adapters.keystore import FileKeyStore
from gateway.cloud.authority import ack_keys
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.enrolment.server import BoxDirections, EnrolmentServer
from gateway.config import load_edge
from gateway.edge import ack_keyring
from gateway.edge import provision as prov
from gateway.edge.renewal import Renewer, renewal_due
from gateway.paths import Paths
from tests.tls_peers import start_tls_broker

PUB = "A" * 43 + "="


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


BROKERS: dict[int, object] = {}
ACK_KEY_FILES: dict[int, Path] = {}


@pytest.fixture
def cloud(tmp_path: Path):
    clock = Clock()
    authority = FleetAuthority(tmp_path / "ca", clock=clock)
    broker = start_tls_broker(authority, tmp_path / "broker")
    key_pem, cert_pem = authority.issue_with_key("enrolment", 30, server_hosts=["127.0.0.1"])
    (tmp_path / "enrol.key").write_bytes(key_pem)
    (tmp_path / "enrol.pem").write_bytes(cert_pem)
    ack_key = tmp_path / "cloud-keys" / "ack.key"
    ack_keys.load_signer(ack_key)
    command_key = tmp_path / "cloud-keys" / "command.key"
    ack_keys.load_signer(command_key)
    server = EnrolmentServer(authority, BoxDirections(PUB, "127.0.0.1", broker.port, "mgw/v1", 90.0,
                                                      lambda: ack_keys.keyring_of(ack_key),
                                                      lambda: ack_keys.keyring_of(command_key)),
                             tmp_path / "enrol.pem", tmp_path / "enrol.key")
    server.start()
    BROKERS[server.port] = broker
    ACK_KEY_FILES[server.port] = ack_key
    yield authority, server, clock, tmp_path
    BROKERS.pop(server.port, None)
    ACK_KEY_FILES.pop(server.port, None)
    server.stop()
    broker.stop()
    authority.close()


def _enrolment(authority: FleetAuthority, server: EnrolmentServer, token: str) -> prov.Enrolment:
    return prov.Enrolment(f"https://127.0.0.1:{server.port}", authority.ca_fingerprint, token)


def test_fresh_token_provisions_box_when_redeemed(cloud) -> None:
    authority, server, _, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=3600)
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    result = prov.provision(_enrolment(authority, server, token), paths, site_tables={"dicom": {"ae_title": "CT01"}})
    assert result.ok, result.checks
    assert (result.box_id, result.site, result.modality) == ("ct-01", "clinic-7", "CT")
    key = paths.state_dir / "keys" / "box.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    settings = load_edge([result.device_toml])
    assert (settings.box.id, settings.dicom.ae_title, settings.box.cloud_public_key) == ("ct-01", "CT01", PUB)
    assert [r.kind for r in authority.records("ct-01")] == ["box"]
    assert not (paths.state_dir / "keys" / "box.pending.key").exists()


def test_token_refused_with_clear_message_when_reused(cloud) -> None:
    authority, server, _, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=3600)
    first = Paths(tmp_path / "etc", tmp_path / "box1", tmp_path / "run")
    prov.provision(_enrolment(authority, server, token), first, self_test=False)
    second = Paths(tmp_path / "etc", tmp_path / "box2", tmp_path / "run")
    with pytest.raises(enrolment_client.EnrolmentError, match="token already used"):
        prov.provision(_enrolment(authority, server, token), second, self_test=False)
    assert not (second.state_dir / "device.toml").exists()
    assert not any((second.state_dir / "keys").glob("*.key"))


def test_token_refused_with_clear_message_when_expired(cloud) -> None:
    authority, server, clock, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=60)
    clock.now += 61
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    with pytest.raises(enrolment_client.EnrolmentError, match="token expired"):
        prov.provision(_enrolment(authority, server, token), paths, self_test=False)


def test_provision_refused_when_the_ca_fingerprint_does_not_match(cloud) -> None:
    authority, server, _, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=60)
    bad = prov.Enrolment(f"https://127.0.0.1:{server.port}", "00" * 32, token)
    with pytest.raises(enrolment_client.EnrolmentError, match="pinned fingerprint"):
        prov.provision(bad, Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run"), self_test=False)
    assert authority.records("ct-01") == []  # the token was never sent


def test_certificate_renewed_when_two_thirds_of_its_lifetime_passed(cloud) -> None:
    authority, server, clock, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=3600)
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    result = prov.provision(_enrolment(authority, server, token), paths, self_test=False)
    settings = load_edge([result.device_toml])
    renewer = Renewer(settings, FileKeyStore(paths.state_dir / "keys"), clock=clock)
    assert renewer.enabled and not renewer.check()  # fresh: not due
    old = x509.load_pem_x509_certificate(Path(settings.mqtt.cert_file).read_bytes())
    clock.now += 61 * 86400  # 90-day certificate: 2/3 is 60 days
    assert renewer.check()
    new = x509.load_pem_x509_certificate(Path(settings.mqtt.cert_file).read_bytes())
    assert new.serial_number != old.serial_number
    records = authority.records("ct-01")
    assert records[-1].renewed_from == format(old.serial_number, "x")
    assert prov.identity_check(settings, clock)[1]  # new key and certificate match


def test_renewal_refused_when_the_box_is_revoked(cloud) -> None:
    authority, server, clock, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=3600)
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    result = prov.provision(_enrolment(authority, server, token), paths, self_test=False)
    authority.revoke_box("ct-01", "stolen")
    renewer = Renewer(load_edge([result.device_toml]), FileKeyStore(paths.state_dir / "keys"), clock=clock)
    with pytest.raises(enrolment_client.EnrolmentError, match="revoked"):
        renewer.renew()


def test_renewal_due_when_the_fraction_of_lifetime_has_passed() -> None:
    assert not renewal_due(0, 90, 59.9, 2 / 3)
    assert renewal_due(0, 90, 60.0, 2 / 3)


def test_link_presents_the_renewed_certificate_when_it_reconnects_after_renewal(cloud) -> None:
    from gateway.adapters.mqtt_link import MqttLink
    from gateway.cloud.broker import pki as broker_pki

    authority, server, clock, tmp_path = cloud
    broker = BROKERS[server.port]
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=3600)
    settings = load_edge([prov.provision(_enrolment(authority, server, token), paths, self_test=False).device_toml])
    old_serial = format(x509.load_pem_x509_certificate(Path(settings.mqtt.cert_file).read_bytes()).serial_number, "x")
    link = MqttLink(settings.mqtt, client_id="ct-01", subscriptions=[], on_message=lambda _m: None,
                    session_expiry_s=0)
    later = Clock()
    later.now = clock.now + 61 * 86400  # the box thinks renewal is due; the CA and broker keep real time
    renewer = Renewer(settings, FileKeyStore(paths.state_dir / "keys"), link.reload_identity, later)
    link.start()
    try:
        assert link.wait_connected(60)
        assert renewer.check()
        record = authority.record(old_serial)
        assert record is not None and record.revoke_reason == "superseded"  # the renewal revoked it
        broker_pki.refresh_crl(authority, broker.tls.crl_file)  # type: ignore[attr-defined]
        broker.stop()  # type: ignore[attr-defined]
        broker.start()  # type: ignore[attr-defined]
        assert link.wait_connected(60)  # reconnected: it presented the new certificate, the old one is revoked
    finally:
        link.stop()


def test_provision_installs_the_cloud_ack_keyring_when_the_box_is_enrolled(cloud) -> None:
    authority, server, _, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=3600)
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    prov.provision(_enrolment(authority, server, token), paths, self_test=False)
    path = ack_keyring.keyring_path(paths.state_dir)
    cloud_keys = ack_keys.load(ACK_KEY_FILES[server.port], create=False)
    assert ack_keyring.load(path) == cloud_keys.keyring()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    private = ACK_KEY_FILES[server.port].read_bytes()
    assert not any(private in f.read_bytes() for f in paths.state_dir.rglob("*") if f.is_file())


def test_provision_installs_the_fleet_command_keyring_when_the_box_is_enrolled(cloud) -> None:
    from gateway.edge import command_keyring

    authority, server, _, tmp_path = cloud
    token = authority.create_token("ct-02", "clinic-7", "CT", ttl_s=3600)
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    prov.provision(_enrolment(authority, server, token), paths, self_test=False)
    installed = command_keyring.load(command_keyring.keyring_path(paths.state_dir))
    assert installed == ack_keys.keyring_of(tmp_path / "cloud-keys" / "command.key")
    assert installed != ack_keys.keyring_of(ACK_KEY_FILES[server.port])  # a key of its own, not the ack key


def test_renewal_installs_the_next_ack_key_when_the_cloud_staged_then_promoted_it(cloud) -> None:
    """Rotation end to end over real HTTPS: stage -> renewal brings current + next -> promote ->
    the next renewal brings only the new key; the old private key is gone from the cloud."""
    authority, server, clock, tmp_path = cloud
    token = authority.create_token("ct-01", "clinic-7", "CT", ttl_s=3600)
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    settings = load_edge([prov.provision(_enrolment(authority, server, token), paths, self_test=False).device_toml])
    keyring_file = ack_keyring.keyring_path(paths.state_dir)
    renewer = Renewer(settings, FileKeyStore(paths.state_dir / "keys"), clock=clock, keyring_file=keyring_file)
    ack_file = ACK_KEY_FILES[server.port]
    old = ack_keys.load(ack_file, create=False).current
    staged = ack_keys.stage(ack_file)
    assert staged.next is not None
    assert ack_keyring.load(keyring_file).key_ids == (old.key_id,)  # not told yet
    renewer.renew()
    assert ack_keyring.load(keyring_file).key_ids == (old.key_id, staged.next.key_id)
    promoted = ack_keys.promote(ack_file)
    assert promoted.current.public == staged.next.public and promoted.next is None
    assert not ack_keys.next_path(ack_file).exists() and not ack_keys.retired_path(ack_file).exists()
    renewer.renew()
    assert ack_keyring.load(keyring_file).key_ids == (promoted.current.key_id,)


def test_token_sets_the_modality_and_site_on_the_box_when_it_carries_site_tables(cloud) -> None:
    """What the field engineer used to edit by hand after provisioning: AE title, port, the
    modality admitted, the site's zone and hours come with the token; the command line wins."""
    authority, server, _, tmp_path = cloud
    carried = {"dicom": {"ae_title": "MGW_CT01", "port": 104, "allowed_peers": ["CT_SCANNER@10.8.0.5"],
                         "bind_host": "10.8.0.2"},
               "site": {"time_zone": "Asia/Urumqi", "weekly_hours": ["mon-fri 09:00-19:00", "sat 10:00-14:00"]}}
    token = authority.create_token("ct-02", "clinic-8", "CT", ttl_s=3600, site_tables=carried)
    paths = Paths(tmp_path / "etc", tmp_path / "box", tmp_path / "run")
    result = prov.provision(_enrolment(authority, server, token), paths, self_test=False,
                            lan=prov.Lan(bind="10.8.0.3"))
    settings = load_edge([result.device_toml])
    assert (settings.dicom.ae_title, settings.dicom.port, settings.dicom.allowed_peers) == \
        ("MGW_CT01", 104, ("CT_SCANNER@10.8.0.5",))
    assert settings.dicom.bind_host == "10.8.0.3"  # the command line's, over the token's
    assert (settings.site.time_zone, settings.site.weekly_hours) == \
        ("Asia/Urumqi", ("mon-fri 09:00-19:00", "sat 10:00-14:00"))
    assert (settings.box.site, settings.box.modality) == ("clinic-8", "CT")
    assert (result.ae_title, result.port, result.time_zone) == ("MGW_CT01", 104, "Asia/Urumqi")


@pytest.mark.parametrize(("tables", "named"), [
    ({"mqtt": {"host": "evil.example"}}, "may not set [mqtt]"),
    ({"box": {"id": "other"}}, "may not set [box]"),
    ({"dicom": {"ae_title": "A" * 17}}, "dicom.ae_title"),
    ({"dicom": {"port": 70000}}, "dicom.port"),
    ({"dicom": {"allowed_peers": ["no-address"]}}, "allowed_peers"),
    ({"site": {"time_zone": "Mars/Olympus"}}, "unknown time zone"),
    ({"site": {"weekly_hours": ["someday 25:00-26:00"]}}, "site"),
    ({"dicom": {"colour": "red"}}, "unknown key 'dicom.colour'"),
])
def test_token_is_not_made_when_its_site_tables_are_not_a_boxs(cloud, tables, named) -> None:
    from gateway.core.errors import ConfigError

    authority = cloud[0]
    with pytest.raises(ConfigError, match=re.escape(named)):
        authority.create_token("ct-03", "clinic-8", "CT", ttl_s=3600, site_tables=tables)


def test_box_refuses_the_enrolment_answer_when_its_site_tables_are_hostile(cloud, monkeypatch) -> None:
    """The answer crossed the network: the box checks the tables again, whatever the token said."""
    authority, server, _, tmp_path = cloud
    token = authority.create_token("ct-04", "clinic-8", "CT", ttl_s=3600)
    real_answer = server.answer

    def hostile(issued):  # type: ignore[no-untyped-def]
        return {**real_answer(issued), "site_tables": {"mqtt": {"host": "evil.example"}}}

    monkeypatch.setattr(server, "answer", hostile)
    paths = Paths(tmp_path / "etc", tmp_path / "box4", tmp_path / "run")
    with pytest.raises(enrolment_client.EnrolmentError, match=re.escape("may not set [mqtt]")):
        prov.provision(_enrolment(authority, server, token), paths, self_test=False)
    assert not (paths.state_dir / "device.toml").exists()
