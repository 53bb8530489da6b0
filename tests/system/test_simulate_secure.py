"""``mgw simulate`` against the secure broker a real cloud runs (TLS, the fleet's guard): each
simulated box is enrolled through the real enrolment endpoint and connects as itself, so the fleet
registers every one; and whatever goes wrong (no enrolment, an identity the broker refuses, a
publish the broker refuses) ends the run loudly instead of reporting a quiet success."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.adapters.mqtt_link import MqttLink
from gateway.config import load_cloud
from gateway.core import fleet, topics
from gateway.core.errors import LocalError
from gateway.core.fleet import MessageKind
from gateway.loopback import LoopbackDeployment
from gateway.paths import Paths
from gateway.simulator import Simulator, enrol_boxes
from gateway.tomlwrite import render_toml
from tests.peers import wait_for
from tests.system.test_dashboard import api


def _simulate(d: LoopbackDeployment, extra: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "gateway", "simulate", "--config", str(d.fleet_toml), "--config", str(extra), *args],
        capture_output=True, text=True, timeout=300, check=False)


def test_simulated_boxes_are_enrolled_and_registered_when_the_broker_is_secure(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy(secure=True)
    extra = tmp_path / "enrol.toml"  # the enrolment endpoint's port, as it reported it
    extra.write_text(render_toml({"authority": {"enrol_port": d.enrol_port}}))
    run = _simulate(d, extra, "--boxes", "3", "--minutes", "0.1", "--heartbeat-s", "2", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["heartbeats"] >= 3 and report["publish_refused"] == 0 and report["publish_failures"] == 0
    registered = wait_for(lambda: {b["box_id"] for b in api(d, "/api/v1/registry")["boxes"]
                                   if b["box_id"].startswith("sim-") and b["heartbeat_at"] is not None}, 60,
                          "the simulated boxes' heartbeats in the fleet registry")
    assert registered == {"sim-0000", "sim-0001", "sim-0002"}
    again = _simulate(d, extra, "--boxes", "3", "--minutes", "0.05", "--heartbeat-s", "2")
    assert again.returncode == 0, again.stderr
    assert "0 simulated boxes enrolled, 3 identities reused" in again.stderr  # tokens are single-use
    assert "simulated 3 boxes" in again.stdout


def test_simulate_fails_loudly_when_the_enrolment_endpoint_is_unreachable(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy(secure=True)
    extra = tmp_path / "enrol.toml"
    extra.write_text(render_toml({"authority": {"enrol_port": 9}}))  # discard: nothing listens
    run = _simulate(d, extra, "--boxes", "2", "--minutes", "0.05")
    assert run.returncode != 0
    assert "simulated box sim-0000 could not enrol" in run.stderr and "unreachable" in run.stderr


def test_simulator_fails_before_sending_when_the_broker_refuses_an_identity(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy(secure=True)
    settings = load_cloud([d.fleet_toml, _port_file(tmp_path, d)])
    paths = Paths.from_env(settings.cloud.state_dir, base=d.fleet_toml.parent)
    identities = enrol_boxes(settings, paths, 2)
    swapped = {"sim-0000": identities["sim-0001"], "sim-0001": identities["sim-0000"]}  # client id != its CN
    sim = Simulator(settings.mqtt, 2, heartbeat_s=2.0, identities=swapped, connect_timeout_s=4.0)
    with pytest.raises(LocalError, match="2 of 2 simulator connections"):
        sim.run(5.0)
    assert sim.report.births == 0  # nothing was sent


def test_link_counts_a_publish_when_the_broker_refuses_it(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy(secure=True)
    settings = load_cloud([d.fleet_toml, _port_file(tmp_path, d)])
    paths = Paths.from_env(settings.cloud.state_dir, base=d.fleet_toml.parent)
    ident = enrol_boxes(settings, paths, 1)["sim-0000"]


    link = MqttLink(replace(settings.mqtt, cert_file=str(ident.cert_file), key_file=str(ident.key_file)),
                    client_id="sim-0000", subscriptions=[], on_message=lambda m: None, session_expiry_s=0)
    link.start()
    try:
        assert link.wait_connected(60)
        other = topics.telemetry_topic(settings.mqtt.topic_prefix, "sim-0099", "state")  # another box's topic
        assert link.publish(other, fleet.encode(MessageKind.BIRTH, "sim-0099", 1), qos=1)
        wait_for(lambda: link.refused == 1, 30, "the broker's refusal of a publish under another box's id")
        own = topics.telemetry_topic(settings.mqtt.topic_prefix, "sim-0000", "state")
        assert link.publish(own, fleet.encode(MessageKind.BIRTH, "sim-0000", 1), qos=1, retain=True)
        wait_for(lambda: any(b["box_id"] == "sim-0000" for b in api(d, "/api/v1/registry")["boxes"]), 60,
                 "the box's own birth registered")
        assert link.refused == 1
    finally:
        link.stop()


def _port_file(tmp_path: Path, d: LoopbackDeployment) -> Path:
    extra = tmp_path / "enrol.toml"
    extra.write_text(render_toml({"authority": {"enrol_port": d.enrol_port}}))
    return extra
