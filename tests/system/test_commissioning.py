"""`mgw commission` as a real process on a provisioned box (fleet CA, mutual-TLS broker with the guard,
a real edge, DCMTK as the modality): PASSED only with the manual step attested, INCOMPLETE
without; the signed report reaches the fleet, verifies, and is stored; an unreachable cloud keeps
it for `--upload-pending`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.loopback import LoopbackDeployment
from tests.peers import closed_port, dcmtk_storescp

Deploy = Callable[..., LoopbackDeployment]
WHO = ["--engineer", "Li Wei 李伟", "--modality-make", "Acme", "--modality-model", "Helix 64"]


def _mgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _stored(d: LoopbackDeployment) -> list[dict[str, object]]:
    [db] = list(d.cloud_dir.rglob("fleet.db"))
    store = SqliteFleetStore(db)
    try:
        return store.commissions.list(box_id="demo-box")
    finally:
        store.close()


def test_commission_passes_signs_and_uploads_only_when_the_manual_echo_is_attested(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    configs = ["--config", str(d.edge_toml), "--config", str(d.edge_dir / "device.toml")]
    with dcmtk_storescp(tmp_path / "modality", ae_title="CT_SCANNER") as modality_port:
        modality = ["--modality-host", "127.0.0.1", "--modality-port", str(modality_port),
                    "--modality-ae", "CT_SCANNER"]
        open_ = _mgw("commission", *configs, *WHO, *modality, "--report-dir", str(tmp_path / "r1"), "--json")
        done = _mgw("commission", *configs, *WHO, *modality, "--confirm", "modality-echo",
                    "--report-dir", str(tmp_path / "r2"), "--json")
    assert open_.returncode == 1, open_.stdout + open_.stderr
    assert json.loads(open_.stdout)["result"] == "INCOMPLETE"
    assert "not attested" in open_.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    outcomes = {c["name"]: c["outcome"] for c in report["checks"]}
    assert outcomes == {"configuration": "ok", "certificate": "ok", "clock skew": "ok", "broker (mutual TLS)": "ok",
                        "C-ECHO to the modality": "ok", "C-ECHO to this box": "ok",
                        "C-ECHO from the modality console": "confirmed", "test object end to end": "ok"}
    assert report["result"] == "PASSED" and all(c["started_at"] >= report["started_at"] for c in report["checks"])
    assert "[3/8] clock skew" in done.stderr
    text = next((tmp_path / "r2").glob("commission-demo-box-*.txt")).read_text()
    assert "RESULT: PASSED" in text and "结果: 通过" in text and "Li Wei 李伟" in text and "Helix 64" in text
    # both runs were signed and uploaded; the fleet verified and stored them, and acknowledged
    assert done.stderr.count("UPLOADED: the cloud verified and stored report") == 1, done.stderr
    stored = {r["report_id"]: r for r in _stored(d)}
    assert stored[report["report_id"]]["result"] == "PASSED"
    assert stored[json.loads(open_.stdout)["report_id"]]["result"] == "INCOMPLETE"
    assert (d.edge_dir / "commissioning" / f"{report['report_id']}.acked").exists()


def test_commission_keeps_the_signed_report_and_uploads_it_later_when_the_cloud_is_unreachable(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    device = d.edge_dir / "device.toml"
    configs = ["--config", str(d.edge_toml), "--config", str(device)]
    with closed_port() as dead:
        offline = tmp_path / "offline.toml"  # the same box, its broker unreachable
        offline.write_text(f"[mqtt]\nport = {dead}\n")
        ran = _mgw("commission", *configs, "--config", str(offline), *WHO, "--confirm", "modality-echo",
                   "--timeout", "5", "--ack-timeout", "5", "--report-dir", str(tmp_path / "r"))
    assert "NOT UPLOADED" in ran.stderr and "--upload-pending" in ran.stderr, ran.stderr
    kept = list((d.edge_dir / "commissioning").glob("*.json"))
    assert len(kept) == 1 and not _stored(d)
    later = _mgw("commission", *configs, "--upload-pending")
    assert later.returncode == 0, later.stdout + later.stderr
    assert "UPLOADED: the cloud verified and stored report" in later.stderr
    assert [r["report_id"] for r in _stored(d)] == [kept[0].stem]
