"""The fleet console's HTTPS certificate: the operator's, or one the fleet CA issues; plain HTTP only when asked.

``fleet.tls_cert_file``/``tls_key_file`` name a certificate the operator supplies (a hospital's
own CA, so that its browsers trust the console as they trust its other sites). Without them, the
fleet CA (``authority.pki_dir``, the CA that enrols boxes) issues the console a server
certificate for ``fleet.tls_hostnames`` once, kept as ``console.pem``/``console.key`` beside the
CA; an operator's browser then trusts the fleet CA's ``ca.pem``. Delete both files to have a
new one issued (after changing ``tls_hostnames``). ``fleet.plain_http`` serves plain HTTP on a
loopback address, for development, and says so in the log at every start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters import blobs
from gateway.cloud.authority.ca import FleetAuthority
from gateway.config import CloudSettings
from gateway.paths import Paths

log = logging.getLogger(__name__)
CERT_DAYS = 825  # what browsers accept for a server certificate; the enrolment endpoint's too


@dataclass(frozen=True)
class ConsoleTls:
    cert_file: Path | None  # None: plain HTTP
    key_file: Path | None
    ca_file: Path | None  # the fleet CA's certificate when it issued cert_file; None for the operator's own


def console_tls(settings: CloudSettings, paths: Paths) -> ConsoleTls:
    f = settings.fleet
    if f.plain_http:
        log.warning("the fleet console serves plain HTTP (fleet.plain_http): for loopback development only",
                    extra={"BIND": f.http_bind})
        return ConsoleTls(None, None, None)
    if f.tls_cert_file:
        return ConsoleTls(paths.key_file(f.tls_cert_file), paths.key_file(f.tls_key_file), None)
    authority = FleetAuthority(paths.key_file(settings.authority.pki_dir))
    try:
        cert, key = authority.dir / "console.pem", authority.dir / "console.key"
        if not (cert.exists() and key.exists()):
            key_pem, cert_pem = authority.issue_with_key("mgw fleet console", CERT_DAYS,
                                                         server_hosts=list(f.tls_hostnames))
            blobs.write_atomic(key, key_pem, mode=0o600)
            blobs.write_atomic(cert, cert_pem, mode=0o644)
            log.info("fleet CA issued the console's certificate", extra={"FILE": str(cert),
                                                                          "NAMES": ",".join(f.tls_hostnames)})
        return ConsoleTls(cert, key, authority.ca_cert_path)
    finally:
        authority.close()
