"""The enrolment endpoint under abuse, over real TLS: rate limits, lockouts, bounded bodies, logs.

Clients come from two loopback source addresses (127.0.0.1 and 127.0.0.2) to show that one
address being limited leaves another served. Time is an injected clock shared by the endpoint's
limiter and the fleet CA: a lockout ends by moving it, never by sleeping.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import __version__
from gateway.adapters import enrolment_client
from gateway.cloud.authority.ca import FleetAuthority, token_ref
from gateway.cloud.enrolment.server import ENROL, REENROL, BoxDirections, EnrolmentServer
from gateway.config import EnrolmentLimitSettings
from gateway.core.acksig import AckKeyring, AckSigner
from gateway.edge import provision as prov
from gateway.logs import MSG
from gateway.paths import Paths
from tests.peers import wait_for
from tests.tls_peers import box_identity

PUB = "A" * 43 + "="
A, B = "127.0.0.1", "127.0.0.2"
GENEROUS = EnrolmentLimitSettings(address_per_minute=600, address_burst=100, token_per_minute=600,
                                  token_burst=100, box_per_minute=600, box_burst=100, max_failures=100)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Cloud:
    authority: FleetAuthority
    server: EnrolmentServer
    clock: Clock
    tmp: Path

    def token(self, box: str = "ct-01", ttl_s: float = 3600) -> str:
        return self.authority.create_token(box, "clinic-7", "CT", ttl_s=ttl_s)

    def post(self, path: str, body: Any, source: str = A, cert: tuple[Path, Path] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
        """One POST over TLS from ``source``; ``body`` bytes are sent as they are, anything else as JSON."""
        ctx = ssl.create_default_context(cadata=self.authority.ca_pem.decode())
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=ctx, timeout=30,
                                           source_address=(source, 0))
        try:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            if headers is None:
                conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            else:  # exactly these headers: a lying or missing Content-Length
                conn.putrequest("POST", path)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders(data)
            rsp = conn.getresponse()
            return rsp.status, json.loads(rsp.read() or b"{}"), rsp.headers
        finally:
            conn.close()

    def enrol(self, token: str, source: str = A) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
        return self.post(ENROL, {"token": token, "csr": _csr()}, source)

    def provision(self, token: str, name: str) -> prov.Provisioned:
        enrolment = prov.Enrolment(f"https://127.0.0.1:{self.server.port}", self.authority.ca_fingerprint, token)
        return prov.provision(enrolment, Paths(self.tmp / "etc", self.tmp / name, self.tmp / "run"), self_test=False)


def _fields(record: logging.LogRecord, *names: str) -> tuple[Any, ...]:
    return tuple(record.__dict__.get(name) for name in names)


def _csr(cn: str = "") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def make_cloud(tmp_path: Path) -> Iterator[Any]:
    made: list[Cloud] = []

    def make(limits: EnrolmentLimitSettings = GENEROUS, metrics_bind: str = "") -> Cloud:
        clock = Clock()
        authority = FleetAuthority(tmp_path / "ca", clock=clock)
        key_pem, cert_pem = authority.issue_with_key("enrolment", 30, server_hosts=["127.0.0.1"])
        (tmp_path / "enrol.key").write_bytes(key_pem)
        (tmp_path / "enrol.pem").write_bytes(cert_pem)
        keyring = AckKeyring((AckSigner(bytes(32)).public,))
        server = EnrolmentServer(authority, BoxDirections(PUB, "127.0.0.1", 8883, "mgw/v1", 90.0, lambda: keyring),
                                 tmp_path / "enrol.pem", tmp_path / "enrol.key", limits=limits, clock=clock,
                                 metrics_bind=metrics_bind, metrics_port=0)
        server.start()
        made.append(Cloud(authority, server, clock, tmp_path))
        return made[-1]

    yield make
    for cloud in made:
        cloud.server.stop()
        cloud.authority.close()


def test_burst_from_one_address_is_cut_to_the_limit_with_429_when_it_floods(make_cloud: Any) -> None:
    cloud = make_cloud(replace(GENEROUS, address_per_minute=1, address_burst=3))
    statuses = [cloud.enrol(f"mgw1-guess{n}")[0] for n in range(8)]
    assert statuses == [403, 403, 403] + [429] * 5
    status, doc, headers = cloud.enrol("mgw1-guess")
    assert status == 429 and 0 < int(headers["Retry-After"]) <= 60
    assert "too many requests from this address" in doc["error"] and doc["retry_after_s"] > 0
    assert cloud.enrol("mgw1-guess", source=B)[0] == 403  # another address is still served (and refused)
    cloud.clock.now += 60  # one minute buys one request
    assert [cloud.enrol("mgw1-guess")[0] for _ in range(2)] == [403, 429]


def test_provision_prints_one_line_with_the_retry_time_when_the_endpoint_answers_429(make_cloud: Any) -> None:
    cloud = make_cloud(replace(GENEROUS, address_per_minute=1, address_burst=1))
    assert cloud.enrol("mgw1-guess")[0] == 403
    with pytest.raises(enrolment_client.EnrolmentError) as info:
        cloud.provision(cloud.token(), "box")
    message = str(info.value)
    assert message.startswith("enrolment endpoint busy (429): too many requests from this address")
    assert "try again in 60 s" in message and "\n" not in message


def test_right_token_refused_until_the_lockout_ends_when_its_secret_was_guessed_wrongly(make_cloud: Any) -> None:
    cloud = make_cloud(replace(GENEROUS, max_failures=3, lockout_s=900))
    token = cloud.token()
    token_id = token.split(".", 1)[0]
    assert [cloud.enrol(f"{token_id}.wrong{n}", source=B)[0] for n in range(3)] == [403, 403, 403]
    status, doc, headers = cloud.enrol(token)  # the right token, from another address: the token is locked
    assert status == 403 and "enrolment token locked out" in doc["error"] and int(headers["Retry-After"]) == 900
    status, doc, _ = cloud.enrol(cloud.token("mr-02"), source=B)  # the guessing address is locked out too
    assert status == 403 and "this address locked out" in doc["error"]
    cloud.clock.now += 899
    assert cloud.enrol(token)[0] == 403
    cloud.clock.now += 2
    assert cloud.provision(token, "box").box_id == "ct-01"  # the lockout ended; the token was never spent


def test_third_refusal_says_the_address_is_locked_out_when_max_failures_is_three(make_cloud: Any) -> None:
    cloud = make_cloud(replace(GENEROUS, max_failures=3, lockout_s=600))
    assert "locked out" not in cloud.enrol("mgw1-a")[1]["error"]
    assert "locked out" not in cloud.enrol("mgw1-b")[1]["error"]
    assert "this address is locked out for 600 s" in cloud.enrol("mgw1-c")[1]["error"]
    status, _, headers = cloud.enrol(cloud.token())
    assert status == 403 and int(headers["Retry-After"]) == 600
    assert cloud.enrol(cloud.token("mr-02"), source=B)[0] == 200  # the other address is unaffected


def test_expired_or_used_token_refused_when_presented_again(make_cloud: Any) -> None:
    cloud = make_cloud()
    token, short = cloud.token(), cloud.token("mr-02", ttl_s=60)
    assert cloud.enrol(token)[0] == 200
    status, doc, _ = cloud.enrol(token)
    assert status == 403 and "enrolment token already used" in doc["error"]
    cloud.clock.now += 61
    status, doc, _ = cloud.enrol(short)
    assert status == 403 and "enrolment token expired" in doc["error"]


@pytest.mark.parametrize("body,headers,status", [
    (b"{}", {"Content-Length": str(10**9)}, 413),  # declared too large: refused before reading
    (b"{}", {}, 411),
    (b"{}", {"Content-Length": "-1"}, 400),
    (b"{}", {"Content-Length": "2", "Transfer-Encoding": "chunked"}, 400),
    (b"{not json", None, 400),
    (b"[1, 2]", None, 400),
    (b'{"token": 5, "csr": "x"}', None, 400),
    (b'{"token": "mgw1-x"}', None, 400),
    (b'{"token": "mgw1-\\u0000", "csr": "x"}', None, 400),
    (json.dumps({"token": "mgw1-" + "a" * 300, "csr": "x"}).encode(), None, 400),
])
def test_body_refused_and_the_endpoint_keeps_serving_when_it_is_oversize_or_malformed(
        make_cloud: Any, body: bytes, headers: dict[str, str] | None, status: int) -> None:
    cloud = make_cloud()
    got, doc, _ = cloud.post(ENROL, body, headers=headers)
    assert got == status and doc["error"]
    assert cloud.server.alive()
    assert cloud.provision(cloud.token(), "box").box_id == "ct-01"


def test_oversize_body_never_read_when_the_client_sends_it_whole(make_cloud: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    cloud = make_cloud()
    caplog.set_level(logging.INFO, logger="gateway.cloud.enrolment.server")
    try:
        status = cloud.post(ENROL, b"x" * (cloud.server.limits.max_body_bytes + 1))[0]
    except OSError:  # the endpoint answered 413 and closed while we were still sending
        status = 413
    assert status == 413
    assert _fields(caplog.records[-1], "MESSAGE_ID", "STATUS") == (MSG.ENROLMENT_BAD_REQUEST, 413)
    assert cloud.provision(cloud.token(), "box").box_id == "ct-01"


def test_stalled_body_refused_and_counted_when_the_client_stops_sending(make_cloud: Any,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    cloud = make_cloud(replace(GENEROUS, request_timeout_s=1.0, max_failures=1))
    caplog.set_level(logging.INFO, logger="gateway.cloud.enrolment.server")
    ctx = ssl.create_default_context(cadata=cloud.authority.ca_pem.decode())
    with socket.create_connection(("127.0.0.1", cloud.server.port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"POST {ENROL} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
        assert tls.recv(1024) == b""  # closed unanswered once the body stalled for request_timeout_s
    assert _fields(caplog.records[0], "MESSAGE_ID", "STATUS") == (MSG.ENROLMENT_BAD_REQUEST, 400)
    assert "request not received whole" in caplog.records[0].__dict__["REASON"]
    status, doc, _ = cloud.enrol(cloud.token())  # it counted: max_failures=1 locked the address out
    assert status == 403 and "this address locked out" in doc["error"]


def _renew(cloud: Any, ident: tuple[Path, Path], source: str) -> tuple[Path, Path]:
    """Renew as a box does, keeping the new key; the new certificate supersedes (revokes) ``ident``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    status, doc, _ = cloud.post(REENROL, {"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}, source, ident)
    assert status == 200, doc
    cert_path, key_path = ident[0].with_suffix(".renewed.pem"), ident[1].with_suffix(".renewed.key")
    cert_path.write_text(doc["certificate"])
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_renewal_limited_by_the_box_certificate_when_one_box_asks_from_two_addresses(make_cloud: Any) -> None:
    cloud = make_cloud(replace(GENEROUS, box_per_minute=1, box_burst=2))
    ident = box_identity(cloud.authority, "ct-01", cloud.tmp / "box")
    other = box_identity(cloud.authority, "mr-02", cloud.tmp / "box")
    ident = _renew(cloud, ident, A)
    ident = _renew(cloud, ident, B)
    status, doc, headers = cloud.post(REENROL, {"csr": _csr()}, B, ident)
    assert status == 429 and "too many requests from this box" in doc["error"] and int(headers["Retry-After"]) > 0
    assert cloud.post(REENROL, {"csr": _csr()}, B, other)[0] == 200  # another box from the same address


def test_revoked_box_locked_out_of_renewal_when_it_keeps_trying(make_cloud: Any) -> None:
    cloud = make_cloud(replace(GENEROUS, max_failures=2, lockout_s=900))
    ident = box_identity(cloud.authority, "ct-01", cloud.tmp / "box")
    cloud.authority.revoke_box("ct-01", "stolen")
    assert "revoked" in cloud.post(REENROL, {"csr": _csr()}, A, ident)[1]["error"]
    assert "revoked" in cloud.post(REENROL, {"csr": _csr()}, B, ident)[1]["error"]  # one count per address
    status, doc, _ = cloud.post(REENROL, {"csr": _csr()}, "127.0.0.3", ident)  # the box is locked, any address
    assert status == 403 and "this box locked out" in doc["error"]


def test_every_attempt_is_logged_with_its_message_id_when_served_or_refused(
        make_cloud: Any, caplog: pytest.LogCaptureFixture) -> None:
    cloud = make_cloud(replace(GENEROUS, address_burst=6, address_per_minute=1, max_failures=4))
    token, expired = cloud.token(), cloud.token("mr-02", ttl_s=60)
    caplog.set_level(logging.INFO, logger="gateway.cloud.enrolment.server")
    assert cloud.enrol(token)[0] == 200
    assert cloud.enrol(token)[0] == 403  # used
    assert cloud.post(ENROL, b"{", headers=None)[0] == 400
    cloud.clock.now += 61
    assert cloud.enrol(expired)[0] == 403
    assert cloud.enrol("mgw1-nope")[0] == 403  # the fourth failure: the address is locked out
    assert cloud.enrol(cloud.token("us-03"))[0] == 403  # locked out
    assert cloud.enrol(cloud.token("us-03"), source=B)[0] == 200
    assert cloud.post(REENROL, {"csr": _csr()}, B)[0] == 403  # no client certificate
    ids = [r.__dict__["MESSAGE_ID"] for r in caplog.records if r.name == "gateway.cloud.enrolment.server"]
    assert ids == [MSG.BOX_ENROLLED, MSG.ENROLMENT_REFUSED, MSG.ENROLMENT_BAD_REQUEST, MSG.ENROLMENT_REFUSED,
                   MSG.ENROLMENT_REFUSED, MSG.ENROLMENT_LOCKOUT_STARTED, MSG.ENROLMENT_LOCKED_OUT,
                   MSG.BOX_ENROLLED, MSG.ENROLMENT_REFUSED]
    assert _fields(caplog.records[0], "ADDRESS", "ENDPOINT") == (A, "simpleenroll")
    assert caplog.records[0].__dict__["TOKEN_REF"] == token_ref(token)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert token not in text and token.split(".", 1)[1] not in text and expired not in text


def test_rate_limited_attempt_is_logged_when_refused_with_429(make_cloud: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cloud = make_cloud(replace(GENEROUS, address_burst=1, address_per_minute=1))
    caplog.set_level(logging.INFO, logger="gateway.cloud.enrolment.server")
    assert [cloud.enrol("mgw1-x")[0] for _ in range(2)] == [403, 429]
    assert _fields(caplog.records[-1], "MESSAGE_ID", "STATUS", "ADDRESS", "RETRY_AFTER") == (
        MSG.ENROLMENT_RATE_LIMITED, 429, A, 60)


def _connect_idle(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)  # TCP only: no TLS handshake, ever


def test_other_clients_served_when_a_connection_never_starts_its_tls_handshake(make_cloud: Any) -> None:
    cloud = make_cloud()
    idle = _connect_idle(cloud.server.port)
    try:
        assert cloud.provision(cloud.token(), "box").box_id == "ct-01"
    finally:
        idle.close()


def test_connection_closed_unanswered_when_max_connections_are_open(make_cloud: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    cloud = make_cloud(replace(GENEROUS, max_connections=2))
    caplog.set_level(logging.INFO, logger="gateway.cloud.enrolment.server")
    idle = [_connect_idle(cloud.server.port) for _ in range(2)]
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            cloud.enrol(cloud.token())
    finally:
        for sock in idle:
            sock.close()
    assert [_fields(r, "MESSAGE_ID", "REASON") for r in caplog.records] == [
        (MSG.ENROLMENT_RATE_LIMITED, "too many connections at once")]

    def served() -> bool:  # the slots free once their threads see the sockets close
        try:
            return bool(cloud.enrol(cloud.token("mr-02"))[0] == 200)
        except OSError:
            return False

    wait_for(served, 30, "the endpoint to serve again once the idle connections closed")


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` whose labels include ``labels`` (0 if none)."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_count_requests_refusals_and_certificates_and_carry_build_info_when_boxes_enrol(
        make_cloud: Any) -> None:
    cloud = make_cloud(replace(GENEROUS, address_per_minute=1, address_burst=3), metrics_bind="127.0.0.1")
    port = cloud.server.ports()["metrics"]
    assert port and port != cloud.server.port  # its own listener, any free port, reported
    assert cloud.enrol(cloud.token("ct-01"))[0] == 200
    assert [cloud.enrol(f"mgw1-guess{n}")[0] for n in range(3)] == [403, 403, 429]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:  # noqa: S310 - loopback
        text = rsp.read().decode()
    assert _metric(text, "mgw_enrolment_requests_total", endpoint="simpleenroll", status="200") == 1
    assert _metric(text, "mgw_enrolment_requests_total", endpoint="simpleenroll", status="403") == 2
    assert _metric(text, "mgw_enrolment_requests_total", endpoint="simpleenroll", status="429") == 1
    assert _metric(text, "mgw_enrolment_refusals_total", reason="refused") == 2
    assert _metric(text, "mgw_enrolment_refusals_total", reason="rate_limited") == 1
    assert _metric(text, "mgw_enrolment_certificates_issued_total", kind="enrol") == 1
    assert _metric(text, "mgw_build_info", component="enrolment", version=__version__) == 1
