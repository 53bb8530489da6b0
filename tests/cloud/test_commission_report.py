"""The signed commissioning report: the box signs with its key, the fleet verifies against its CA and stores.

Real keys and certificates from a real fleet CA (``FleetAuthority``), the box's ``FileKeyStore``,
a real SQLite fleet store; forged reports (another key, another box's certificate, another CA,
altered bytes, a result its checks do not give) are refused with the reason.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from gateway import i18n
from gateway.adapters import blobs
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.fleet import commission_verify
from gateway.core import commissioning, schema
from gateway.core.acksig import AckKeyring, AckSigner
from gateway.core.errors import FrameError, UnexpectedAckError
from gateway.edge import commission_report
from tests.backends import Backend

NOW = 1_800_000_000.0


def _check(key: str, outcome: str, manual: bool = False) -> schema.CommissioningCheck:
    return schema.CommissioningCheck(key=key, name=key.replace("-", " "), manual=manual, outcome=outcome,  # type: ignore[arg-type]
                                     detail="done", started_at=NOW + 1, seconds=0.5)


def _report(box_id: str = "ct-01", result: str = "PASSED", echo: str = "confirmed") -> schema.CommissioningReport:
    return schema.CommissioningReport(
        v=1, kind="mgw-commissioning-report", report_id="ab" * 16, box_id=box_id, site="clinic-7",
        time_zone="Asia/Shanghai", engineer="Li Wei 李伟", modality="CT", modality_make="Acme",
        modality_model="Helix 64", modality_ae="CT_SCANNER", modality_address="10.0.0.5/32", software="1.0",
        started_at=NOW, finished_at=NOW + 60, result=result,  # type: ignore[arg-type]
        checks=[_check("certificate", "ok"), _check("modality-echo", echo, manual=True)])


def _box(tmp_path: Path, authority: FleetAuthority, box_id: str) -> tuple[FileKeyStore, str]:
    """A box key store holding a key the fleet CA certified for ``box_id``."""
    key_pem, cert_pem = authority.issue_with_key(box_id, 400)
    keys = FileKeyStore(tmp_path / f"keys-{box_id}")
    keys.directory.mkdir(mode=0o700, parents=True)
    blobs.write_atomic(keys.path("box"), key_pem, mode=0o600)
    return keys, cert_pem.decode()


@pytest.fixture
def authority(tmp_path: Path) -> FleetAuthority:
    return FleetAuthority(tmp_path / "pki")


def _cas(authority: FleetAuthority) -> list:  # type: ignore[type-arg]
    return commission_verify.load_cas(authority.ca_pem)


def test_report_verifies_and_is_stored_once_when_signed_by_the_box_it_names(
        tmp_path: Path, authority: FleetAuthority) -> None:
    keys, cert = _box(tmp_path, authority, "ct-01")
    payload = commission_report.sign(_report(), keys, cert)
    report, signed = commission_verify.verify(payload, "ct-01", _cas(authority))
    assert report.result == "PASSED" and report.engineer == "Li Wei 李伟"
    store = SqliteFleetStore(tmp_path / "fleet.db")
    try:
        assert store.commissions.add(report, signed, NOW + 90)
        assert not store.commissions.add(report, signed, NOW + 95)  # a resend is stored once
        [row] = store.commissions.list(box_id="ct-01")
        assert row["result"] == "PASSED" and row["engineer"] == "Li Wei 李伟"
        got = store.commissions.get(report.report_id)
        assert got is not None and got["document"]["modality_model"] == "Helix 64"
        # what is stored verifies again, byte for byte
        again = schema.encode(schema.SignedCommissioningReport(
            v=1, report=json.dumps(got["document"], sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False).encode(),
            signature=base64.b64decode(got["signature"]), certificate=got["certificate"]))
        assert commission_verify.verify(again, "ct-01", _cas(authority))[0] == report
    finally:
        store.close()


def _tamper(payload: bytes, **changes: object) -> bytes:
    doc = json.loads(payload)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_report_is_refused_with_its_reason_when_forged_altered_or_signed_by_another_box_key_or_ca(
        tmp_path: Path, authority: FleetAuthority) -> None:
    keys, cert = _box(tmp_path, authority, "ct-01")
    other_keys, other_cert = _box(tmp_path, authority, "ct-02")
    rogue_keys, rogue_cert = _box(tmp_path / "rogue", FleetAuthority(tmp_path / "rogue-pki"), "ct-01")
    good = commission_report.sign(_report(), keys, cert)
    cas = _cas(authority)
    altered = base64.b64encode(schema.encode_canonical(_report()).replace(b"Helix 64", b"Helix 65")).decode()
    cases = {
        "signature does not verify": _tamper(good, report=altered),
        "not box ct-01's": commission_report.sign(_report(), other_keys, other_cert),
        "not issued by the fleet CA": commission_report.sign(_report(), rogue_keys, rogue_cert),
        "signature does not verify ": commission_report.sign(_report(), other_keys, cert),  # wrong key, right cert
        "differs from the topic's": commission_report.sign(_report("ct-02"), keys, cert),
        "not what the checks give": commission_report.sign(_report(echo="manual"), keys, cert),
        "not canonical": _tamper(good, report=base64.b64encode(
            json.dumps(json.loads(schema.encode_canonical(_report())), indent=1).encode()).decode()),
        "not JSON": b"\x00garbage",
    }
    for reason, payload in cases.items():
        with pytest.raises(FrameError, match=reason.strip()):
            commission_verify.verify(payload, "ct-01", cas)
    commission_verify.verify(good, "ct-01", cas)  # the genuine one still passes


def test_report_is_incomplete_when_a_manual_check_is_open_and_failed_when_a_check_failed() -> None:
    assert commissioning.result_of(["ok", "confirmed", "skipped"]) == "PASSED"
    assert commissioning.result_of(["ok", "manual"]) == "INCOMPLETE"
    assert commissioning.result_of(["manual", "FAIL"]) == "FAILED"
    with pytest.raises(msgspec.ValidationError):  # a report names its engineer
        msgspec.convert({**msgspec.to_builtins(_report()), "engineer": ""}, schema.CommissioningReport)


def test_commission_ack_verifies_only_for_its_box_and_key() -> None:
    signer, other = AckSigner(b"\x01" * 32), AckSigner(b"\x02" * 32)
    ack = commissioning.sign_ack(signer, "ct-01", "ab" * 16)
    assert commissioning.verify_ack(ack, "ct-01", AckKeyring((signer.public,))) == "ab" * 16
    with pytest.raises(UnexpectedAckError):
        commissioning.verify_ack(ack, "ct-02", AckKeyring((signer.public,)))
    with pytest.raises((UnexpectedAckError, FrameError)):
        commissioning.verify_ack(ack, "ct-01", AckKeyring((other.public,)))


def test_report_text_shows_times_in_the_site_zone_in_the_chosen_language() -> None:
    text = commission_report.text(_report())
    assert "2027-01-15 16:00:00 +08:00" in text  # NOW is 08:00 UTC
    assert "RESULT: PASSED" in text and "engineer: Li Wei 李伟" in text
    i18n.use("zh")
    try:
        chinese = commission_report.text(_report())
    finally:
        i18n.use("en")
    assert "2027-01-15 16:00:00 +08:00" in chinese and "结果：通过" in chinese and "工程师：Li Wei 李伟" in chinese
    assert "调试报告" in chinese and "RESULT" not in chinese


def test_reports_are_stored_listed_and_read_back_alike_when_the_fleet_store_is_sqlite_or_postgresql(
        tmp_path: Path, authority: FleetAuthority, backend: Backend) -> None:
    keys, cert = _box(tmp_path, authority, "ct-01")
    store = backend.fleet_store(tmp_path)
    try:
        for n, result, echo in ((1, "INCOMPLETE", "manual"), (2, "PASSED", "confirmed")):
            doc = msgspec.structs.replace(_report(result=result, echo=echo), report_id=f"{n:032x}",
                                          started_at=NOW + n)
            report, signed = commission_verify.verify(commission_report.sign(doc, keys, cert), "ct-01",
                                                      _cas(authority))
            assert store.commissions.add(report, signed, NOW + 100 + n)
        assert [(r["report_id"][-1], r["result"]) for r in store.commissions.list(box_id="ct-01")] == [
            ("2", "PASSED"), ("1", "INCOMPLETE")]  # newest first
        assert store.commissions.list(box_id="ct-02") == []
        got = store.commissions.get(f"{2:032x}")
        assert got is not None and got["document"]["engineer"] == "Li Wei 李伟" and got["received_at"] == NOW + 102
        assert store.commissions.get("f" * 32) is None
    finally:
        store.close()
