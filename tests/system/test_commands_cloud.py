"""Remote commands end to end with real peers: an operator issues commands through the fleet console's API
(HTTPS, an API token of the operator role), the real fleet service signs and publishes them through
mosquitto with mutual TLS, the provisioned edge (which got the command keys at enrolment) runs them and
reports back; the console shows each state, the bundle downloads (audited) and opens; a command queued
while the edge is down runs when it reconnects; a rollout stops at its first failure."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.cloud import backends
from gateway.config import load_cloud
from gateway.core.access import Role
from gateway.edge import command_keyring
from gateway.loopback import BOX_ID, EDGE_AE, LoopbackDeployment
from gateway.paths import Paths
from tests.console_auth import bearer, deployment_token
from tests.peers import wait_for
from tests.system.test_commands import ECHO_AE, echo_scp  # noqa: F401 - the modality's Verification SCP fixture

Deploy = Callable[..., LoopbackDeployment]


def call(d: LoopbackDeployment, method: str, target: str, role: Role,
         doc: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = bearer(deployment_token(d.fleet_toml, role))
    body = None if doc is None else json.dumps(doc).encode()
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPSConnection("127.0.0.1", d.fleet_port, context=d.console_context(), timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers)
        rsp = conn.getresponse()
        return rsp.status, {k.lower(): v for k, v in rsp.getheaders()}, rsp.read()
    finally:
        conn.close()


def issue(d: LoopbackDeployment, role: Role, kind: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    status, _, raw = call(d, "POST", f"/api/v1/boxes/{BOX_ID}/commands", role, {"kind": kind, "args": args or {}})
    assert status == 200, raw
    return dict(json.loads(raw))


def state(d: LoopbackDeployment, command_id: str) -> str:
    status, _, raw = call(d, "GET", f"/api/v1/commands/{command_id}", Role.VIEWER)
    assert status == 200, raw
    return str(json.loads(raw)["state"])


def finished(d: LoopbackDeployment, command_id: str, timeout_s: float = 120) -> str:
    return wait_for(lambda: (s := state(d, command_id)) in ("succeeded", "failed", "refused", "expired") and s,
                    timeout_s, f"command {command_id[:8]} finished")


def audit_actions(d: LoopbackDeployment) -> list[str]:
    settings = load_cloud([d.fleet_toml])
    store = backends.open_fleet_store(settings, Paths.from_env(settings.cloud.state_dir, base=d.fleet_toml.parent))
    try:
        return [r.action for r in store.auth.audit(limit=1000)]
    finally:
        store.close()


def test_operator_diagnoses_a_box_from_the_console_when_echo_and_bundle_are_issued(
        deploy: Deploy, tmp_path: Path, echo_scp: tuple[int, list[str]]) -> None:  # noqa: F811
    port, echoes = echo_scp
    d = deploy(secure=True, edge_overrides={"commitment": {"modalities": [f"{ECHO_AE}@127.0.0.1:{port}"]}})
    assert command_keyring.load(command_keyring.keyring_path(d.edge_dir)) is not None, "command keys at enrolment"
    wait_for(lambda: json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/commands", Role.VIEWER)[2])["has_key"], 90,
             "the fleet knows the box's inbound key from its birth")
    echo = issue(d, Role.OPERATOR, "echo")
    bundle = issue(d, Role.OPERATOR, "bundle", {"log_lines": 300})
    assert (echo["seq"], bundle["seq"]) == (1, 2)
    assert finished(d, echo["id"]) == "succeeded" and echoes == [EDGE_AE]
    assert finished(d, bundle["id"]) == "succeeded"
    listed = json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/commands", Role.VIEWER)[2])["commands"]
    shown = {c["kind"]: c for c in listed}
    assert shown["echo"]["detail"]["status"] == "0x0000" and shown["echo"]["detail"]["called_ae"] == ECHO_AE
    wait_for(lambda: json.loads(call(d, "GET", f"/api/v1/commands/{bundle['id']}", Role.VIEWER)[2])["bundle"], 60,
             "every part of the bundle stored")
    assert call(d, "GET", f"/api/v1/commands/{bundle['id']}/bundle", Role.VIEWER)[0] == 403
    status, headers, raw = call(d, "GET", f"/api/v1/commands/{bundle['id']}/bundle", Role.OPERATOR)
    assert status == 200 and headers["content-disposition"].endswith('.json"')
    doc = json.loads(raw)
    assert doc["box_id"] == BOX_ID and doc["logs"] and doc["certificate"]["not_after"]
    actions = audit_actions(d)
    assert actions.count("command.issue") == 2 and actions.count("command.bundle_download") == 1

    d.kill_edge()  # offline: the next command waits in the queue
    queued = issue(d, Role.OPERATOR, "echo")
    time_issued = time.time()
    assert state(d, queued["id"]) == "pending"
    d.start_edge()
    assert finished(d, queued["id"]) == "succeeded" and echoes == [EDGE_AE, EDGE_AE]
    assert time.time() - time_issued < 300

    status, _, raw = call(d, "POST", "/api/v1/rollouts", Role.ADMIN, {
        "kind": "update", "args": {"url": "https://updates.invalid/mgw.bundle", "sha256": "d" * 64, "version": "99"},
        "boxes": [BOX_ID]})
    assert status == 200, raw
    rollout = json.loads(raw)
    wait_for(lambda: json.loads(call(d, "GET", f"/api/v1/rollouts/{rollout['id']}", Role.VIEWER)[2])["state"]
             == "stopped", 120, "the rollout stopped at the box that did not update")
    progress = json.loads(call(d, "GET", f"/api/v1/rollouts/{rollout['id']}", Role.VIEWER)[2])
    assert progress["boxes"][0]["state"] in ("failed", "refused") and progress["detail"].startswith(BOX_ID)


def test_demo_deployment_runs_a_command_when_the_loopback_installed_the_command_keys(deploy: Deploy) -> None:
    d = deploy()  # no provisioning: the loopback installs the keys enrolment would give
    assert command_keyring.load(command_keyring.keyring_path(d.edge_dir)) is not None
    wait_for(lambda: json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/commands", Role.VIEWER)[2])["has_key"], 90,
             "the fleet knows the box's inbound key from its birth")
    listed = issue(d, Role.OPERATOR, "quarantine", {"action": "list"})
    assert finished(d, listed["id"]) == "succeeded"  # signed with the key the box trusts, not refused


def test_admin_changes_a_box_configuration_and_the_console_shows_its_version_and_diff_when_it_applied(
        deploy: Deploy) -> None:
    from tests.system.test_commands import _restart_edge_when_it_exits

    d = deploy(secure=True)
    wait_for(lambda: json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/commands", Role.VIEWER)[2])["has_key"], 90,
             "the fleet knows the box's inbound key from its birth")
    status, _, raw = call(d, "POST", f"/api/v1/boxes/{BOX_ID}/commands", Role.OPERATOR,
                          {"kind": "config", "args": {"document": "[health]\nheartbeat_s = 7.0\n"}})
    assert status == 403, raw  # configuration is an admin's
    command = issue(d, Role.ADMIN, "config", {"document": "[health]\nheartbeat_s = 7.0\n"})
    assert command["args"] == {"version": 1}
    _restart_edge_when_it_exits(d, "the edge to restart for version 1")
    assert finished(d, command["id"]) == "succeeded"
    wait_for(lambda: json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/config-versions", Role.VIEWER)[2])
             ["reported"] == 1, 90, "the box reports version 1 in its birth or heartbeat")
    versions = json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/config-versions", Role.VIEWER)[2])["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [(1, "succeeded")]
    diff = json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/config-diff?from=0&to=1", Role.ADMIN)[2])["diff"]
    assert "+heartbeat_s = 7.0" in diff


def test_admin_resends_a_study_by_accession_number_when_the_cloud_archived_it_from_the_box(deploy: Deploy) -> None:
    """The whole path: real images through storescu, archived by the real ingest (their accession numbers kept
    as digests), a resend by accession through the API resolved to the box's study, run by the edge."""
    from pydicom import dcmread

    from gateway.adapters.dicom_scu import storescu
    from tests.peers import dcmtk, real_images
    from tests.system.reconcile import acknowledged_count

    d = deploy(secure=True)
    files = real_images()
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    number = next(str(h.AccessionNumber).strip() for h in headers if str(h.get("AccessionNumber", "")).strip())
    studies = sorted({str(h.StudyInstanceUID) for h in headers if str(h.get("AccessionNumber", "")).strip() == number})
    dcmtk("storescu")
    assert storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files).returncode == 0
    wait_for(lambda: acknowledged_count(d) >= len(files), 120, "every instance archived and acknowledged")
    wait_for(lambda: json.loads(call(d, "GET", f"/api/v1/boxes/{BOX_ID}/commands", Role.VIEWER)[2])["has_key"], 90,
             "the fleet knows the box's inbound key from its birth")
    resend = issue(d, Role.ADMIN, "resend", {"accession": number})
    assert len(resend["commands"]) == len(studies) >= 1, resend
    for command in resend["commands"]:
        assert finished(d, command["id"]) == "succeeded"
        detail = json.loads(call(d, "GET", f"/api/v1/commands/{command['id']}", Role.VIEWER)[2])["detail"]
        assert detail["instances"] >= 1, detail
    status, _, raw = call(d, "POST", f"/api/v1/boxes/{BOX_ID}/commands", Role.ADMIN,
                          {"kind": "resend", "args": {"accession": "ACC-NONE-9"}})
    assert status == 404 and b"has this accession number" in raw, raw
    assert audit_actions(d).count("command.issue") == len(studies) + 1  # the refusal too
    cloud_files = [p for p in d.root.rglob("*.db*") if p.is_file() and "edge" not in p.parts]
    assert cloud_files and not [p for p in cloud_files if number.encode() in p.read_bytes()]
