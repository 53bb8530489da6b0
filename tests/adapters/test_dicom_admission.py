"""Calling AE + source address allow-list per modality, deny-by-default once provisioned, and DICOM TLS,
against real DCMTK peers."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.dicom_scp import DicomListener
from gateway.cloud.authority.ca import FleetAuthority
from gateway.config import DicomSettings
from gateway.core import admission
from gateway.core.errors import ConfigError
from gateway.logs import MSG
from tests.adapters.test_dicom_scp import AE_TITLE, Gateway, SqliteSink, store_listener
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
    policy = admission.Policy.from_settings(("CT@192.168.1.20", "MR@10.0.0.0/24", "US@fd00::/64"), (), True)
    here = "192.168.1.2"  # the box's own address on this connection
    assert admission.refusal(policy, "CT", "192.168.1.20", here) is None
    assert admission.refusal(policy, "CT", "::ffff:192.168.1.20", here) is None
    assert admission.refusal(policy, "MR", "10.0.0.77", here) is None
    assert admission.refusal(policy, "US", "fd00::5", here) is None
    assert admission.refusal(policy, "CT", "10.0.0.77", here) is admission.AE_NOT_FROM_HERE
    assert admission.refusal(policy, "XA", "10.0.0.77", here) is admission.AE_NOT_RECOGNISED
    assert admission.refusal(policy, "CT", "172.16.0.1", here) is admission.ADDRESS_NOT_ALLOWED
    assert admission.address_refusal(policy, "172.16.0.1", here) is admission.ADDRESS_NOT_ALLOWED
    assert admission.address_refusal(policy, "10.0.0.9", here) is None
    assert (admission.AE_NOT_RECOGNISED.result, admission.AE_NOT_RECOGNISED.source,
            admission.AE_NOT_RECOGNISED.diagnostic) == (1, 1, 3)
    assert admission.ADDRESS_NOT_ALLOWED.diagnostic == 1


def test_provisioned_box_admits_only_its_own_tools_when_no_modality_is_listed() -> None:
    sealed = admission.Policy.from_settings((), (), provisioned=True)
    assert not sealed.admits_anyone
    assert admission.refusal(sealed, "ANY", "10.1.1.1", "10.1.1.2") is admission.ADDRESS_NOT_ALLOWED
    assert admission.address_refusal(sealed, "10.1.1.1", "10.1.1.2") is admission.ADDRESS_NOT_ALLOWED
    for own in (admission.COMMISSIONING_AE, admission.GATE_AE):
        assert admission.refusal(sealed, own, "10.1.1.2", "10.1.1.2") is None  # from the box itself
        assert admission.refusal(sealed, own, "10.1.1.1", "10.1.1.2") is not None  # not from elsewhere
    lab = admission.Policy.from_settings((), (), provisioned=False)
    assert lab.admits_anyone and admission.refusal(lab, "ANY", "1.2.3.4", "5.6.7.8") is None


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


# -- a provisioned box (deny-by-default) against DCMTK -------------------------------------------

@pytest.fixture
def provisioned_listener(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[DicomListener] = []

    def start(bind: str = "127.0.0.1", **settings: Any) -> Gateway:
        incoming = tmp_path / f"spool{len(started)}" / "incoming"
        sink = SqliteSink(tmp_path / f"index-{len(started)}.sqlite")
        listener = store_listener(DicomSettings(ae_title=AE_TITLE, bind_host=bind, port=0, **settings), incoming, sink,
                                  bytes(32), provisioned=True)
        listener.start()
        started.append(listener)
        return Gateway(listener, sink, incoming, incoming.parent / "quarantine")

    yield start
    for listener in started:
        listener.stop()


def _dcmtk(tool: str, host: str, port: int, calling: str, *files: Path) -> subprocess.CompletedProcess[str]:
    args = [dcmtk(tool), "-aet", calling, "-aec", AE_TITLE, host, str(port), *map(str, files)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)


def _rejections(gw: Gateway) -> dict[str, int]:
    return gw.listener.counts()["associations_rejected"]


def test_unknown_calling_ae_gets_rj_reason_3_and_the_modality_still_stores_when_provisioned(
        provisioned_listener: Callable[..., Gateway], caplog: pytest.LogCaptureFixture) -> None:
    gw = provisioned_listener(allowed_peers=("CT_ROOM_1@127.0.0.1",))
    with caplog.at_level(logging.WARNING, logger="gateway.adapters.dicom_scp"):
        for tool, files in (("echoscu", ()), ("storescu", real_images()[:1])):
            out = _dcmtk(tool, "127.0.0.1", gw.listener.port, "INTRUDER", *files)
            assert out.returncode != 0
            assert "Association Rejected" in out.stderr and "Calling AE Title Not Recognized" in out.stderr, out.stderr
            assert "Rejected Permanent" in out.stderr and "Service User" in out.stderr, out.stderr
    assert _rejections(gw) == {"calling AE title not recognised": 2}
    assert [(r.REASON, r.DIAGNOSTIC) for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "MESSAGE_ID", "") == MSG.ASSOCIATION_REJECTED.value] == [
        ("calling AE title not recognised", 3)] * 2
    assert gw.sink.rows() == []
    ok = _dcmtk("storescu", "127.0.0.1", gw.listener.port, "CT_ROOM_1", *real_images()[:1])
    assert ok.returncode == 0, ok.stderr
    assert [r["calling_ae"] for r in gw.sink.rows()] == ["CT_ROOM_1"]


def test_address_not_the_modalitys_gets_rj_no_reason_when_the_modality_is_listed_at_another_address(
        provisioned_listener: Callable[..., Gateway]) -> None:
    gw = provisioned_listener(allowed_peers=("CT_ROOM_1@127.0.0.2",))  # we connect from 127.0.0.1
    for tool, files in (("echoscu", ()), ("storescu", real_images()[:1])):
        out = _dcmtk(tool, "127.0.0.1", gw.listener.port, "CT_ROOM_1", *files)
        assert out.returncode != 0
        assert "Association Rejected" in out.stderr and "Reason: No Reason" in out.stderr, out.stderr
    assert _rejections(gw) == {"source address not allowed": 2}
    assert gw.sink.rows() == []


def test_stranger_is_answered_rj_at_accept_without_a_pdu_read_when_it_connects_from_another_address(
        provisioned_listener: Callable[..., Gateway], caplog: pytest.LogCaptureFixture) -> None:
    gw = provisioned_listener(bind="127.0.0.2", allowed_peers=("CT_ROOM_1@127.0.0.3",))  # source: 127.0.0.1
    with caplog.at_level(logging.WARNING, logger="gateway.adapters.dicom_scp"):
        for tool, files in (("echoscu", ()), ("storescu", real_images()[:1])):
            out = _dcmtk(tool, "127.0.0.2", gw.listener.port, "CT_ROOM_1", *files)
            assert out.returncode != 0
            assert "Association Rejected" in out.stderr and "Reason: No Reason" in out.stderr, out.stderr
    refused = [r for r in caplog.records if getattr(r, "MESSAGE_ID", "") == MSG.ASSOCIATION_REJECTED.value]
    seen = [(getattr(r, "CALLING_AE", None), getattr(r, "PEER_ADDRESS", None)) for r in refused]
    assert seen == [("", "127.0.0.1")] * 2
    assert _rejections(gw) == {"source address not allowed": 2}
    assert gw.listener.active_associations() == 0  # no association thread was ever started
    assert echo(gw.listener.port, AE_TITLE).returncode != 0  # and not reachable on 127.0.0.1 at all: bound to .2


def test_box_tools_get_through_but_nobody_else_when_a_provisioned_box_lists_no_modality(
        provisioned_listener: Callable[..., Gateway]) -> None:
    from gateway.adapters import dicom_scu

    gw = provisioned_listener()
    out = _dcmtk("echoscu", "127.0.0.1", gw.listener.port, "MODALITY")
    assert out.returncode != 0 and "Association Rejected" in out.stderr, out.stderr
    assert dicom_scu.echo("127.0.0.1", gw.listener.port, AE_TITLE, admission.COMMISSIONING_AE,
                          source="127.0.0.1") == 0
    assert dicom_scu.echo("127.0.0.1", gw.listener.port, AE_TITLE, admission.GATE_AE, source="127.0.0.1") == 0
    assert _rejections(gw) == {"source address not allowed": 1}
