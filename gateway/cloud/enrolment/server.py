"""The enrolment endpoint: EST-style (RFC 7030 ideas) over HTTPS, served by the cloud.

    GET  /.well-known/est/cacerts         the fleet CA (PEM). A box pins its SHA-256
                                          fingerprint, carried with the token, before trusting it
    POST /.well-known/est/simpleenroll    {"token", "csr"}: one-time token + CSR -> certificate
    POST /.well-known/est/simplereenroll  {"csr"} under mutual TLS with the box's current
                                          certificate -> a renewed certificate

Deviations from RFC 7030, on purpose: JSON bodies and PEM instead of
base64 PKCS#7/PKCS#10, and the bootstrap is authorised by a one-time token in
the body rather than HTTP Basic. A successful answer also carries what the box
needs next: the cloud's envelope public key, where the broker is, and the public
keys it must accept acknowledgements from (``ack_keys``: current and, during a
rotation, next; read afresh for every answer, so renewals carry a staged key).
Refusals are ``{"error": "<what to check>"}`` with HTTP 403 (token, CSR or certificate refused,
or locked out after repeated refusals), 429 (over a rate limit), 400/411/413 (a malformed or
oversize body); 429 and lockouts carry ``Retry-After``. The limits, and why, are in
``gateway/cloud/enrolment/guard.py``; every attempt is logged once with its MESSAGE_ID.

Its Prometheus /metrics is a separate plain-HTTP listener (``authority.enrol_metrics_bind`` and
``enrol_metrics_port``, loopback by default): requests by endpoint and status, refusals by reason,
lockouts, certificates issued, and the process's starts and build information.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.adapters.metrics_http import MetricsServer, Sample
from gateway.cloud.authority.ca import EnrolmentRefusedError, FleetAuthority, Issued, token_ref
from gateway.cloud.enrolment.guard import (
    Guard,
    Lockout,
    Refusal,
    address_key,
    parse,
    read_body,
)
from gateway.config import EnrolmentLimitSettings
from gateway.core.acksig import AckKeyring
from gateway.core.schema import EnrolRequest, ReenrolRequest
from gateway.logs import MSG
from gateway.supervision import StartRecord, build_info

log = logging.getLogger(__name__)
CACERTS = "/.well-known/est/cacerts"
ENROL = "/.well-known/est/simpleenroll"
REENROL = "/.well-known/est/simplereenroll"
_CONTROL = {c: " " for c in (*range(0x20), 0x7F)}


@dataclass(frozen=True)
class BoxDirections:
    """What every enrolled box is told: the envelope key, the broker, the ack keys."""

    cloud_public_key: str
    broker_host: str
    broker_port: int
    topic_prefix: str
    cert_days: float
    ack_keyring: Callable[[], AckKeyring]  # the cloud's ack public keys, read when answering
    command_keyring: Callable[[], AckKeyring] | None = None  # the remote commands' public keys (the fleet's)


@dataclass
class Attempt:
    """One POST as it is being served: what it is counted against and logged with."""

    endpoint: str
    address: str
    keys: list[tuple[str, str]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys.append(("address", self.address))

    def count_as(self, kind: str, key: str, log_field: str) -> None:
        self.keys.append((kind, key))
        self.fields[log_field] = key

    def log_fields(self) -> dict[str, Any]:
        return {"ENDPOINT": self.endpoint, "ADDRESS": self.address, **self.fields}


class EnrolmentCounters:
    """What the endpoint answered, for /metrics. Thread safe: every connection's thread counts here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, HTTP status)
        self.refusals: Counter[str] = Counter()  # reason: refused, bad_request, rate_limited, locked_out, ...
        self.lockouts: Counter[str] = Counter()  # kind: address, token, box
        self.issued: Counter[str] = Counter()  # enrol, renew

    def count(self, counter: Counter[Any], key: Any) -> None:
        with self._lock:
            counter[key] += 1

    def samples(self) -> Iterator[Sample]:
        with self._lock:
            requests, refusals = dict(self.requests), dict(self.refusals)
            lockouts, issued = dict(self.lockouts), dict(self.issued)
        for (endpoint, status), n in sorted(requests.items()):
            yield Sample("mgw_enrolment_requests_total", "requests answered, by endpoint and HTTP status", n,
                         {"endpoint": endpoint, "status": str(status)}, counter=True)
        for reason, n in sorted(refusals.items()):
            yield Sample("mgw_enrolment_refusals_total", "requests and connections refused, by reason", n,
                         {"reason": reason}, counter=True)
        for kind, n in sorted(lockouts.items()):
            yield Sample("mgw_enrolment_lockouts_total", "lockouts started after repeated refusals, by what is "
                         "locked out", n, {"kind": kind}, counter=True)
        for kind in ("enrol", "renew"):
            yield Sample("mgw_enrolment_certificates_issued_total", "box certificates issued, by enrolment or "
                         "renewal", issued.get(kind, 0), {"kind": kind}, counter=True)


class _Server(ThreadingHTTPServer):
    """At most ``max_connections`` connections served at once; more are closed at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int,
                 counters: EnrolmentCounters) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._counters = counters
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("enrolment connection refused", extra={
                "MESSAGE_ID": MSG.ENROLMENT_RATE_LIMITED.value, "ADDRESS": address_key(str(client_address[0])),
                "REASON": "too many connections at once"})
            self._counters.count(self._counters.refusals, "too_many_connections")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("enrolment connection from %s ended with an error", client_address, exc_info=True)


class EnrolmentServer:
    def __init__(self, authority: FleetAuthority, directions: BoxDirections, cert_file: Path, key_file: Path,
                 host: str = "127.0.0.1", port: int = 0, limits: EnrolmentLimitSettings | None = None,
                 clock: Callable[[], float] = time.monotonic, *, metrics_bind: str = "", metrics_port: int = 0,
                 metrics_token: str = "", starts: StartRecord | None = None) -> None:
        self.authority = authority
        self.counters = EnrolmentCounters()
        self.starts = starts
        self.metrics = (MetricsServer(metrics_bind, metrics_port, self._samples, metrics_token) if metrics_bind
                        else None)
        self.directions = directions
        self.limits = limits or EnrolmentLimitSettings()
        self.guard = Guard(self.limits, clock)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert_file), str(key_file))
        ctx.load_verify_locations(cadata=authority.ca_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL  # bootstrap has no client certificate; renewal must have one
        self._lock = threading.Lock()
        server = self

        class Handler(_Handler):
            endpoint = server
            timeout = self.limits.request_timeout_s

        self._httpd = _Server((host, port), Handler, self.limits.max_connections, self.counters)
        # the handshake runs in the connection's own thread, under its timeout, not in accept()
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="enrolment", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ports(self) -> dict[str, int]:
        metrics = None if self.metrics is None else self.metrics.port
        return {"https": self.port} if metrics is None else {"https": self.port, "metrics": metrics}

    def _samples(self) -> Iterator[Sample]:
        yield from self.counters.samples()
        if self.starts is not None:
            yield from self.starts.samples()
        else:
            yield build_info("enrolment")

    def answer(self, issued: Issued) -> dict[str, Any]:
        d = self.directions
        return {
            "box_id": issued.box_id, "site": issued.site, "modality": issued.modality,
            "certificate": issued.certificate_pem.decode(), "ca": self.authority.ca_pem.decode(),
            "not_after": issued.not_after, "cloud_public_key": d.cloud_public_key,
            "mqtt": {"host": d.broker_host, "port": d.broker_port, "topic_prefix": d.topic_prefix},
            "ack_keys": d.ack_keyring().to_doc(),
            **({} if d.command_keyring is None else {"command_keys": d.command_keyring().to_doc()}),
            "site_tables": issued.site_tables,  # what the token carries (gateway/site_tables.py); checked on the box
        }

    def enrol(self, req: EnrolRequest, attempt: Attempt) -> dict[str, Any]:
        ref = token_ref(req.token)
        attempt.count_as("token", ref, "TOKEN_REF")
        self.guard.admit("token", ref, "this enrolment token")
        try:
            with self._lock:  # one SQLite connection; redeem is atomic anyway
                issued = self.authority.redeem(req.token, req.csr.encode(), self.directions.cert_days)
        except EnrolmentRefusedError as exc:
            raise Refusal(403, MSG.ENROLMENT_REFUSED, str(exc)) from exc
        self.guard.succeeded("token", ref)
        self.counters.count(self.counters.issued, "enrol")
        log.info("box enrolled", extra={"MESSAGE_ID": MSG.BOX_ENROLLED.value, "BOX_ID": issued.box_id,
                                        "SERIAL": issued.serial, **attempt.log_fields()})
        return self.answer(issued)

    def reenrol(self, req: ReenrolRequest, peer_der: bytes | None, attempt: Attempt) -> dict[str, Any]:
        if peer_der is None:
            raise Refusal(403, MSG.ENROLMENT_REFUSED, "renewal needs the box's current certificate (mutual TLS)")
        box = _identity(peer_der)
        attempt.count_as("box", box, "BOX_ID")
        self.guard.admit("box", box, "this box")
        try:
            with self._lock:
                issued = self.authority.renew(ssl.DER_cert_to_PEM_cert(peer_der).encode(), req.csr.encode(),
                                              self.directions.cert_days)
        except EnrolmentRefusedError as exc:
            raise Refusal(403, MSG.ENROLMENT_REFUSED, str(exc)) from exc
        self.guard.succeeded("box", box)
        self.counters.count(self.counters.issued, "renew")
        log.info("box certificate renewed", extra={"MESSAGE_ID": MSG.CERT_RENEWED.value,
                                                   "SERIAL": issued.serial, **attempt.log_fields()})
        return self.answer(issued)

    def refused(self, refusal: Refusal, attempt: Attempt) -> str:
        """Count and log a refusal; the reason to send back (with any lockout it started)."""
        lockouts = self.guard.failed(attempt.keys) if refusal.counts else []
        reason = refusal.reason.translate(_CONTROL)[:300]
        self.counters.count(self.counters.refusals, refusal.msg.name.removeprefix("ENROLMENT_").lower())
        log.warning("enrolment request refused", extra={
            "MESSAGE_ID": refusal.msg.value, "STATUS": refusal.status, "REASON": reason,
            "RETRY_AFTER": refusal.retry_after, **attempt.log_fields()})
        for lockout in lockouts:
            self.counters.count(self.counters.lockouts, lockout.kind)
            log.warning("enrolment lockout started", extra={
                "MESSAGE_ID": MSG.ENROLMENT_LOCKOUT_STARTED.value, "KIND": lockout.kind, "KEY": lockout.key,
                "LOCKOUT_S": lockout.seconds, **attempt.log_fields()})
        return reason + "".join(_lockout_note(lo) for lo in lockouts)

    def serve_post(self, path: str, headers: Any, rfile: Any, peer_der: bytes | None, attempt: Attempt) -> Any:
        """The answer to one POST, or a ``Refusal``."""
        if path not in (ENROL, REENROL):
            raise Refusal(404, MSG.ENROLMENT_BAD_REQUEST, "no such endpoint")
        # read (bounded) before any refusal: closing on an unread body resets the connection,
        # and the client would lose the answer telling it when to retry
        body = read_body(rfile, headers.get("Content-Length"), headers.get("Transfer-Encoding"),
                         self.limits.max_body_bytes)
        self.guard.admit("address", attempt.address, "this address")
        if path == ENROL:
            return self.enrol(parse(body, EnrolRequest), attempt)
        return self.reenrol(parse(body, ReenrolRequest), peer_der, attempt)


def _lockout_note(lockout: Lockout) -> str:
    what = {"address": "this address", "token": "this token", "box": "this box"}[lockout.kind]
    return f"; too many refused attempts: {what} is locked out for {round(lockout.seconds)} s"


def _identity(der: bytes) -> str:
    """The box id (common name) of a certificate the TLS layer verified against the fleet CA."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else f"serial:{cert.serial_number:x}"


class _Handler(BaseHTTPRequestHandler):
    endpoint: EnrolmentServer
    server_version = "mgw-enrolment"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("enrolment http: " + format, *args)

    def handle(self) -> None:
        try:
            self.connection.do_handshake()
        except OSError as exc:  # ssl.SSLError and timeouts too: a client that never finishes its handshake
            log.debug("enrolment TLS handshake with %s failed: %s", self.client_address, exc)
            return
        super().handle()

    def _send(self, code: int, body: bytes, ctype: str, retry_after: int = 0) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if retry_after:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, doc: dict[str, Any], retry_after: int = 0) -> None:
        self._send(code, json.dumps(doc).encode(), "application/json", retry_after)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        found = self.path == CACERTS
        counters = self.endpoint.counters
        counters.count(counters.requests, ("cacerts", 200) if found else ("other", 404))
        if found:
            self._send(200, self.endpoint.authority.ca_pem, "application/pem-certificate-chain")
        else:
            self._json(404, {"error": "no such endpoint"})

    def do_POST(self) -> None:  # noqa: N802
        ep = self.endpoint
        name = self.path.rsplit("/", 1)[-1] if self.path in (ENROL, REENROL) else "other"
        attempt = Attempt(name, address_key(str(self.client_address[0])))
        status, retry_after = 200, 0
        try:
            peer = self.connection.getpeercert(binary_form=True)
            doc = ep.serve_post(self.path, self.headers, self.rfile, peer, attempt)
        except Refusal as refusal:
            status, retry_after = refusal.status, refusal.retry_after
            doc = {"error": ep.refused(refusal, attempt)}
            if retry_after:
                doc["retry_after_s"] = retry_after
        except OSError as exc:  # the client stalled or went away mid-request: nobody to answer
            ep.refused(Refusal(400, MSG.ENROLMENT_BAD_REQUEST, f"request not received whole ({exc})"), attempt)
            return
        except Exception as exc:  # a bug of ours: log it, answer 500, keep serving
            log.exception("enrolment request failed", extra={
                "MESSAGE_ID": MSG.ENROLMENT_REFUSED.value, "STATUS": 500,
                "REASON": f"internal error ({type(exc).__name__})", **attempt.log_fields()})
            status, doc = 500, {"error": "internal error at the enrolment endpoint; ops can see it in its log"}
        ep.counters.count(ep.counters.requests, (name, status))
        try:
            self._json(status, doc, retry_after)
        except OSError as exc:
            log.debug("enrolment answer to %s not delivered: %s", attempt.address, exc)
