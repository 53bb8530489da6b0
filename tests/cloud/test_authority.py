"""The fleet CA on a real SQLite registry: tokens, CSR checks, renewal, revocation, CRL."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.cloud.authority.ca import EnrolmentRefusedError, FleetAuthority


def _csr(cn: str | None = None) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path):
    authority = FleetAuthority(tmp_path / "pki")
    yield authority
    authority.close()


def test_registry_keeps_only_the_token_hash_when_a_token_is_created(ca: FleetAuthority) -> None:
    token = ca.create_token("ct-01", "clinic-7", "CT", 60)
    assert token.encode() not in (ca.dir / "registry.db").read_bytes()
    assert stat.S_IMODE(ca.ca_key_path.stat().st_mode) == 0o600


def test_certificate_names_the_token_box_when_the_csr_has_no_subject(ca: FleetAuthority) -> None:
    _, csr = _csr()
    issued = ca.redeem(ca.create_token("ct-01", "clinic-7", "CT", 60), csr, days=30)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ct-01"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.ca_pem))
    assert (issued.site, issued.modality) == ("clinic-7", "CT")


def test_redeem_refused_when_the_csr_names_another_box(ca: FleetAuthority) -> None:
    token = ca.create_token("ct-01", "clinic-7", "CT", 60)
    with pytest.raises(EnrolmentRefusedError, match="token is for box 'ct-01'"):
        ca.redeem(token, _csr("mr-02")[1], days=30)
    ca.redeem(token, _csr("ct-01")[1], days=30)  # the refusal did not consume the token


@pytest.mark.parametrize("where", [40, 60, -80, -40])
def test_redeem_refused_when_the_csr_is_altered(ca: FleetAuthority, where: int) -> None:
    _, csr = _csr()
    lines = csr.decode().splitlines()
    body = "".join(lines[1:-1])
    pos = where % len(body)
    body = body[:pos] + ("A" if body[pos] != "A" else "B") + body[pos + 1:]
    pem = "\n".join([lines[0], body, lines[-1]]).encode()
    token = ca.create_token("ct-01", "s", "CT", 60)
    with pytest.raises(EnrolmentRefusedError):
        ca.redeem(token, pem, days=30)


def test_renewal_refused_when_the_presented_certificate_is_from_another_ca(ca: FleetAuthority, tmp_path: Path) -> None:
    rogue = FleetAuthority(tmp_path / "rogue")
    foreign = rogue.redeem(rogue.create_token("ct-01", "s", "CT", 60), _csr()[1], days=30)
    rogue.close()
    with pytest.raises(EnrolmentRefusedError, match="not issued by this fleet CA"):
        ca.renew(foreign.certificate_pem, _csr()[1], days=30)


def test_crl_lists_the_serials_of_a_box_when_it_is_revoked(ca: FleetAuthority) -> None:
    first = ca.redeem(ca.create_token("ct-01", "s", "CT", 60), _csr()[1], days=30)
    second = ca.renew(first.certificate_pem, _csr()[1], days=30)
    other = ca.redeem(ca.create_token("mr-02", "s", "MR", 60), _csr()[1], days=30)
    assert ca.revoke_box("ct-01", "stolen") == 1  # the first was revoked as superseded by the renewal
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(ca.ca_pem).public_key())  # type: ignore[arg-type]
    revoked = {format(r.serial_number, "x") for r in crl}
    assert revoked == {first.serial, second.serial} and other.serial not in revoked
    assert ca.record(second.serial).renewed_from == first.serial  # type: ignore[union-attr]
    with pytest.raises(EnrolmentRefusedError, match="revoked"):
        ca.renew(second.certificate_pem, _csr()[1], days=30)


def test_renewal_revokes_the_superseded_certificate_when_it_issues_the_new_one(ca: FleetAuthority) -> None:
    first = ca.redeem(ca.create_token("ct-01", "s", "CT", 60), _csr()[1], days=30)
    second = ca.renew(first.certificate_pem, _csr()[1], days=30)
    old, new = ca.record(first.serial), ca.record(second.serial)
    assert old is not None and old.revoke_reason == "superseded" and old.revoked_at is not None
    assert new is not None and new.revoked_at is None
    assert first.serial in {format(r.serial_number, "x") for r in x509.load_pem_x509_crl(ca.crl_path.read_bytes())}
    with pytest.raises(EnrolmentRefusedError, match="revoked"):
        ca.renew(first.certificate_pem, _csr()[1], days=30)


def test_ca_key_and_certificate_match_when_several_processes_create_the_ca_at_once(tmp_path: Path) -> None:
    # The enrolment and fleet services both open the fleet CA, and make it when it is absent.
    code = ("import sys; from pathlib import Path; from gateway.cloud.authority.ca import FleetAuthority; "
            "FleetAuthority(Path(sys.argv[1])).close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "pki")]) for _ in range(4)]  # noqa: S603
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    key = serialization.load_pem_private_key((tmp_path / "pki" / "ca.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.pem").read_bytes())
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    issued = FleetAuthority(tmp_path / "pki")
    try:
        assert issued.ca_pem == (tmp_path / "pki" / "ca.pem").read_bytes()
    finally:
        issued.close()
