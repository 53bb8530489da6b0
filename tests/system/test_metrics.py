"""Every process of a deployment answers /metrics with its build information and its own series:
the edge, an ingest worker, the fleet service (on its HTTPS console) and the enrolment endpoint,
each a real process on the port it bound and reported (tests/system/conftest.py's ``deploy``)."""

from __future__ import annotations

import os
import platform
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gateway import __version__
from gateway.core.access import Role
from gateway.core.framing import WIRE_VERSION
from gateway.loopback import LoopbackDeployment
from tests.console_auth import bearer, deployment_token
from tests.peers import wait_for

Deploy = Callable[..., LoopbackDeployment]


def scrape(url: str, context: ssl.SSLContext | None = None, token: str = "") -> str:
    request = urllib.request.Request(url, headers=bearer(token) if token else {})
    with urllib.request.urlopen(request, timeout=10, context=context) as rsp:  # noqa: S310 - our own endpoints
        assert rsp.headers["Content-Type"].startswith("text/plain")
        return str(rsp.read().decode())


def build_info(text: str) -> dict[str, str]:
    """The labels of the one ``mgw_build_info`` sample (its value must be 1)."""
    (line,) = [ln for ln in text.splitlines() if ln.startswith("mgw_build_info{")]
    labels, value = line[len("mgw_build_info{"):].rsplit("} ", 1)
    assert float(value) == 1.0
    return dict(pair.split("=", 1) for pair in labels.replace('"', "").split(","))


def leading(text: str) -> str | None:
    return text if "\nmgw_fleet_leader 1.0" in text else None


def test_every_process_answers_metrics_with_build_info_and_its_own_series_when_a_deployment_runs(
        deploy: Deploy) -> None:
    d = deploy(secure=True)
    enrol_metrics = d.reported_port("enrolment", "metrics")
    assert enrol_metrics not in (0, d.enrol_port)  # its own listener, on the port it bound and reported
    found = {
        "edge": scrape(f"http://127.0.0.1:{d.edge_metrics_port}/metrics"),
        "ingest": scrape(f"http://127.0.0.1:{d.ingest_metrics_port()}/metrics"),
        "fleet": wait_for(lambda: leading(scrape(f"https://127.0.0.1:{d.fleet_port}/metrics", d.console_context(),
                                                      deployment_token(d.fleet_toml, Role.VIEWER))),
                          60, "the fleet service to take the lease"),
        "enrolment": scrape(f"http://127.0.0.1:{enrol_metrics}/metrics"),
    }
    for component, text in found.items():
        info = build_info(text)
        assert (info["component"], info["version"], info["python"], info["wire"]) == (
            component, __version__, platform.python_version(), str(WIRE_VERSION)), component
        assert info["commit"]  # the build's commit, or "unknown" in a checkout
    assert "mgw_edge_backlog_items{" in found["edge"]
    for series in ("mgw_ingest_staged_transfers{", "mgw_ingest_staged_chunks{", "mgw_ingest_dead_letters_total{",
                   "mgw_ingest_uplink_connected{"):
        assert series in found["ingest"], series
    assert "mgw_fleet_boxes{" in found["fleet"]
    assert 'mgw_enrolment_certificates_issued_total{kind="enrol"} 1.0' in found["enrolment"]  # the box provisioned
    assert 'mgw_enrolment_requests_total{endpoint="simpleenroll",status="200"} 1.0' in found["enrolment"]


def status_of(url: str, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as rsp:  # noqa: S310
            return int(rsp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_cloud_metrics_answer_only_with_the_bearer_token_when_token_files_are_configured(
        deploy: Deploy, tmp_path: Path) -> None:
    token = os.urandom(24).hex()
    token_file = tmp_path / "metrics.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    d = deploy(secure=True, cloud_overrides={"ingest": {"metrics_token_file": str(token_file)},
                                             "authority": {"enrol_metrics_token_file": str(token_file)}})
    for url in (f"http://127.0.0.1:{d.ingest_metrics_port()}/metrics",
                f"http://127.0.0.1:{d.reported_port('enrolment', 'metrics')}/metrics"):
        assert (status_of(url, None), status_of(url, token[:-1]), status_of(url, token)) == (401, 401, 200), url
