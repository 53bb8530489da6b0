"""`mgw commission` as a real process on a provisioned box (fleet CA, mutual-TLS broker with the guard,
a real edge, DCMTK as the modality): PASSED only with the manual step attested, INCOMPLETE
without; the signed report reaches the fleet, verifies, and is stored; an unreachable cloud keeps
it for `--upload-pending`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import config
from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud import backends
from gateway.core.access import Role
from gateway.loopback import LoopbackDeployment
from gateway.paths import Paths
from tests.console_auth import bearer, deployment_account, login, token
from tests.peers import _missing, closed_port, dcmtk_storescp, wait_for

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
    assert "RESULT: PASSED" in text and "Li Wei 李伟" in text and "Helix 64" in text
    # both runs were signed and uploaded; the fleet verified and stored them, and acknowledged
    assert done.stderr.count("UPLOADED: the cloud verified and stored report") == 1, done.stderr
    stored = {r["report_id"]: r for r in _stored(d)}
    assert stored[report["report_id"]]["result"] == "PASSED"
    assert stored[json.loads(open_.stdout)["report_id"]]["result"] == "INCOMPLETE"
    assert (d.edge_dir / "commissioning" / f"{report['report_id']}.acked").exists()
    _console_shows_the_report(d, report["report_id"], tmp_path)
    asked = _at_a_terminal(["commission", *configs, *WHO, "--no-upload", "--report-dir", str(tmp_path / "r3")], "y\n")
    assert asked.returncode == 0 and "RESULT: PASSED" in asked.stdout, asked.stdout + asked.stderr
    assert "[y/N]" in asked.stderr and "(answered yes)" in asked.stdout


def _at_a_terminal(args: list[str], answers: str) -> subprocess.CompletedProcess[str]:
    """``mgw`` with its stdin a terminal (a pseudo-terminal whose input holds ``answers``)."""
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        os.write(leader, answers.encode())
        return subprocess.run([sys.executable, "-m", "gateway", *args], stdin=follower, capture_output=True,
                              text=True, timeout=300)
    finally:
        os.close(follower)
        os.close(leader)


def _viewer_token(d: LoopbackDeployment, name: str, sites: frozenset[str]) -> str:
    settings = config.load_cloud([d.fleet_toml])
    store = backends.open_fleet_store(settings, Paths.from_env(settings.cloud.state_dir, base=d.fleet_toml.parent))
    try:
        return token(store, name, Role.VIEWER, sites)
    finally:
        store.close()


def _get(d: LoopbackDeployment, path: str, secret: str) -> tuple[int, bytes, str]:
    request = urllib.request.Request(d.dashboard_url.rstrip("/") + path, headers=bearer(secret))
    try:
        with urllib.request.urlopen(request, timeout=30, context=d.console_context()) as rsp:  # noqa: S310
            return rsp.status, rsp.read(), rsp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    if shutil.which("pdftotext") is None:
        _missing("pdftotext not installed (apt-get install poppler-utils)")
    (tmp_path / "report.pdf").write_bytes(pdf)
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(tmp_path / "report.pdf"), "-"], capture_output=True,
                          text=True, timeout=60, check=True).stdout


def _console_shows_the_report(d: LoopbackDeployment, report_id: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from tests.system.browser import chromium

    viewer = _viewer_token(d, "site-viewer", frozenset({"loopback-site"}))
    stranger = _viewer_token(d, "other-viewer", frozenset({"another-site"}))
    status, body, _ = _get(d, "/api/v1/boxes/demo-box/commissioning", viewer)
    assert status == 200 and report_id in [r["report_id"] for r in json.loads(body)["reports"]]
    status, body, _ = _get(d, "/api/v1/boxes/demo-box/commissioning", stranger)
    assert status == 200 and json.loads(body)["reports"] == []  # another site's viewer sees none
    assert _get(d, f"/api/v1/commissioning/{report_id}", stranger)[0] == 404
    status, body, kind = _get(d, f"/api/v1/commissioning/{report_id}/pdf?lang=zh-CN", viewer)
    assert status == 200 and kind == "application/pdf" and body.startswith(b"%PDF-")
    text = _pdf_text(body, tmp_path)
    assert "调试报告" in text and "demo-box" in text and "Li Wei 李伟" in text and "通过" in text
    assert "Commissioning report" in _pdf_text(_get(d, f"/api/v1/commissioning/{report_id}/pdf", viewer)[1],
                                               tmp_path)
    password = deployment_account(d.fleet_toml, "site-reader", Role.VIEWER, frozenset({"loopback-site"}))
    with chromium(trust=d.console_ca_file) as browser:
        login(browser, d.dashboard_url, "site-reader", password)
        browser.get(d.dashboard_url + "#/box/demo-box")
        row = f'#commissioning tr[data-report="{report_id}"] a'
        wait_for(lambda: _click(browser, row), 60, "the report's link on the box page")  # the page refreshes
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#commissioning-report[data-result="PASSED"]'), 60,
                 "the report page")
        page: Any = wait_for(lambda: _text(browser, "commissioning-report"), 60, "the report's text")
        assert "Commissioning report" in page and "Li Wei 李伟" in page and "Helix 64" in page and "CT_SCANNER" in page
        assert "attested by the engineer" in page and "Result: PASSED" in page
        browser.find_element(By.ID, "lang").click()
        page = wait_for(lambda: "调试报告" in (x := _text(browser, "commissioning-report")) and x, 60,
                        "the report in Chinese")
        assert "工程师已确认" in page and "结果: 通过" in page
        tz = json.loads(_get(d, f"/api/v1/commissioning/{report_id}", viewer)[1])["tz"]
        assert not tz or tz in page  # times in the site's zone, which the page names
        (tmp_path / "report-zh.png").write_bytes(browser.get_screenshot_as_png())


def _click(browser: Any, selector: str) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        found = browser.find_elements(By.CSS_SELECTOR, selector)
        if found:
            found[0].click()
        return bool(found)
    except StaleElementReferenceException:
        return False  # re-rendered under us: look again


def _text(browser: Any, element_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(browser.find_element(By.ID, element_id).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


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


def test_forged_reports_published_by_the_box_are_dead_lettered_and_never_stored_when_they_do_not_verify(
        deploy: Deploy, tmp_path: Path) -> None:
    import base64
    import threading

    from gateway.adapters import blobs
    from gateway.adapters.keystore import FileKeyStore
    from gateway.adapters.mqtt_link import MqttLink
    from gateway.core import schema, topics
    from gateway.edge import commission_report

    d = deploy(secure=True)
    configs = ["--config", str(d.edge_toml), "--config", str(d.edge_dir / "device.toml")]
    made = _mgw("commission", *configs, *WHO, "--no-upload", "--timeout", "5", "--report-dir", str(tmp_path / "r"))
    assert "signed report saved" in made.stderr, made.stderr
    [genuine_file] = list((d.edge_dir / "commissioning").glob("*.json"))
    genuine = json.loads(genuine_file.read_bytes())
    document = schema.parse(schema.CommissioningReport, base64.b64decode(genuine["report"]), "report")
    altered = dict(genuine, report=base64.b64encode(
        base64.b64decode(genuine["report"]).replace(b"Helix 64", b"Helix 99")).decode())
    key_pem, cert_pem = d.authority.issue_with_key("other-box", 30)  # a genuine certificate of another box
    other = FileKeyStore(tmp_path / "other-keys")
    other.directory.mkdir(mode=0o700)
    blobs.write_atomic(other.path("box"), key_pem, mode=0o600)
    forged = [json.dumps(altered).encode(), commission_report.sign(document, other, cert_pem.decode()),
              b'{"v": 1, "report": "not base64!"}']
    settings = config.load_edge([d.edge_toml, d.edge_dir / "device.toml"])
    up = threading.Event()
    box = MqttLink(settings.mqtt, "demo-box:selftest", subscriptions=[], on_message=lambda m: None,
                   on_state=lambda ok: up.set() if ok else None, session_expiry_s=0)
    box.start()
    try:
        wait_for(up.is_set, 60, "the box connected as demo-box:selftest")
        for payload in forged:
            assert box.publish(topics.commission_topic("mgw/v1", "demo-box"), payload, qos=1)
    finally:
        box.stop()

    def dead_letters() -> list[Any]:
        [db] = list(d.cloud_dir.rglob("fleet.db"))
        store = SqliteFleetStore(db)
        try:
            return [x for x in store.dead_letters(box_id="demo-box") if x.topic.endswith("/commission")]
        finally:
            store.close()

    letters = wait_for(lambda: (x := dead_letters()) and sum(y.messages for y in x) >= 3 and x, 60,
                       "the forged reports dead-lettered")
    reasons = " ".join(x.detail for x in letters)
    assert "signature does not verify" in reasons or "not box demo-box's" in reasons, reasons
    assert _stored(d) == []  # none stored; the genuine one is still only on the box
    later = _mgw("commission", *configs, "--upload-pending")  # the fleet's loop went on
    assert later.returncode == 0, later.stderr
    assert [r["report_id"] for r in _stored(d)] == [document.report_id]
