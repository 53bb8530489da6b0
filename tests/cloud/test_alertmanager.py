"""The notification path for real: Debian's Prometheus scrapes a /metrics served by the
project's own exposition (gateway/adapters/metrics_http.py), evaluates the rules shipped in
deploy/prometheus/, and sends its alerts to Debian's Alertmanager running the configuration
shipped in deploy/alertmanager/, which delivers to a webhook receiver this test runs on
loopback. Only timings are shortened (``for:`` and the grouping waits) in the copies the peers run."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.metrics_http import MetricsServer, Sample
from tests.peers import _prometheus_tool, alertmanager, prometheus, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
RULES = DEPLOY / "prometheus" / "mgw.rules.yml"
WAIT_S = 180.0  # two peers' start, scrapes, evaluations and grouping on a loaded machine


class Webhook:
    """A webhook receiver on loopback: records every notification Alertmanager posts."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def notifications(self, receiver: str, site: str, status: str) -> list[dict[str, Any]]:
        return [doc for path, doc in list(self.received) if path == f"/alerts/{receiver}"
                and doc["groupLabels"].get("site") == site and doc["status"] == status]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def test_shipped_alertmanager_config_is_valid_when_amtool_checks_it() -> None:
    amtool = _prometheus_tool(("amtool",), "prometheus-alertmanager")
    check = subprocess.run([amtool, "check-config", str(CONFIG)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr


def _alertmanager_config(tmp_path: Path, webhook_port: int) -> Path:
    text = CONFIG.read_text()
    assert "127.0.0.1:9095" in text
    text = text.replace("127.0.0.1:9095", f"127.0.0.1:{webhook_port}")
    text = re.sub(r"group_wait: \w+", "group_wait: 3s", text)
    text = re.sub(r"group_interval: \w+", "group_interval: 1s", text)
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    return path


def _prometheus_config(tmp_path: Path, metrics_port: int, alertmanager_port: int) -> Path:
    rules = tmp_path / "mgw.rules.yml"
    rules.write_text(re.sub(r"for: \w+", "for: 0s", RULES.read_text()))
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        # a scrape may take up to 2 s on a loaded machine: a failed one would make the series stale,
        # resolve every alert at once and fire them again at the next scrape
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": "mgw-fleet", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    return config


def test_site_outage_is_one_notification_with_box_alerts_inhibited_and_then_resolved_when_run_for_real(
        tmp_path: Path, webhook: Webhook) -> None:
    up = {"a": ("clinic", 1), "b": ("clinic", 1), "c": ("clinic", 1), "d": ("clinic", 1), "x": ("other", 1),
          "y": ("other", 1)}
    lock = threading.Lock()

    def samples() -> list[Sample]:
        with lock:
            return [Sample("mgw_fleet_box_up", "1 while the box is online", value, {"box_id": box, "site": site})
                    for box, (site, value) in sorted(up.items())]

    def set_up(value: int, *boxes: str) -> None:
        with lock:
            for box in boxes:
                up[box] = (up[box][0], value)

    metrics = MetricsServer("127.0.0.1", 0, samples)
    metrics.start()
    assert metrics.port is not None
    try:
        with alertmanager(_alertmanager_config(tmp_path, webhook.port), tmp_path / "am") as am_port, \
                prometheus(_prometheus_config(tmp_path, metrics.port, am_port), tmp_path / "prom"):
            set_up(0, "a", "b", "c", "x")  # clinic's uplink fails (three of four boxes); one box at other
            firing = wait_for(lambda: webhook.notifications("oncall", "clinic", "firing"), WAIT_S,
                              "the site outage notified")
            other = wait_for(lambda: webhook.notifications("oncall", "other", "firing"), WAIT_S,
                             "the single box notified")
            assert [a["labels"]["alertname"] for a in firing[0]["alerts"]] == ["MgwSiteOffline"]
            assert firing[0]["alerts"][0]["annotations"]["summary"] == "site clinic: 3 boxes offline"
            assert [(a["labels"]["alertname"], a["labels"]["box_id"]) for a in other[0]["alerts"]] == [
                ("MgwBoxOffline", "x")]
            set_up(1, "a", "b", "c", "x")
            resolved = wait_for(lambda: webhook.notifications("oncall", "clinic", "resolved"), WAIT_S,
                                "the site outage resolved")
            # the resolved notification closes the whole group: the site alert and the box alerts it
            # had inhibited (Alertmanager lists a group's resolved alerts, notified or not)
            assert {a["status"] for a in resolved[0]["alerts"]} == {"resolved"}
            assert {(a["labels"]["alertname"], a["labels"].get("box_id", "")) for a in resolved[0]["alerts"]} == {
                ("MgwSiteOffline", ""), ("MgwBoxOffline", "a"), ("MgwBoxOffline", "b"), ("MgwBoxOffline", "c")}
            # never a firing notification of clinic's box alerts: the site alert inhibited them throughout
            for path, doc in webhook.received:
                if doc["groupLabels"].get("site") == "clinic" and doc["status"] == "firing":
                    assert {a["labels"]["alertname"] for a in doc["alerts"] if a["status"] == "firing"} == {
                        "MgwSiteOffline"}, (path, doc)
    finally:
        metrics.stop()
