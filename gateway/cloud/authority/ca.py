"""The fleet certificate authority: box and server certificates, enrolment tokens, revocation.

One EC P-256 CA per fleet (``<pki>/ca.key`` 0600, ``<pki>/ca.pem``). Box
certificates are issued only from a CSR (the box's key never leaves the box)
and only against a one-time enrolment token bound to a box id, a site and a
modality, or as a renewal for a box whose current certificate is valid and not
revoked. Server certificates (broker, enrolment endpoint) and the cloud ingest
client certificate are issued with keys made here, on the cloud.

The registry (``<pki>/registry.db``, SQLite) records every certificate issued,
renewed and revoked, and the hash of every token (never the token itself).
``crl_pem()`` renders the current CRL; the broker reads it as ``crlfile``.

Subject common names are identities: a box's CN is its box id (lowercase
letters, digits, '-'), which the broker makes its MQTT username and binds its
client id to; cloud service identities contain a '.', which no box id can:
``cloud.<role>.<worker>`` (``service_identity``), one per cloud process, since
the broker lets only one connection at a time use a client id.

A renewal revokes the certificate it supersedes (reason ``superseded``), and
every change to the revocation list is written to ``<pki>/crl.pem`` and to each
``crl_copies`` path (the broker's copy: its guard plugin polls it and drops
open connections of revoked certificates).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.adapters import blobs
from gateway.adapters.sqlite_db import SqliteDatabase
from gateway.config import BOX_ID
from gateway.core.errors import ConfigError, PeerError

SERVICE_ROLES = ("ingest", "fleet")
_WORKER = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
TOKEN_PREFIX = "mgw1-"  # noqa: S105 - a format marker, not a secret
# The registry's numbered migrations (``SqliteDatabase.migrate``). Step 1 is the script every
# registry before numbered migrations ran at each open, at ``user_version`` 0: it keeps its
# ``IF NOT EXISTS`` so that such a registry, which already has these tables, is adopted as
# version 1. Later steps are plain.
MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS certificates (
        serial TEXT PRIMARY KEY, subject TEXT NOT NULL, kind TEXT NOT NULL,
        not_before REAL NOT NULL, not_after REAL NOT NULL, issued_at REAL NOT NULL,
        renewed_from TEXT, revoked_at REAL, revoke_reason TEXT);
    CREATE INDEX IF NOT EXISTS certificates_subject ON certificates(subject);
    CREATE TABLE IF NOT EXISTS tokens (
        token_sha256 TEXT PRIMARY KEY, box_id TEXT NOT NULL, site TEXT NOT NULL, modality TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL, serial TEXT)
    """,
    # 2: the site tables a token carries to its box (gateway/site_tables.py), JSON
    "ALTER TABLE tokens ADD COLUMN site_tables TEXT NOT NULL DEFAULT '{{}}'",  # (format_map: braces doubled)
]


class EnrolmentRefusedError(PeerError):
    """A token, CSR or renewal request the authority will not honour (the message says why)."""


@dataclass(frozen=True)
class Issued:
    box_id: str
    site: str
    modality: str
    certificate_pem: bytes
    serial: str
    not_after: float
    site_tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # what the token carries to the box


@dataclass(frozen=True)
class CertRecord:
    serial: str
    subject: str
    kind: str
    not_before: float
    not_after: float
    issued_at: float
    renewed_from: str | None
    revoked_at: float | None
    revoke_reason: str | None


def service_identity(role: str, worker: str) -> str:
    """The certificate CN, and MQTT client id, of one cloud process: ``cloud.<role>.<worker>``."""
    if role not in SERVICE_ROLES:
        raise ConfigError(f"service role {role!r} must be one of {', '.join(SERVICE_ROLES)}")
    if not _WORKER.match(worker):
        raise ConfigError(f"worker id {worker!r} must match {_WORKER.pattern}")
    return f"cloud.{role}.{worker}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_TOKEN_ID = re.compile(r"^mgw1-([A-Za-z0-9_-]{8})\.")


def token_ref(token: str) -> str:
    """A short name of a token that is safe to log and to count attempts by, never the token.

    A token is ``mgw1-<id>.<secret>``: the reference is a hash prefix of the id alone, so every
    attempt with that id, right secret or wrong, counts toward the same token's limits. Anything
    else (an older token without an id, a guess) is named by a hash prefix of the whole string.
    """
    m = _TOKEN_ID.match(token)
    return hashlib.sha256((m.group(1) if m else token).encode()).hexdigest()[:12]


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of a certificate's DER, lowercase hex: what a box pins before trusting the CA."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mgw fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ts(when: dt.datetime) -> float:
    return when.timestamp()


class FleetAuthority:
    def __init__(self, pki_dir: Path, clock: Callable[[], float] = time.time,
                 crl_copies: tuple[Path, ...] = ()) -> None:
        self.dir = pki_dir
        self._clock = clock
        self.crl_copies = crl_copies
        pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_key_path = pki_dir / "ca.key"
        self.ca_cert_path = pki_dir / "ca.pem"
        self.crl_path = pki_dir / "crl.pem"
        with blobs.locked(pki_dir / ".ca.lock"):  # the enrolment and fleet services may start together
            if not self.ca_key_path.exists():
                self._create_ca()
        self._ca_key = serialization.load_pem_private_key(self._read_key(self.ca_key_path), None)
        self.ca_pem = self.ca_cert_path.read_bytes()
        self._ca_cert = x509.load_pem_x509_certificate(self.ca_pem)
        self._registry = SqliteDatabase(pki_dir / "registry.db", "enrolment registry")  # WAL, FULL
        self._registry.migrate(MIGRATIONS)
        self._db = self._registry.conn

    def close(self) -> None:
        self._registry.close()

    # -- the CA itself ------------------------------------------------------------------------
    @staticmethod
    def _read_key(path: Path) -> bytes:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path}: CA key must not be readable by group or others (chmod 600)")
        return path.read_bytes()

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC)

    def _create_ca(self, days: int = 3650) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._now()
        name = _name("mgw fleet CA")
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        blobs.write_atomic(self.ca_key_path, pem, mode=0o600)
        blobs.write_atomic(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca_pem)

    def _sign(self, cn: str, public_key: ec.EllipticCurvePublicKey, days: float, server_hosts: list[str] | None,
              kind: str, renewed_from: str | None = None) -> x509.Certificate:
        now = self._now()
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self._ca_cert.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, False, True, False, True, False, False, False, False),
                                  critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._ca_key.public_key()), critical=False))  # type: ignore[arg-type]
        if server_hosts is not None:
            sans: list[x509.GeneralName] = []
            for host in server_hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())  # type: ignore[arg-type]
        self._db.execute(
            "INSERT INTO certificates (serial, subject, kind, not_before, not_after, issued_at, renewed_from)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (format(cert.serial_number, "x"), cn, kind, _ts(cert.not_valid_before_utc),
             _ts(cert.not_valid_after_utc), self._clock(), renewed_from))
        return cert

    def issue_with_key(self, cn: str, days: float, server_hosts: list[str] | None = None) -> tuple[bytes, bytes]:
        """A key and certificate made here: for the broker, the enrolment endpoint, cloud ingest.

        Returns ``(key_pem, cert_pem)``; the caller writes the key 0600.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(cn, key.public_key(), days, server_hosts, "server" if server_hosts else "service")
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)

    # -- enrolment tokens ---------------------------------------------------------------------
    def create_token(self, box_id: str, site: str, modality: str, ttl_s: float,
                     site_tables: dict[str, dict[str, Any]] | None = None) -> str:
        """A one-time enrolment token bound to a box id, site and modality, carrying the site tables
        its box gets in the enrolment answer (checked here: ``site_tables.check``); only its hash is kept."""
        from gateway import site_tables as tables

        if not BOX_ID.match(box_id):
            raise ConfigError(f"box id {box_id!r} must match {BOX_ID.pattern}")
        if ttl_s <= 0:
            raise ConfigError("token lifetime must be positive")
        carried = tables.check(site_tables or {}, "token site tables")
        token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(6)}.{secrets.token_urlsafe(32)}"  # <id>.<256-bit secret>
        now = self._clock()
        self._db.execute("INSERT INTO tokens (token_sha256, box_id, site, modality, created_at, expires_at, "
                         "site_tables) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (token_hash(token), box_id, site, modality, now, now + ttl_s,
                          json.dumps(carried, sort_keys=True)))
        return token

    def redeem(self, token: str, csr_pem: bytes, days: float) -> Issued:
        """Sign ``csr_pem`` for the token's box, once. Raises ``EnrolmentRefusedError`` saying why."""
        csr = self._load_csr(csr_pem)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT box_id, site, modality, expires_at, used_at, site_tables FROM tokens "
                             "WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
            if row is None:
                raise EnrolmentRefusedError("enrolment token unknown: check it was copied whole, "
                                            "or ask ops for a new one")
            box_id, site, modality, expires_at, used_at, carried = row
            if used_at is not None:
                raise EnrolmentRefusedError("enrolment token already used: each token provisions one box once; "
                                            "ask ops for a new one")
            if self._clock() > expires_at:
                raise EnrolmentRefusedError("enrolment token expired: ask ops for a new one")
            cn = _common_name(csr.subject)
            if cn not in ("", box_id):
                raise EnrolmentRefusedError(f"CSR names {cn!r} but the token is for box {box_id!r}")
            cert = self._sign(box_id, csr.public_key(), days, None, "box")  # type: ignore[arg-type]
            serial = format(cert.serial_number, "x")
            db.execute("UPDATE tokens SET used_at = ?, serial = ? WHERE token_sha256 = ?",
                       (self._clock(), serial, token_hash(token)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Issued(box_id, site, modality, cert.public_bytes(serialization.Encoding.PEM), serial,
                      _ts(cert.not_valid_after_utc), json.loads(carried))

    def renew(self, presented_pem: bytes, csr_pem: bytes, days: float) -> Issued:
        """A new certificate for the box that presented a valid, unrevoked certificate of ours."""
        presented = x509.load_pem_x509_certificate(presented_pem)
        try:
            presented.verify_directly_issued_by(self._ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise EnrolmentRefusedError("presented certificate was not issued by this fleet CA") from exc
        serial = format(presented.serial_number, "x")
        record = self.record(serial)
        if record is None or record.kind != "box":
            raise EnrolmentRefusedError("presented certificate is not a box certificate of this fleet")
        if record.revoked_at is not None:
            raise EnrolmentRefusedError("presented certificate is revoked")
        if self._clock() > record.not_after:
            raise EnrolmentRefusedError("presented certificate expired: re-provision the box with a new token")
        csr = self._load_csr(csr_pem)
        cn = _common_name(csr.subject)
        if cn not in ("", record.subject):
            raise EnrolmentRefusedError(f"CSR names {cn!r} but the certificate is for box {record.subject!r}")
        cert = self._sign(record.subject, csr.public_key(), days, None, "box", renewed_from=serial)  # type: ignore[arg-type]
        # The old certificate is superseded: revoked now, so a copy of it is worth nothing. The box
        # presents the new one at its next connect; the broker drops connections still on the old one.
        self.revoke_serial(serial, "superseded")
        site, modality = self._db.execute(
            "SELECT site, modality FROM tokens WHERE box_id = ? ORDER BY created_at DESC LIMIT 1",
            (record.subject,)).fetchone() or ("", "")
        return Issued(record.subject, site, modality, cert.public_bytes(serialization.Encoding.PEM),
                      format(cert.serial_number, "x"), _ts(cert.not_valid_after_utc))

    @staticmethod
    def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            valid, public = csr.is_signature_valid, csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise EnrolmentRefusedError("CSR is not a usable PEM certificate signing request") from exc
        if not valid:
            raise EnrolmentRefusedError("CSR signature does not verify (proof of possession failed)")
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise EnrolmentRefusedError("CSR key must be an EC key (P-256)")
        return csr

    # -- registry and revocation -----------------------------------------------------------------
    def record(self, serial: str) -> CertRecord | None:
        row = self._db.execute("SELECT * FROM certificates WHERE serial = ?", (serial,)).fetchone()
        return CertRecord(*row) if row else None

    def records(self, subject: str | None = None) -> list[CertRecord]:
        sql, args = "SELECT * FROM certificates", tuple[str, ...]()
        if subject is not None:
            sql, args = sql + " WHERE subject = ?", (subject,)
        return [CertRecord(*r) for r in self._db.execute(sql + " ORDER BY issued_at", args)]

    def revoke_box(self, box_id: str, reason: str = "unspecified") -> int:
        """Revoke every unrevoked certificate of ``box_id``; rewrite the CRL. Returns how many."""
        cur = self._db.execute("UPDATE certificates SET revoked_at = ?, revoke_reason = ? "
                               "WHERE subject = ? AND revoked_at IS NULL", (self._clock(), reason, box_id))
        self.write_crl()
        return cur.rowcount

    def revoke_serial(self, serial: str, reason: str = "unspecified") -> bool:
        """Revoke one certificate (for example one a renewal superseded); rewrite the CRL."""
        cur = self._db.execute("UPDATE certificates SET revoked_at = ?, revoke_reason = ? "
                               "WHERE serial = ? AND revoked_at IS NULL", (self._clock(), reason, serial))
        self.write_crl()
        return cur.rowcount == 1

    def crl_pem(self, next_update_days: float = 7.0) -> bytes:
        now = self._now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self._ca_cert.subject)
                   .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=next_update_days)))
        for serial, revoked_at in self._db.execute(
                "SELECT serial, revoked_at FROM certificates WHERE revoked_at IS NOT NULL"):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
                .revocation_date(dt.datetime.fromtimestamp(revoked_at, dt.UTC)).build())
        crl = builder.sign(self._ca_key, hashes.SHA256())  # type: ignore[arg-type]
        return crl.public_bytes(serialization.Encoding.PEM)

    def write_crl(self) -> Path:
        """Write the CRL to ``<pki>/crl.pem`` and to every ``crl_copies`` path (atomically)."""
        pem = self.crl_pem()
        for path in (self.crl_path, *self.crl_copies):
            blobs.write_atomic(path, pem, mode=0o644)
        return self.crl_path


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
