"""The enrolment endpoint: EST-style (RFC 7030 ideas) over HTTPS, served by the cloud.

    GET  /.well-known/est/cacerts         the fleet CA (PEM). A box pins its SHA-256
                                          fingerprint, carried with the token, before trusting it
    POST /.well-known/est/simpleenroll    {"token", "csr"}: one-time token + CSR -> certificate
    POST /.well-known/est/simplereenroll  {"csr"} under mutual TLS with the box's current
                                          certificate -> a renewed certificate

Deviations from RFC 7030, on purpose: JSON bodies and PEM instead of
base64 PKCS#7/PKCS#10, and the bootstrap is authorised by a one-time token in
the body rather than HTTP Basic. A successful answer also carries what the box
needs next: the cloud's envelope public key and where the broker is.
Refusals are HTTP 403 with ``{"error": "<what to check>"}``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.cloud.authority import EnrolmentRefusedError, FleetAuthority, Issued
from gateway.logs import MSG

log = logging.getLogger(__name__)
CACERTS = "/.well-known/est/cacerts"
ENROL = "/.well-known/est/simpleenroll"
REENROL = "/.well-known/est/simplereenroll"
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class BoxDirections:
    """What every enrolled box is told: the envelope key and the broker."""

    cloud_public_key: str
    broker_host: str
    broker_port: int
    topic_prefix: str
    cert_days: float


class EnrolmentServer:
    def __init__(self, authority: FleetAuthority, directions: BoxDirections, cert_file: Path, key_file: Path,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.authority = authority
        self.directions = directions
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert_file), str(key_file))
        ctx.load_verify_locations(cadata=authority.ca_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL  # bootstrap has no client certificate; renewal must have one
        self._lock = threading.Lock()
        server = self

        class Handler(_Handler):
            endpoint = server

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="enrolment", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def answer(self, issued: Issued) -> dict[str, Any]:
        d = self.directions
        return {
            "box_id": issued.box_id, "site": issued.site, "modality": issued.modality,
            "certificate": issued.certificate_pem.decode(), "ca": self.authority.ca_pem.decode(),
            "not_after": issued.not_after, "cloud_public_key": d.cloud_public_key,
            "mqtt": {"host": d.broker_host, "port": d.broker_port, "topic_prefix": d.topic_prefix},
        }

    def enrol(self, body: dict[str, Any]) -> dict[str, Any]:
        token, csr = body.get("token"), body.get("csr")
        if not isinstance(token, str) or not isinstance(csr, str):
            raise EnrolmentRefusedError("request must carry 'token' and 'csr' strings")
        with self._lock:  # one SQLite connection; redeem is atomic anyway
            issued = self.authority.redeem(token, csr.encode(), self.directions.cert_days)
        log.info("box enrolled", extra={"MESSAGE_ID": MSG.BOX_ENROLLED.value, "BOX_ID": issued.box_id,
                                        "SERIAL": issued.serial})
        return self.answer(issued)

    def reenrol(self, body: dict[str, Any], peer_der: bytes | None) -> dict[str, Any]:
        csr = body.get("csr")
        if peer_der is None:
            raise EnrolmentRefusedError("renewal needs the box's current certificate (mutual TLS)")
        if not isinstance(csr, str):
            raise EnrolmentRefusedError("request must carry a 'csr' string")
        with self._lock:
            issued = self.authority.renew(ssl.DER_cert_to_PEM_cert(peer_der).encode(), csr.encode(),
                                          self.directions.cert_days)
        log.info("box certificate renewed", extra={"MESSAGE_ID": MSG.CERT_RENEWED.value,
                                                   "BOX_ID": issued.box_id, "SERIAL": issued.serial})
        return self.answer(issued)


class _Handler(BaseHTTPRequestHandler):
    endpoint: EnrolmentServer
    server_version = "mgw-enrolment"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("enrolment http: " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, doc: dict[str, Any]) -> None:
        self._send(code, json.dumps(doc).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == CACERTS:
            self._send(200, self.endpoint.authority.ca_pem, "application/pem-certificate-chain")
        else:
            self._json(404, {"error": "no such endpoint"})

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY_BYTES:
                raise EnrolmentRefusedError("request body missing or too large")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise EnrolmentRefusedError("request body must be a JSON object")
            if self.path == ENROL:
                self._json(200, self.endpoint.enrol(body))
            elif self.path == REENROL:
                peer = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
                self._json(200, self.endpoint.reenrol(body, peer))
            else:
                self._json(404, {"error": "no such endpoint"})
        except EnrolmentRefusedError as exc:
            log.warning("enrolment refused", extra={"MESSAGE_ID": MSG.ENROLMENT_REFUSED.value, "REASON": str(exc)})
            self._json(403, {"error": str(exc)})
        except (ValueError, json.JSONDecodeError):
            self._json(400, {"error": "request body is not valid JSON"})
