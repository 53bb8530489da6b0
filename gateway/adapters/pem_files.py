"""PEM certificates and private keys read for a check (`mgw doctor`, `mgw status`), never for use.

What a configuration names is checked the way the service would later trip over it: a
certificate file parses, was issued by a certificate of the CA bundle it is paired with (its
signature verified), is valid now, and belongs to the private key beside it. Each answer is a
short reason naming the file; nothing here raises a library's exception.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertInfo:
    """The first certificate of a PEM file: who it names, who issued it, and when it is valid."""

    subject_cn: str
    not_before: float
    not_after: float
    is_ca: bool


class PemError(ValueError):
    """A PEM file that does not parse or does not hold what it should (the reason names the file)."""


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        with warnings.catch_warnings():  # a system bundle's old root (a negative serial) is still read
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certs = x509.load_pem_x509_certificates(path.read_bytes())
            for cert in certs:
                _ = cert.extensions  # parsed here, under the same filter
    except OSError as exc:
        raise PemError(f"{path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise PemError(f"{path}: not a PEM certificate ({exc})") from exc
    if not certs:
        raise PemError(f"{path}: holds no certificate")
    return certs


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.subject == cert.issuer  # an old (v1) root carries no extensions at all


def certificate(path: Path) -> CertInfo:
    """The first certificate in ``path`` (a leaf file may carry its chain after it)."""
    cert = _certs(path)[0]
    return CertInfo(_cn(cert), cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                    _is_ca(cert))


def ca_bundle(path: Path) -> list[CertInfo]:
    """Every certificate of a CA bundle; each must be a CA certificate."""
    infos = []
    for cert in _certs(path):
        if not _is_ca(cert):
            raise PemError(f"{path}: '{_cn(cert)}' is not a CA certificate")
        infos.append(CertInfo(_cn(cert), cert.not_valid_before_utc.timestamp(),
                              cert.not_valid_after_utc.timestamp(), True))
    return infos


def fingerprints(path: Path) -> list[str]:
    """SHA-256 of each certificate's DER in ``path``, lowercase hex (what provisioning pins)."""
    return [cert.fingerprint(hashes.SHA256()).hex() for cert in _certs(path)]


def issued_by(cert_path: Path, ca_path: Path) -> str:
    """The CN of the CA in ``ca_path`` whose signature the first certificate of ``cert_path`` carries.

    Raises ``PemError`` when no certificate of the bundle issued it (another CA).
    """
    cert = _certs(cert_path)[0]
    cas = _certs(ca_path)
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return _cn(ca)
    twin = " (another CA of the same name: its signature does not verify)" if any(
        ca.subject == cert.issuer for ca in cas) else ""
    raise PemError(f"{cert_path}: '{_cn(cert)}' was issued by '{cert.issuer.rfc4514_string()}', not by a CA of "
                   f"{ca_path}{twin}")


def private_key_matches(key_path: Path, cert_path: Path) -> None:
    """Raise ``PemError`` unless ``key_path`` is an unencrypted private key of ``cert_path``'s certificate."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except OSError as exc:
        raise PemError(f"{key_path}: cannot read: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise PemError(f"{key_path}: not an unencrypted PEM private key ({exc})") from exc
    if key.public_key() != _certs(cert_path)[0].public_key():
        raise PemError(f"{key_path}: not the key of the certificate in {cert_path}")


def private_key(key_path: Path) -> None:
    """Raise ``PemError`` unless ``key_path`` holds an unencrypted PEM private key."""
    try:
        serialization.load_pem_private_key(key_path.read_bytes(), None)
    except OSError as exc:
        raise PemError(f"{key_path}: cannot read: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise PemError(f"{key_path}: not an unencrypted PEM private key ({exc})") from exc
