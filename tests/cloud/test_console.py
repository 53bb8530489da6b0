"""The fleet console over real HTTPS: a real fleet service on a real mosquitto, with a box's telemetry,
an exam record and a dead letter in it; its OpenAPI document against its routes; a schema-driven
fuzzer (schemathesis) against the running service; hostile requests; TLS from the fleet CA or the
operator; plain HTTP only when configured; a stop that does not hang on open connections."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway import __version__
from gateway.adapters import blobs
from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.fleet import openapi
from gateway.cloud.fleet.http import FleetDocs
from gateway.cloud.fleet.service import FleetService
from gateway.cloud.fleet.starlette_app import build_app, route_methods, route_paths
from gateway.config import FleetSettings, _check_fleet
from gateway.core import fleet
from gateway.core.errors import ConfigError
from gateway.core.fleet import MessageKind
from gateway.paths import Paths
from tests.backends import Backend
from tests.cloud.test_fleet import Box
from tests.cloud.test_fleet import settings as cloud_settings
from tests.console_auth import bearer, service_token
from tests.peers import wait_for


def start(broker: MosquittoBroker, tmp_path: Path, **fleet_keys: Any) -> FleetService:
    svc = FleetService(cloud_settings(broker, Backend("sqlite"), offline_after_s=60.0, **fleet_keys),
                       Paths(tmp_path, tmp_path / "cloud", tmp_path))
    svc.start()
    return svc


@pytest.fixture
def service(broker: MosquittoBroker, tmp_path: Path) -> Iterator[FleetService]:
    svc = start(broker, tmp_path)
    try:
        assert svc.link.wait_connected(60)
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def populated(service: FleetService, broker: MosquittoBroker) -> Iterator[FleetService]:
    """The service with one box online, its heartbeat, one exam record and one dead letter."""
    box = Box(broker, "box-a")
    box.state(MessageKind.BIRTH, 1)
    wait_for(lambda: service.box("box-a"), 60, "box-a known to the fleet")
    box.send("health", fleet.encode(MessageKind.HEARTBEAT, "box-a", 1, at=time.time(), disk={"used_percent": 97.0},
                                    backlog={"items": 3, "bytes": 9000, "oldest_unacked_age_s": 12.0},
                                    config_version=2, commands={"last_seq": 5, "succeeded": 3, "failed": 1,
                                                                "refused": 1}))
    t0 = time.time() - 4000  # over and stored before now, whatever the time of day
    box.send("util", json.dumps({"v": 1, "box_id": "box-a", "study_key": "ab" * 16, "revision": 1, "modality": "CT",
                                 "start": t0, "end": t0 + 600, "images": 300, "series": 3, "source": "header",
                                 "status": "completed", "first_received_at": t0 + 10, "last_received_at": t0 + 620,
                                 "cloud_stored_at": t0 + 650, "site": "clinic-a"}).encode())
    box.send("health", b'{"v":1,"kind":"heartbeat","box_id":"box-a","bd_seq":1,"disk":"full"}')
    wait_for(lambda: service.counters.exams == 1 and service.store.dead_letters(box_id="box-a"), 60,
             "the exam record stored and the bad heartbeat set aside")
    wait_for(lambda: any(a.kind.value == "disk_full" for a in service.open_alerts()), 60, "the disk alert")
    yield service
    Box.made.remove(box)
    box.link.stop()


def context(svc: FleetService) -> ssl.SSLContext:
    assert svc.tls.ca_file is not None
    return ssl.create_default_context(cafile=str(svc.tls.ca_file))


def request(svc: FleetService, method: str, target: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request; with ``auth`` (and no Authorization or Cookie given) as the test admin's API token."""
    assert svc.http is not None
    headers = dict(headers or {})
    if auth and "Authorization" not in headers and "Cookie" not in headers:
        headers.update(bearer(service_token(svc)))
    conn = http.client.HTTPSConnection("127.0.0.1", svc.http.port, context=context(svc), timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers)
        rsp = conn.getresponse()
        return rsp.status, {k.lower(): v for k, v in rsp.getheaders()}, rsp.read()
    finally:
        conn.close()


def test_every_route_is_described_when_the_openapi_document_is_served(service: FleetService) -> None:
    status, headers, body = request(service, "GET", "/api/v1/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    served = json.loads(body)
    assert served == json.loads(json.dumps(openapi.document(__version__)))
    app = build_app(FleetDocs(service), service.alive, tls=True, auth=service.console_auth)
    assert sorted(served["paths"]) == route_paths(app)
    methods = route_methods(app)
    for path, item in served["paths"].items():
        assert set(item) == methods[path], path
        for operation in item.values():
            assert {"400"} <= set(operation["responses"]), path
            assert operation.get("security") == [] or "401" in operation["responses"], path  # what needs a login


def test_no_answer_is_a_server_error_and_each_matches_its_schema_when_the_api_is_fuzzed(
        populated: FleetService) -> None:
    _fuzz(populated, examples=8)  # every operation; the slow target runs 30 each


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 30 cases for each of the API's operations: 3 to 4 minutes on a busy machine
def test_no_answer_is_a_server_error_and_each_matches_its_schema_when_the_api_is_fuzzed_thoroughly(
        populated: FleetService) -> None:
    _fuzz(populated, examples=30)


def _fuzz(populated: FleetService, examples: int) -> None:
    """Every operation of the OpenAPI document, ``examples`` cases each, valid and invalid (derandomised)."""
    assert populated.http is not None and populated.tls.ca_file is not None
    base = populated.http.url.rstrip("/")
    ca = str(populated.tls.ca_file)
    # An invalid request may be refused for its size (413, 414: the console's Guard) as well as for
    # its values (400): both are rejections of negative data, and both are in the document.
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422"]}}})
    auth = bearer(service_token(populated))  # an admin's API token: every route, POSTs without CSRF
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json", config=config, verify=ca)
    operations = [result.ok() for result in schema.get_all_operations()]
    # every route but the document itself, which schemathesis leaves out when it loads the schema from it
    assert sorted({op.path for op in operations}) == sorted(set(openapi.PATHS) - {"/api/v1/openapi.json"})
    calls: list[int] = []
    for operation in operations:

        @given(case=st.one_of([operation.as_strategy(generation_mode=m) for m in schemathesis.GenerationMode]))
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            # A write's validity also depends on state the schema cannot state (a silence ends after now, an
            # alert id exists, a token's owner is an account): a 400 for a schema-valid POST is no failure.
            excluded = [positive_data_acceptance] if case.method == "POST" else []
            response = case.call_and_validate(base_url=base, verify=ca, timeout=30, headers=auth,
                                              excluded_checks=excluded)
            assert response.status_code < 500, (case.path, case.query, response.text)
            calls.append(response.status_code)

        fuzz()
    assert 200 in calls and 400 in calls  # the fuzzer reached both valid and refused requests
    assert {op.method.upper() for op in operations} == {"GET", "POST"}  # the write routes were fuzzed too
    status, _, body = request(populated, "GET", "/api/v1/boxes/box-a")
    assert status == 200 and json.loads(body)["recent_exams"][0]["images"] == 300
    config = json.loads(body)["config"]  # the heartbeat's remote-command figures reach the box page
    assert config["config_version"] == 2
    assert config["commands"] == {"last_seq": 5, "succeeded": 3, "failed": 1, "refused": 1}


@pytest.mark.parametrize(("method", "target", "body", "status", "reason"), [
    ("POST", "/api/v1/boxes", b"{}", 405, "not allowed"),
    ("DELETE", "/api/v1/alerts", None, 405, "not allowed"),
    ("GET", "/api/v1/boxes", b"x" * 10, 413, "body"),
    ("GET", "/api/v1/alerts?days=" + "9" * 3000, None, 414, "longer than"),
    ("GET", "/api/v1/alerts?days=nan", None, 400, "'days'"),
    ("GET", "/api/v1/alerts?days=0", None, 400, "'days'"),
    ("GET", "/api/v1/alerts?days=%207", None, 400, "'days'"),
    ("GET", "/api/v1/alerts?days=7_0", None, 400, "'days'"),
    ("GET", "/api/v1/alerts?days=1e999", None, 400, "'days'"),
    ("GET", "/api/v1/alerts?days=367", None, 400, "'days'"),
    ("GET", "/api/v1/alerts?all=yes", None, 400, "'all'"),
    ("GET", "/api/v1/alerts?days=1&days=2", None, 400, "twice"),
    ("GET", "/api/v1/alerts?drop=table", None, 400, "unknown"),
    ("GET", "/api/v1/dead-letters?limit=0", None, 400, "'limit'"),
    ("GET", "/api/v1/dead-letters?limit=1e3", None, 400, "'limit'"),
    ("GET", "/api/v1/dead-letters?box=Box_A", None, 400, "box id"),
    ("GET", "/api/v1/dead-letters?box=box-a%0A", None, 400, "box id"),
    ("GET", "/api/v1/utilisation?box=box-a", None, 400, "required"),
    ("GET", "/api/v1/utilisation?box=box-a&modality=ct", None, 400, "'modality'"),
    ("GET", "/api/v1/utilisation?box=box-a&modality=CT&days=1000", None, 400, "'days'"),
    ("GET", "/api/v1/turnaround?days=0.5", None, 400, "'days'"),
    ("GET", "/api/v1/boxes/..%2F..%2Fetc", None, 404, "not found"),
    ("GET", "/api/v1/boxes/BOX", None, 400, "box id"),
    ("GET", "/api/v1/boxes/box-zz", None, 404, "no such box"),
    ("GET", "/../../etc/passwd", None, 404, "not found"),
    ("GET", "/api/v2/boxes", None, 404, "not found"),
])
def test_request_is_refused_with_a_json_reason_when_it_is_hostile(
        service: FleetService, method: str, target: str, body: bytes | None, status: int, reason: str) -> None:
    got, headers, answer = request(service, method, target, body)
    assert got == status, answer
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert reason in json.loads(answer)["error"]
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["content-security-policy"].startswith("default-src 'self';")
    assert service.alive()


def test_head_answers_the_get_headers_without_a_body_when_asked(service: FleetService) -> None:
    for target in ("/", "/app.js", "/metrics", "/api/v1/boxes", "/healthz"):
        status, get_headers, body = request(service, "GET", target)
        head_status, head_headers, head_body = request(service, "HEAD", target)
        assert status == head_status == 200 and body and head_body == b"", target
        assert head_headers["content-type"] == get_headers["content-type"], target
    assert "strict-transport-security" in head_headers


def test_certificate_is_checked_by_name_when_the_client_trusts_the_fleet_ca(service: FleetService) -> None:
    assert service.http is not None
    for name in ("127.0.0.1", "localhost"):  # fleet.tls_hostnames
        with socket.create_connection(("127.0.0.1", service.http.port), 30) as raw, \
                context(service).wrap_socket(raw, server_hostname=name) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", service.http.port), 30) as raw:
        context(service).wrap_socket(raw, server_hostname="console.example.org")
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", service.http.port), 30) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")  # the system's CAs: no
    assert service.ports() == {"https": service.http.port}


def test_operator_certificate_is_served_when_tls_cert_file_is_set(broker: MosquittoBroker, tmp_path: Path) -> None:
    hospital = FleetAuthority(tmp_path / "hospital-ca")  # not the fleet CA: the operator's own
    try:
        key_pem, cert_pem = hospital.issue_with_key("console.hospital", 30, server_hosts=["127.0.0.1"])
    finally:
        hospital.close()
    (tmp_path / "cloud").mkdir()
    blobs.write_atomic(tmp_path / "cloud" / "console.key", key_pem, mode=0o600)  # relative to state_dir
    blobs.write_atomic(tmp_path / "console.pem", cert_pem, mode=0o644)
    svc = start(broker, tmp_path, tls_cert_file=str(tmp_path / "console.pem"), tls_key_file="console.key")
    try:
        assert svc.http is not None and svc.tls.ca_file is None
        trusted = ssl.create_default_context(cafile=str(tmp_path / "hospital-ca" / "ca.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", svc.http.port, context=trusted, timeout=30)
        conn.request("GET", "/healthz")
        assert json.loads(conn.getresponse().read())["version"] == __version__
        conn.close()
        assert not (tmp_path / "cloud" / "pki" / "console.pem").exists()  # the fleet CA issued nothing
    finally:
        svc.stop()


def test_plain_http_is_served_and_warned_about_when_configured_for_loopback(
        broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    svc = start(broker, tmp_path, plain_http=True)
    try:
        assert svc.http is not None and svc.ports() == {"http": svc.http.port}
        conn = http.client.HTTPConnection("127.0.0.1", svc.http.port, timeout=30)
        conn.request("GET", "/healthz")
        rsp = conn.getresponse()
        assert rsp.status == 200 and rsp.getheader("strict-transport-security") is None
        conn.close()
        assert any("plain HTTP" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    finally:
        svc.stop()


@pytest.mark.parametrize(("keys", "reason"), [
    ({"plain_http": True, "http_bind": "0.0.0.0"}, "loopback"),  # noqa: S104 - the refused case
    ({"plain_http": True, "http_bind": "10.1.2.3"}, "loopback"),
    ({"tls_cert_file": "console.pem"}, "go together"),
    ({"plain_http": True, "tls_cert_file": "a.pem", "tls_key_file": "a.key"}, "exclude"),
])
def test_configuration_is_refused_when_the_console_would_be_unprotected_or_half_set(
        keys: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        _check_fleet(FleetSettings(**keys), "fleet.toml")


def test_stop_returns_promptly_when_clients_hold_connections_open(broker: MosquittoBroker, tmp_path: Path) -> None:
    svc = start(broker, tmp_path)
    assert svc.http is not None
    silent = socket.create_connection(("127.0.0.1", svc.http.port), 30)  # never starts its TLS handshake
    kept = http.client.HTTPSConnection("127.0.0.1", svc.http.port, context=context(svc), timeout=30)
    kept.request("GET", "/healthz")  # HTTP/1.1 keep-alive: the connection stays open
    assert kept.getresponse().read()
    stopped = threading.Event()
    began = time.monotonic()
    stopper = threading.Thread(target=lambda: (svc.stop(), stopped.set()))
    stopper.start()
    stopper.join(60)
    try:
        assert stopped.is_set(), "the fleet service's stop hung"
        assert time.monotonic() - began < 30
        assert not svc.http.alive()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", svc.http.port), 5).close()
    finally:
        silent.close()
        kept.close()
