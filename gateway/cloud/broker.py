"""The broker's side of the fleet PKI, emitted by the cloud: server identity, CA, CRL, ACL.

``emit(authority, out_dir, ...)`` writes everything a mosquitto listener needs for
mutual TLS with per-box authorisation into ``out_dir`` and returns the
``BrokerTls`` that ``adapters.mosquitto.render_config`` turns into
``mosquitto.conf`` lines. The same files serve a production broker
(`mgw cloud broker-config`) and the loopback deployment.
"""

from __future__ import annotations

from pathlib import Path

from gateway.adapters import blobs
from gateway.adapters.mosquitto import BrokerTls, render_acl
from gateway.cloud.authority import INGEST_IDENTITY, FleetAuthority

SERVER_DAYS = 825.0
SERVICE_DAYS = 365.0


def emit(authority: FleetAuthority, out_dir: Path, prefix: str, hosts: list[str]) -> BrokerTls:
    """Server key and certificate for ``hosts``, the CA, the current CRL and the ACL file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key_pem, cert_pem = authority.issue_with_key("mgw broker", SERVER_DAYS, server_hosts=hosts)
    tls = BrokerTls(ca_file=out_dir / "ca.pem", cert_file=out_dir / "server.pem", key_file=out_dir / "server.key",
                    acl_file=out_dir / "acl", crl_file=out_dir / "crl.pem")
    blobs.write_atomic(tls.key_file, key_pem, mode=0o600)
    blobs.write_atomic(tls.cert_file, cert_pem, mode=0o644)
    blobs.write_atomic(tls.ca_file, authority.ca_pem, mode=0o644)
    refresh_crl(authority, tls)
    blobs.write_atomic(tls.acl_file, render_acl(prefix, INGEST_IDENTITY).encode(), mode=0o644)
    return tls


def refresh_crl(authority: FleetAuthority, tls: BrokerTls) -> None:
    """Write the authority's current CRL where the broker reads it (takes effect when the broker reloads)."""
    assert tls.crl_file is not None
    blobs.write_atomic(tls.crl_file, authority.crl_pem(), mode=0o644)


def issue_ingest_identity(authority: FleetAuthority, out_dir: Path) -> tuple[Path, Path]:
    """Client key and certificate for the cloud ingest workers (CN ``cloud.ingest``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key_pem, cert_pem = authority.issue_with_key(INGEST_IDENTITY, SERVICE_DAYS)
    key, cert = out_dir / "ingest.key", out_dir / "ingest.pem"
    blobs.write_atomic(key, key_pem, mode=0o600)
    blobs.write_atomic(cert, cert_pem, mode=0o644)
    return key, cert
