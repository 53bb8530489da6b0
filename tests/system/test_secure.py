"""Zero-touch path with real peers: fleet CA, enrolment, `mgw provision`, mutual TLS broker, a real study."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.dicom_scu import storescu
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.peers import dcmtk, real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile

Deploy = Callable[..., LoopbackDeployment]


def test_fresh_token_provisions_a_box_that_delivers_a_study_when_the_broker_requires_mutual_tls(
        deploy: Deploy) -> None:
    d = deploy(secure=True)
    device = (d.edge_dir / "device.toml").read_text()
    assert "cert_file" in device and "BEGIN" not in device  # paths to the identity, never key material
    files = [p for p in real_images() if p.name in ("693_UNCI.dcm", "MR2_UNCI.dcm", "SC_rgb.dcm")]
    dcmtk("storescu")
    result = storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        wait_for(lambda: acknowledged_count(d) >= len(files), 120, "cloud acknowledgements over mutual TLS")
    except BaseException:
        print(d.log_tail())
        raise
    assert reconcile(d, files).clean


def test_provision_refused_with_clear_message_when_the_token_is_reused(deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    token = d.create_token("box-two")
    first = _provision(d, token, tmp_path / "two")
    assert first.returncode == 0, first.stderr
    again = _provision(d, token, tmp_path / "three")
    assert again.returncode == 1
    assert "token already used" in again.stderr
    assert not (tmp_path / "three" / "device.toml").exists()


def _provision(d: LoopbackDeployment, token: str, state: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "gateway", "provision", "--url", d.enrol_url, "--ca-fingerprint",
            d.authority.ca_fingerprint, "--token", token, "--state-dir", str(state), "--no-self-test"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)
