"""The broker's side of the fleet PKI, emitted by the cloud: server identity, CA, CRL, cloud identities.

``emit_files(authority, out_dir, hosts)`` writes what any broker's mutual-TLS listener needs
into ``out_dir`` and returns the ``BrokerFiles`` a broker profile renders its configuration
from (`mgw cloud broker-config`). ``emit`` is the same for the mosquitto listener with its
guard plugin that the loopback deployment and the tests run.

Identities (certificate common names) and the client ids they may use (``policy``):

- a box: its box id; client ids ``<box>`` (uplink), ``<box>:telemetry``, ``<box>:selftest``;
- a cloud process: ``cloud.<role>.<worker>`` (``authority.service_identity``), client id the same.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.adapters import blobs
from gateway.adapters.mosquitto import BrokerTls
from gateway.cloud.authority.ca import FleetAuthority, service_identity
from gateway.cloud.broker.mosquitto import MosquittoProfile
from gateway.cloud.broker.profile import BrokerFiles
from gateway.config import MqttSettings
from gateway.core.errors import ConfigError

SERVER_DAYS = 825.0
SERVICE_DAYS = 365.0


def emit_files(authority: FleetAuthority, out_dir: Path, hosts: list[str], crl_file: Path | None = None
               ) -> BrokerFiles:
    """Server key and certificate for ``hosts``, the CA and the current CRL.

    ``crl_file`` is where the broker reads the CRL (default ``out_dir/crl.pem``): give the
    same path to the authority as a CRL copy so revocations reach the broker.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key_pem, cert_pem = authority.issue_with_key("mgw broker", SERVER_DAYS, server_hosts=hosts)
    files = BrokerFiles(ca_file=out_dir / "ca.pem", cert_file=out_dir / "server.pem", key_file=out_dir / "server.key",
                        crl_file=crl_file or out_dir / "crl.pem")
    blobs.write_atomic(files.key_file, key_pem, mode=0o600)
    blobs.write_atomic(files.cert_file, cert_pem, mode=0o644)
    blobs.write_atomic(files.ca_file, authority.ca_pem, mode=0o644)
    refresh_crl(authority, files.crl_file)
    return files


def emit(authority: FleetAuthority, out_dir: Path, prefix: str, hosts: list[str],
         crl_file: Path | None = None, plugin_dir: Path | None = None) -> BrokerTls:
    """``emit_files``, and the mosquitto profile's TLS with the guard plugin (compiled into
    ``plugin_dir``, default ``out_dir``) for an ``adapters.mosquitto.MosquittoBroker``."""
    return MosquittoProfile().tls(emit_files(authority, out_dir, hosts, crl_file), prefix, plugin_dir or out_dir)


def refresh_crl(authority: FleetAuthority, crl_file: Path) -> None:
    """Write the authority's current CRL where the broker reads it (the guard plugin polls it)."""
    blobs.write_atomic(crl_file, authority.crl_pem(), mode=0o644)


def issue_service_identity(authority: FleetAuthority, role: str, worker: str, out_dir: Path) -> tuple[Path, Path]:
    """Client key and certificate of one cloud process, CN ``cloud.<role>.<worker>``: ``(key, cert)`` files."""
    cn = service_identity(role, worker)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_pem, cert_pem = authority.issue_with_key(cn, SERVICE_DAYS)
    key, cert = out_dir / f"{role}-{worker}.key", out_dir / f"{role}-{worker}.pem"
    blobs.write_atomic(key, key_pem, mode=0o600)
    blobs.write_atomic(cert, cert_pem, mode=0o644)
    return key, cert


def certificate_identity(cert_file: str) -> str:
    """The common name of the certificate in ``cert_file``."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{cert_file}: not a readable PEM certificate ({exc})") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ConfigError(f"{cert_file}: certificate has no common name")
    return str(names[0].value)


def service_client_id(mqtt: MqttSettings, role: str, worker: str) -> str:
    """The MQTT client id of a cloud process: its certificate's identity, which the broker insists on.

    Without a client certificate (a plaintext test broker) the identity it would have.
    """
    return certificate_identity(mqtt.cert_file) if mqtt.cert_file else service_identity(role, worker)
