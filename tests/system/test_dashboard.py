"""The fleet view end to end, as a new user would see it: a real deployment (mosquitto, cloud
ingest, cloud fleet, edge), a real study from DCMTK storescu, the dashboard in a real headless
Chromium; then the box is killed and turns offline."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from selenium.webdriver.common.by import By

from gateway.adapters import dicom_scu
from gateway.demo import study_files
from gateway.loopback import BOX_ID, EDGE_AE, LoopbackDeployment
from tests.console_auth import bearer, deployment_account, deployment_token, login
from tests.peers import wait_for
from tests.system.browser import chromium
from tests.system.reconcile import acknowledged_count


def api(d: LoopbackDeployment, path: str) -> Any:
    request = urllib.request.Request(d.dashboard_url.rstrip("/") + path,
                                     headers=bearer(deployment_token(d.fleet_toml)))  # an admin's API token
    with urllib.request.urlopen(request, timeout=10,  # noqa: S310 - loopback
                                context=d.console_context()) as rsp:  # HTTPS, the fleet CA trusted
        return json.loads(rsp.read())


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as rsp:  # noqa: S310 - loopback
            return rsp.read().decode()
    except OSError:
        return ""


def box(d: LoopbackDeployment) -> dict[str, Any] | None:
    try:
        return next((b for b in api(d, "/api/v1/registry")["boxes"] if b["box_id"] == BOX_ID), None)
    except OSError:
        return None


def test_dashboard_shows_the_box_its_turnaround_and_utilisation_when_a_study_was_sent(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy(secure=True)  # as the demo runs: mutual TLS and per-box ACLs, a provisioned box
    files = study_files()
    dicom_scu.send_study("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files)
    online = wait_for(lambda: (b := box(d)) and b["online"] and b, 60, "the demo box online in the fleet API")
    assert online["site"] == "loopback-site" and online["cert_not_after"] > online["last_seen"] + 86400
    sites = wait_for(lambda: api(d, "/api/v1/turnaround")["sites"], 120, "the study's turnaround")
    assert sites[0]["site"] == "loopback-site" and 0 <= sites[0]["p95_s"] < 60
    def modalities() -> dict[str, Any]:
        return {m["modality"]: m for m in api(d, "/api/v1/modalities")["modalities"]}

    wait_for(lambda: sum(m["images"] for m in modalities().values()) == len(files), 60, "every image counted")
    assert "CT" in modalities()
    # No patient data leaves the box: no study UID in what the fleet stored, nor in any log.
    uids = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID).encode() for f in files}
    stored = b"".join(p.read_bytes() for p in (d.cloud_dir).glob("fleet.db*"))
    logs = b"".join(p.read_bytes() for p in d.root.glob("*.log"))
    assert stored and not [u for u in uids if u in stored or u in logs]
    # One study's turnaround is there once that study is acknowledged; the others may still travel.
    wait_for(lambda: acknowledged_count(d) == len(files), 120, "every instance acknowledged")
    metrics = wait_for(lambda: fetch(f"http://127.0.0.1:{d.edge_metrics_port}/metrics"), 30, "the edge /metrics")
    assert f'mgw_edge_backlog_items{{box_id="{BOX_ID}"}} 0.0' in metrics
    assert "mgw_edge_last_study_timestamp_seconds" in metrics

    with chromium(trust=d.console_ca_file) as browser:
        login(browser, d.dashboard_url, "ops", deployment_account(d.fleet_toml, "ops"))
        browser.get(d.dashboard_url)
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#boxes .row[data-box="{BOX_ID}"]'), 60, "the box row")
        status = browser.find_element(By.CSS_SELECTOR, f'#boxes .row[data-box="{BOX_ID}"] [data-status]')
        assert status.get_attribute("data-status") == "online"
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        browser.get(f"{d.dashboard_url}#/utilisation")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#turnaround tr[data-site="loopback-site"]'), 60,
                 "the site's turnaround")

        browser.get(f"{d.dashboard_url}#/utilisation/{BOX_ID}/CT")
        rows = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#utilisation tbody tr"), 60, "utilisation rows")
        assert int(rows[0].find_elements(By.TAG_NAME, "td")[1].text) >= 1  # today's CT exam
        assert browser.find_elements(By.CSS_SELECTOR, "canvas")
        browser.save_screenshot(str(tmp_path / "utilisation.png"))

        d.kill_edge()  # SIGKILL: the broker publishes the box's last will
        browser.get(f"{d.dashboard_url}#/box/{BOX_ID}")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#box-status[data-status="offline"]'), 60,
                 "the killed box shown offline")
        browser.save_screenshot(str(tmp_path / "box-offline.png"))
    wait_for(lambda: "box_offline" in box(d)["alerts"], 60, "the offline alert")
    seq_before = box(d)["bd_seq"]
    d.start_edge()  # a restarted box is born again with a higher bd_seq, and its alert clears
    wait_for(lambda: (b := box(d))["online"] and not b["alerts"], 120, "the restarted box online, alert cleared")
    assert box(d)["bd_seq"] > seq_before
    cleared = [a for a in api(d, "/api/v1/alerts?all=1")["alerts"] if a["kind"] == "box_offline"]
    assert cleared and cleared[0]["cleared_at"] >= cleared[0]["raised_at"]


def test_chinese_labels_are_shown_when_the_operator_switches_language(
        deploy: Callable[..., LoopbackDeployment]) -> None:
    d = deploy()
    wait_for(lambda: (b := box(d)) and b["online"], 60, "the demo box online")
    with chromium(trust=d.console_ca_file) as browser:
        login(browser, d.dashboard_url, "ops", deployment_account(d.fleet_toml, "ops"))
        browser.get(d.dashboard_url)
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#boxes .row[data-box="{BOX_ID}"]'), 60, "the box row")
        browser.find_element(By.ID, "lang").click()

        def boxes_text() -> str:  # read in one script: the list is redrawn in the new language meanwhile
            return str(browser.execute_script("const n = document.getElementById('boxes'); "
                                              "return n ? n.innerText : ''"))

        wait_for(lambda: "在线" in boxes_text() and "站点" in boxes_text(), 30, "Chinese status label and column heads")
        assert browser.find_element(By.CSS_SELECTOR, "header h1").text == "影像网关设备总览"


def test_sort_order_survives_the_refresh_when_the_operator_sorts_a_column(
        deploy: Callable[..., LoopbackDeployment]) -> None:
    d = deploy()
    wait_for(lambda: (b := box(d)) and b["online"], 60, "the demo box online")
    with chromium(trust=d.console_ca_file) as browser:
        login(browser, d.dashboard_url, "ops", deployment_account(d.fleet_toml, "ops"))
        browser.get(d.dashboard_url)
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#boxes .row[data-box="{BOX_ID}"]'), 60, "the box row")
        head = '#boxes .head [data-sort="box"]'
        browser.find_element(By.CSS_SELECTOR, head).click()  # "Box": sorted by the server
        done = int(browser.execute_script("return Number(document.body.dataset.refreshes)"))
        wait_for(lambda: int(browser.execute_script("return Number(document.body.dataset.refreshes)")) > done, 60,
                 "the 5 s refresh")
        assert "sorted" in browser.find_element(By.CSS_SELECTOR, head).get_attribute("class")


def test_cleanly_stopped_box_is_offline_at_once_when_it_disconnects_with_its_will(
        deploy: Callable[..., LoopbackDeployment]) -> None:
    d = deploy()
    wait_for(lambda: (b := box(d)) and b["online"], 60, "the demo box online")
    assert d.edge is not None
    d.edge.send_signal(signal.SIGTERM)  # MQTT 5 DISCONNECT 0x04: the broker publishes the death now
    assert d.edge.wait(15) == 0
    # within fleet.offline_after_s (10 s here), and CAUSE=death: the death, not the time-out, turned it offline
    wait_for(lambda: not box(d)["online"], 8, "the stopped box offline")
    assert "CAUSE=death" in (d.root / "fleet.log").read_text()
