"""`mgw status` and `mgw doctor` against a real provisioned box: mutual-TLS broker, cloud, edge."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.adapters import dicom_scu
from gateway.appliance.glance import local_time
from gateway.demo import study_files
from gateway.loopback import BOX_ID, EDGE_AE, LoopbackDeployment
from tests.peers import wait_for
from tests.system.reconcile import acknowledged_count

Deploy = Callable[..., LoopbackDeployment]
ZONE = "Asia/Shanghai"


def mgw(d: LoopbackDeployment, *args: str) -> subprocess.CompletedProcess[str]:
    configs = ["--config", str(d.edge_toml), "--config", str(d.edge_dir / "device.toml")]
    return subprocess.run([sys.executable, "-m", "gateway", *args, *configs], capture_output=True, text=True,
                          timeout=60)


def status(d: LoopbackDeployment) -> dict[str, Any]:
    done = mgw(d, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _paths(doc: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in doc.items():
        if prefix == "spool.":
            continue  # per spool state: documented as a whole
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _paths(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out += _paths(value[0], f"{prefix}{key}[].")
    return out


def _undocumented(doc: dict[str, Any]) -> list[str]:
    """Keys of `mgw status --json` its table in docs/operations.md does not name (`a.b`, or `.b` in a
    row that names `a.` first)."""
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    table = guide[guide.index("## mgw status: at a glance"):guide.index("## Logs")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    def named(path: str) -> bool:
        head, _, leaf = path.rpartition(".")
        return any(f"`{path}`" in row or f"`{path}." in row or (head and f"`{head}." in row and f"`.{leaf}`" in row)
                   for row in rows)
    return [p for p in _paths(doc) if not named(p)]


def _new_instance(source: Path, out: Path) -> Path:
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(out)
    return out


def test_status_shows_uplink_certificate_backlog_and_last_study_when_a_provisioned_edge_runs(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True, edge_overrides={"site": {"time_zone": ZONE}})
    files = study_files()
    dicom_scu.send_study("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files)
    wait_for(lambda: acknowledged_count(d) == len(files), 120, "every instance acknowledged")
    modalities = sorted({str(dcmread(f, stop_before_pixels=True).Modality) for f in files})
    def recorded() -> dict[str, Any] | None:
        doc = status(d)
        return doc if [m["modality"] for m in doc["last_studies"]] == modalities else None

    doc = wait_for(recorded, 60, "an exam record per modality")
    assert doc["box_id"] == BOX_ID and doc["time_zone"] == ZONE and doc["service"] == {"running": True}
    up = doc["uplink"]
    assert up["connected"] is True and up["tls"] is True and up["broker"] == f"127.0.0.1:{d.broker.port}"
    assert up["since"] <= doc["at"] and up["since_local"] == local_time(up["since"], ZONE)
    assert up["since_local"].endswith("UTC+08:00")
    cert = doc["certificate"]
    assert cert["error"] is None and cert["subject"] == BOX_ID and 1 < cert["days_left"] < 400, cert
    assert doc["backlog"] == {"items": 0, "bytes": 0, "oldest_received_at": None, "oldest_age_s": None}
    study = {m["modality"]: m for m in doc["last_studies"]}["CT"]
    assert study["at"] <= doc["at"] and study["local"] == local_time(study["at"], ZONE)
    assert doc["quarantine"] == {"items": 0}
    assert 0 < doc["disk"]["used_percent"] <= 100 and doc["disk"]["free_bytes"] > 0
    assert doc["spool"]["acknowledged"]["items"] == len(files)
    assert not _undocumented(doc), f"docs/operations.md (mgw status) lacks {_undocumented(doc)}"

    d.broker.stop()
    down = wait_for(lambda: not (s := status(d))["uplink"]["connected"] and s, 60, "the uplink reported down")
    assert down["uplink"]["since"] >= up["since"]
    fresh = _new_instance(files[0], tmp_path / "new.dcm")
    dicom_scu.send_study("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", [fresh])
    held = wait_for(lambda: (s := status(d))["backlog"]["items"] == 1 and s, 60, "the new instance in the backlog")
    assert held["backlog"]["bytes"] > 0 and held["backlog"]["oldest_received_at"] <= held["at"]
    assert 0 <= held["backlog"]["oldest_age_s"] < 600
    text = mgw(d, "status")
    latest = {m["modality"]: m for m in status(d)["last_studies"]}["CT"]  # the new instance joined the CT study
    assert text.returncode == 0 and "uplink: DOWN since" in text.stdout and "backlog: 1 items" in text.stdout
    assert f"last study CT: {latest['local']}" in text.stdout and "days left" in text.stdout
    chinese = mgw(d, "--lang", "zh", "status")
    assert chinese.returncode == 0 and "上行：断开" in chinese.stdout, chinese.stdout
    assert "待发送：1 项" in chinese.stdout, chinese.stdout

    d.kill_edge()
    stopped = status(d)
    assert stopped["service"] == {"running": False} and stopped["uplink"]["connected"] is False
    assert "service: NOT RUNNING" in mgw(d, "status").stdout
    assert "服务：未运行" in mgw(d, "--lang", "zh", "status").stdout


def test_doctor_passes_when_run_on_the_files_mgw_provision_wrote(deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    done = mgw(d, "doctor", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    checks = {c["key"]: c for c in json.loads(done.stdout)["checks"]}
    assert {"mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"} <= set(checks)
    assert f"'{BOX_ID}'" in checks["mqtt.cert_file"]["detail"] and checks["mqtt.cert_file"]["days_left"] > 1
    assert "the CA pinned by enrolment.ca_fingerprint" in checks["mqtt.ca_file"]["detail"]
    assert checks["mqtt.key_file"]["ok"] and "0600" in checks["mqtt.key_file"]["detail"]


def test_status_leaves_an_older_spool_unmigrated_when_run_before_the_update_hook(tmp_path: Path) -> None:
    from gateway.adapters import keystore
    from gateway.adapters.sqlite_db import SqliteDatabase
    from gateway.adapters.store import MIGRATIONS

    state = tmp_path / "state"
    old = SqliteDatabase(state / "spool.db", "spool database")
    old.migrate(MIGRATIONS[:-1])  # as the previous release left it
    old.close()
    public = keystore.public_b64(keystore.load_or_create_x25519(tmp_path / "cloud.key"))
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[box]\nid = "old-box"\ncloud_public_key = "{public}"\nstate_dir = "{state}"\n')
    done = subprocess.run([sys.executable, "-m", "gateway", "status", "--json", "--config", str(toml)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["service"] == {"running": False} and doc["backlog"]["items"] == 0 and doc["certificate"] is None
    after = SqliteDatabase(state / "spool.db", "spool database", read_only=True)
    try:
        assert after.schema_version() == len(MIGRATIONS) - 1  # the hook's backup comes first
    finally:
        after.close()
