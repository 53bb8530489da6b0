"""Calling AE + source address allow-list per modality, and DICOM TLS, against real DCMTK peers."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cloud.authority import FleetAuthority
from gateway.core import admission
from gateway.core.errors import ConfigError
from gateway.logs import MSG
from tests.adapters.test_dicom_scp import AE_TITLE, Gateway
from tests.adapters.test_dicom_scp import start_gateway as start_gateway  # noqa: F401 - the fixture
from tests.peers import dcmtk, dcmtk_env, echo, real_images


def test_association_rejected_as_calling_ae_not_recognised_when_no_modality_has_that_ae(
        start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(allowed_peers=("CT_ROOM_1@127.0.0.1",))
    refused = echo(gw.listener.port, AE_TITLE, calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert echo(gw.listener.port, AE_TITLE, calling_ae="CT_ROOM_1").returncode == 0


def test_connection_refused_before_any_pdu_when_the_source_address_is_not_allowed(
        start_gateway: Callable[..., Gateway], caplog: pytest.LogCaptureFixture) -> None:
    gw = start_gateway(allowed_peers=("CT_ROOM_1@10.20.0.0/16",))
    with caplog.at_level(logging.WARNING, logger="gateway.adapters.dicom_scp"):
        refused = echo(gw.listener.port, AE_TITLE, calling_ae="CT_ROOM_1")
    assert refused.returncode != 0
    assert any(getattr(r, "MESSAGE_ID", "") == MSG.ASSOCIATION_REJECTED.value
               and getattr(r, "REASON", "") == "source address not allowed" for r in caplog.records)


def test_store_refused_when_a_known_ae_calls_from_another_modality_address(
        start_gateway: Callable[..., Gateway], caplog: pytest.LogCaptureFixture) -> None:
    gw = start_gateway(allowed_peers=("CT_ROOM_1@127.0.0.1", "MR_ROOM_2@10.20.30.40"))
    with caplog.at_level(logging.WARNING, logger="gateway.adapters.dicom_scp"):
        refused = gw.storescu(real_images()[:1], calling_ae="MR_ROOM_2")
    assert refused.returncode != 0
    assert gw.sink.rows() == []
    assert any(getattr(r, "REASON", "") == "calling AE title not allowed from this source address"
               for r in caplog.records)
    assert gw.storescu(real_images()[:1], calling_ae="CT_ROOM_1").returncode == 0
    assert len(gw.sink.rows()) == 1


def test_refusal_names_the_reason_when_ae_and_address_are_checked() -> None:
    rules = admission.parse_rules(("CT@192.168.1.20", "MR@10.0.0.0/24", "US@fd00::/64"))
    assert admission.refusal(rules, "CT", "192.168.1.20") is None
    assert admission.refusal(rules, "CT", "::ffff:192.168.1.20") is None
    assert admission.refusal(rules, "MR", "10.0.0.77") is None
    assert admission.refusal(rules, "US", "fd00::5") is None
    assert admission.refusal(rules, "CT", "10.0.0.77") == "calling AE title not allowed from this source address"
    assert admission.refusal(rules, "XA", "10.0.0.77") == "calling AE title not recognised"
    assert admission.refusal(rules, "CT", "172.16.0.1") == "source address not allowed"
    assert admission.refusal((), "ANY", "1.2.3.4") is None


def test_config_error_when_a_peer_entry_is_malformed() -> None:
    for bad in ("CT", "CT@", "@10.0.0.1", "CT@10.0.0.300"):
        with pytest.raises(ConfigError, match="allowed_peers"):
            admission.parse_rules((bad,))


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path, Path, Path]:
    ca = FleetAuthority(tmp_path / "lan-ca")
    files = []
    for cn, hosts in (("mgw dicom", ["127.0.0.1"]), ("CT_ROOM_1", None)):
        key_pem, cert_pem = ca.issue_with_key(cn, 30, server_hosts=hosts)
        key, cert = tmp_path / f"{cn.replace(' ', '_')}.key", tmp_path / f"{cn.replace(' ', '_')}.pem"
        key.write_bytes(key_pem)
        key.chmod(0o600)
        cert.write_bytes(cert_pem)
        files += [cert, key]
    ca.close()
    return ca.ca_cert_path, *files  # type: ignore[return-value]


def _tls_echo(port: int, ca: Path, key: Path | None, cert: Path | None) -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(key), str(cert)] if key else ["+tla"]
    args = [dcmtk("echoscu"), *tls, "+cf", str(ca), "-aet", "CT_ROOM_1", "-aec", AE_TITLE, "127.0.0.1", str(port)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)


def test_echo_succeeds_over_mutual_dicom_tls_and_plain_tcp_is_refused_when_tls_is_configured(
        start_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    ca, server_cert, server_key, client_cert, client_key = _tls_files(tmp_path)
    gw = start_gateway(tls_cert_file=str(server_cert), tls_key_file=str(server_key), tls_ca_file=str(ca))
    ok = _tls_echo(gw.listener.port, ca, client_key, client_cert)
    assert ok.returncode == 0, ok.stderr
    assert echo(gw.listener.port, AE_TITLE).returncode != 0  # plain DICOM on a TLS port
    assert _tls_echo(gw.listener.port, ca, None, None).returncode != 0  # TLS without a client certificate
