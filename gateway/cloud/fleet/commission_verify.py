"""Verifies a box's signed commissioning report: hostile input until every check holds.

``verify(payload, box_id, fleet_ca_pems)`` parses ``schema.SignedCommissioningReport``, then
requires, in order: the report's bytes parse as ``schema.CommissioningReport`` and are canonical
(re-encoding gives the same bytes); the certificate is issued by the fleet CA (its signature
checked against a CA certificate of ``fleet_ca_pems``), names the box in its CN, and was valid
when the report was made; the ECDSA P-256 / SHA-256 signature over the report's bytes verifies
with the certificate's key; the report's box id is the topic's; its ``result`` is what its
checks give. Anything else is ``FrameError`` with the reason, and the caller dead-letters it.

Exception to one-library-per-adapter (tests/test_layers.py): x509 and ECDSA verification are
computation on bytes already read, as in ``edge/provision.py``.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.core import commissioning, schema
from gateway.core.errors import FrameError

MAX_PAYLOAD_BYTES = 64 * 1024


def load_cas(pem: bytes) -> list[x509.Certificate]:
    """The fleet CA certificate(s) in a PEM file's bytes."""
    return x509.load_pem_x509_certificates(pem)


def verify(payload: bytes, box_id: str, cas: list[x509.Certificate]) -> tuple[schema.CommissioningReport,
                                                                                schema.SignedCommissioningReport]:
    signed = schema.parse(schema.SignedCommissioningReport, payload, "commission", MAX_PAYLOAD_BYTES)
    report = schema.parse(schema.CommissioningReport, signed.report, "commission report", MAX_PAYLOAD_BYTES)
    if schema.encode_canonical(report) != signed.report:
        raise FrameError("commission: the report's bytes are not canonical JSON")
    if report.box_id != box_id:
        raise FrameError("commission: the report's box id differs from the topic's")
    try:
        cert = x509.load_pem_x509_certificate(signed.certificate.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise FrameError("commission: the certificate is not a PEM X.509 certificate") from exc
    _check_issuer(cert, cas)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [box_id]:
        raise FrameError(f"commission: the certificate is not box {box_id}'s")
    if not cert.not_valid_before_utc.timestamp() <= report.started_at <= cert.not_valid_after_utc.timestamp():
        raise FrameError("commission: the certificate was not valid when the report was made")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FrameError("commission: the certificate's key is not an EC key")
    try:
        key.verify(signed.signature, signed.report, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise FrameError("commission: the signature does not verify with the box certificate") from exc
    if commissioning.result_of(c.outcome for c in report.checks) != report.result:
        raise FrameError("commission: the result is not what the checks give")
    return report, signed


def _check_issuer(cert: x509.Certificate, cas: list[x509.Certificate]) -> None:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise FrameError("commission: the certificate is not issued by the fleet CA")
