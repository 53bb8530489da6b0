"""The console's fleet overview at 2,000 boxes in a real headless Chromium, over real HTTPS from a
real fleet service (on a real mosquitto). The registry is filled through the service's own
``apply`` with what the simulator's boxes send (``simulator.fleet_snapshot``: births, heartbeats,
deaths), which is what the MQTT path would hand it, without 4,000 broker round trips per test."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.fleet.service import FleetService
from gateway.core import fleet
from gateway.core.access import Role
from gateway.core.fleet import AlertKind, MessageKind
from gateway.paths import Paths
from gateway.simulator import fleet_snapshot, snapshot_sites
from tests.backends import Backend
from tests.cloud.test_fleet import settings as cloud_settings
from tests.console_auth import PASSWORD, account, bearer, login, service_token
from tests.peers import _missing, wait_for
from tests.system.browser import chromium

BOXES = 2000
OPERATOR = "operator-a"
BROKEN = "sim-1234"  # the one box whose disk is full and whose backlog is hours old
OUTAGE = 150  # site-150 loses all ten boxes together


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetService]:
    root = tmp_path_factory.mktemp("console")
    try:
        broker = MosquittoBroker(root / "broker")
    except Exception as exc:  # noqa: BLE001 - skip or fail with the reason
        _missing(str(exc))
    broker.start()
    svc = FleetService(cloud_settings(broker, Backend("sqlite"), offline_after_s=3600.0,
                                      sites=snapshot_sites(BOXES)), Paths(root, root / "cloud", root))
    try:
        svc.start()
        account(svc.store, OPERATOR, Role.OPERATOR)
        now = time.time()
        for message in fleet_snapshot(BOXES, now):
            svc.apply(message)
        svc.apply(heartbeat(BROKEN, now, disk=97.0, backlog_age_s=5 * 3600.0))
        for i in range(OUTAGE * 10, OUTAGE * 10 + 10):  # a site's uplink goes down: its ten boxes at once
            svc.apply(fleet.decode("state", f"sim-{i:04d}", fleet.encode(MessageKind.DEATH, f"sim-{i:04d}", 1)))
        wait_for(lambda: any(a.box_id == BROKEN and a.kind is AlertKind.DISK_FULL for a in svc.open_alerts()), 60,
                 "the broken box's disk alert")
        yield svc
    finally:
        svc.stop()
        broker.stop()


def heartbeat(box_id: str, now: float, disk: float = 40.0, backlog_age_s: float | None = None,
              seq: int = 2) -> fleet.Telemetry:
    site = f"site-{int(box_id[4:]) // 10:03d}"
    body = {"seq": seq, "at": now, "site": site, "version": "1.4.2", "uplink_connected": True,
            "disk": {"free_bytes": 1, "total_bytes": 100, "used_percent": disk},
            "backlog": {"items": 900 if backlog_age_s else 0, "bytes": 9 * 10**8 if backlog_age_s else 0,
                        "oldest_unacked_age_s": backlog_age_s},
            "cert_not_after": now + 200 * 86400, "last_study": {"CT": now - 600}}
    return fleet.decode("health", box_id, fleet.encode(MessageKind.HEARTBEAT, box_id, 1, **body))


def url(svc: FleetService) -> str:
    assert svc.http is not None
    return svc.http.url


def api(svc: FleetService, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    assert svc.tls.ca_file is not None

    headers = {**bearer(service_token(svc)), **(headers or {})}  # an admin's API token
    request = urllib.request.Request(url(svc).rstrip("/") + path, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=30,  # noqa: S310 - loopback
                                    context=ssl.create_default_context(cafile=str(svc.tls.ca_file))) as rsp:
            body = rsp.read()
            return rsp.status, dict(rsp.headers), json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), None


def rows(browser: Any) -> list[Any]:
    return list(browser.find_elements(By.CSS_SELECTOR, "#boxes .vlist > .row[data-box]"))


def ids(browser: Any) -> list[str]:
    """The listed boxes in order, read in one script (rows come and go while a list redraws)."""
    return list(browser.execute_script("""return [...document.querySelectorAll('#boxes .vlist > .row[data-box]')]
        .sort((a, b) => a.offsetTop - b.offsetTop).map((n) => n.dataset.box)"""))


def cells(browser: Any, css: str) -> set[str]:
    """The text of each listed row's cell ``css`` (".c-site", "[data-status]"...), in one script."""
    return set(browser.execute_script(
        "return [...document.querySelectorAll('#boxes .vlist > .row[data-box] ' + arguments[0])]"
        ".map((n) => n.dataset.status || n.textContent)", css))


def text(browser: Any, element_id: str) -> str:
    return str(browser.execute_script("const n = document.getElementById(arguments[0]); return n ? n.textContent : ''",
                                      element_id))


def loaded(browser: Any, svc: FleetService) -> None:
    """The console's overview in ``browser``, logged in as an operator through the login page."""
    login(browser, url(svc), OPERATOR, PASSWORD)
    browser.get(url(svc))
    wait_for(lambda: len(rows(browser)) > 10, 60, "the box list")


def refreshes(browser: Any) -> int:
    return int(browser.execute_script("return Number(document.body.dataset.refreshes || 0)"))


def test_broken_box_is_first_and_search_finds_it_when_2000_boxes_are_listed(console: FleetService) -> None:
    with chromium(trust=console.tls.ca_file) as browser:
        loaded(browser, console)
        total = browser.find_element(By.CSS_SELECTOR, '#counts [data-status="total"] b').text
        assert total == str(BOXES)
        first = browser.find_element(By.CSS_SELECTOR, f'#boxes .row[data-box="{ids(browser)[0]}"]')
        assert "sev-critical" in first.get_attribute("class")  # problems first
        # only the rows in view (and a few beside them) exist, whatever the fleet's size
        assert len(rows(browser)) <= 200
        assert browser.execute_script("return document.getElementsByTagName('*').length") < 5000
        search = browser.find_element(By.ID, "search")
        search.send_keys(BROKEN)
        wait_for(lambda: ids(browser) == [BROKEN], 60, "only the broken box")
        row = rows(browser)[0]
        assert "97%" in row.text and "sev-critical" in row.get_attribute("class")
        # times in the site's zone: site-123 is in Asia/Shanghai (UTC+8), whatever the browser's zone
        shown = row.find_element(By.CSS_SELECTOR, "time").get_attribute("title")
        expected = browser.execute_script(
            "return new Intl.DateTimeFormat('en-GB', {hour: '2-digit', minute: '2-digit', timeZone: 'Asia/Shanghai'})"
            ".format(new Date(Number(arguments[0]) * 1000))",
            row.find_element(By.CSS_SELECTOR, "time").get_attribute("data-at"))
        assert expected in shown and ("GMT+8" in shown or "CST" in shown), shown


def test_filters_and_grouping_narrow_the_list_when_chosen(console: FleetService) -> None:
    with chromium(trust=console.tls.ca_file) as browser:
        loaded(browser, console)
        browser.find_element(By.CSS_SELECTOR, '#counts [data-status="offline"]').click()
        offline = int(browser.find_element(By.CSS_SELECTOR, '#counts [data-status="offline"] b').text)
        assert 0 < offline < BOXES
        wait_for(lambda: cells(browser, "[data-status]") == {"offline"}, 60, "only offline boxes")
        assert text(browser, "matched").startswith(str(offline))
        assert "status=offline" in browser.current_url  # the view is in the address
        browser.get(browser.current_url.replace("status=offline", "status=offline&q=sim-0"))
        browser.refresh()
        wait_for(lambda: cells(browser, "[data-status]") == {"offline"} and all(
            i.startswith("sim-0") for i in ids(browser)), 60, "the view from the address")
        browser.find_element(By.ID, "clear-filters").click()
        wait_for(lambda: text(browser, "matched").startswith(str(BOXES)), 60, "every box again")
        browser.find_element(By.CSS_SELECTOR, '#f-region option[value="Xinjiang"]').click()
        wait_for(lambda: text(browser, "matched").startswith(str(BOXES // 5)), 60, "one region of five")
        assert cells(browser, ".c-region") == {"Xinjiang"}
        browser.find_element(By.CSS_SELECTOR, '#group option[value="site"]').click()
        groups = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#boxes .row.group"), 60, "the site groups")
        assert len(groups) == BOXES // 10 // 5  # Xinjiang's 40 sites of ten boxes
        site = groups[0].get_attribute("data-group")
        groups[0].click()
        wait_for(lambda: cells(browser, ".c-site") == {site}, 60, "the chosen site's boxes")
        assert not browser.find_elements(By.CSS_SELECTOR, "#boxes .row.group")  # the groups gave way to the rows


def test_refresh_keeps_scroll_and_unchanged_rows_when_one_box_changes(console: FleetService) -> None:
    with chromium(trust=console.tls.ca_file) as browser:
        loaded(browser, console)
        browser.find_element(By.CSS_SELECTOR, '#boxes .head [data-sort="box"]').click()  # sorted by box id
        wait_for(lambda: ids(browser)[:1] == ["sim-0000"], 60, "by box id")
        browser.execute_script("document.getElementById('box-scroll').scrollTop = 32 * 1000")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#boxes .row[data-box="sim-1005"]'), 60,
                 "rows around box 1000")
        browser.execute_script("document.querySelectorAll('#boxes .vlist > .row').forEach((n) => { n.mgwMark = 1; })")
        before = refreshes(browser)
        console.apply(heartbeat("sim-1003", time.time(), disk=66.0, seq=5))
        changed = '#boxes .row[data-box="sim-1003"] .c-num:nth-of-type(8)'
        read = "const n = document.querySelector(arguments[0]); return n && n.textContent"
        wait_for(lambda: browser.execute_script(read, changed) == "66%", 60, "the changed row patched")
        wait_for(lambda: refreshes(browser) >= before + 2, 60, "two refreshes")
        assert browser.execute_script("return document.getElementById('box-scroll').scrollTop") == 32 * 1000
        same = browser.execute_script("""return [...document.querySelectorAll('#boxes .vlist > .row')]
            .filter((n) => n.dataset.box !== 'sim-1003').every((n) => n.mgwMark === 1)""")
        assert same, "an unchanged row's element was replaced"


def test_refresh_of_a_quiet_fleet_is_not_modified_when_the_browser_sends_the_etag(console: FleetService) -> None:
    status, headers, page = api(console, "/api/v1/boxes?limit=50")
    assert status == 200 and len(page["rows"]) == 50 and page["total"] == BOXES
    again, _, _ = api(console, "/api/v1/boxes?limit=50", {"If-None-Match": headers["etag"]})
    assert again == 304  # nothing changed: a quiet fleet's refresh carries no document
    status, _, delta = api(console, f"/api/v1/boxes?limit=50&since={page['revision']}")
    assert status == 200 and delta["ids"] == page["ids"] and len(delta["rows"]) < 50


def test_chinese_labels_are_shown_when_the_operator_switches_language(console: FleetService) -> None:
    with chromium(trust=console.tls.ca_file) as browser:
        loaded(browser, console)
        browser.find_element(By.ID, "lang").click()
        wait_for(lambda: "在线" in text(browser, "counts"), 60, "Chinese counts")
        assert text(browser, "title") == "影像网关设备总览"
        wait_for(lambda: "告警" in text(browser, "alerts"), 60, "the alerts panel in Chinese")
        browser.refresh()  # the choice is remembered
        wait_for(lambda: "全部设备" in text(browser, "counts"), 60, "Chinese after a reload")


def test_box_page_charts_hold_data_when_a_box_is_opened(console: FleetService) -> None:
    now = time.time()
    console.store.add_samples([{"box_id": BROKEN, "at": now - 600 * k, "online": 1, "backlog_items": 900 - k,
                                "backlog_bytes": 10**6, "oldest_age_s": 3600.0 + k, "disk_used_percent": 97.0,
                                "cpu_temp_c": 50.0, "reconnects": 0} for k in range(1, 20)])
    with chromium(trust=console.tls.ca_file) as browser:
        login(browser, url(console), OPERATOR, PASSWORD)
        browser.get(f"{url(console)}#/box/{BROKEN}")
        # read in one script: the page redraws its charts as it refreshes (an element found may be replaced)
        points = wait_for(lambda: browser.execute_script(
            "const c = document.getElementById('chart-backlog'); return c ? Number(c.dataset.points) : 0"), 60,
            "the box page's backlog chart")
        assert points >= 19
        config = text(browser, "box-config")
        assert "Asia/Shanghai" in config and "1.4.2" in config  # site-123, region West; its version
        assert "Disk nearly full" in text(browser, "last-errors")


def test_site_outage_is_one_alert_with_its_ten_boxes_beneath_when_a_site_goes_down(console: FleetService) -> None:
    site = f"site-{OUTAGE:03d}"
    wait_for(lambda: any(a.kind is AlertKind.SITE_OFFLINE and a.subject == site for a in console.open_alerts()), 60,
             "the site outage alert")
    with chromium(trust=console.tls.ca_file) as browser:
        loaded(browser, console)
        outage = '#alerts [data-kind="site_offline"]'
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, outage), 60, "the outage in the alerts panel")
        assert len(browser.find_elements(By.CSS_SELECTOR, outage)) == 1
        beneath = browser.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' details li a')].map((a) => a.textContent)", outage)
        assert sorted(beneath) == [f"sim-{i:04d}" for i in range(OUTAGE * 10, OUTAGE * 10 + 10)]
        top = browser.execute_script("return [...document.querySelectorAll('#alerts .alert-list > li')]"
                                     ".map((n) => n.dataset.kind)")
        assert top.count("site_offline") == 1
        rows = browser.execute_script("return [...document.querySelectorAll("
                                      "'#alerts .alert-list > li > .alert-head a')].map((a) => a.textContent)")
        assert rows and not set(beneath) & set(rows)  # its boxes are not alerts of their own


def test_acknowledged_alert_shows_who_and_the_note_when_an_operator_acknowledges_it(console: FleetService) -> None:
    alert = next(a for a in console.open_alerts() if a.box_id == BROKEN and a.kind is AlertKind.DISK_FULL)
    with chromium(trust=console.tls.ca_file) as browser:
        loaded(browser, console)
        item = f'#alerts [data-alert="{alert.id}"]'
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"{item} .ack-btn"), 60, "the alert's button")
        browser.find_element(By.CSS_SELECTOR, f"{item} .ack-btn").click()
        browser.find_element(By.CSS_SELECTOR, f'{item} form.ack input[name="note"]').send_keys("disk swap booked")
        browser.find_element(By.CSS_SELECTOR, f'{item} form.ack button[type="submit"]').click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"{item} [data-acked]"), 60, "acknowledged")
        acked = console.store.alert(alert.id)
        assert acked is not None and acked.acked_by == OPERATOR and acked.ack_note == "disk swap booked"
        (entry,) = console.store.auth.audit(action="alert.ack")  # who, what, from where: in the audit log
        assert (entry.actor, entry.outcome, entry.address) == (OPERATOR, "ok", "127.0.0.1")
        text = browser.find_element(By.CSS_SELECTOR, f"{item} [data-acked]").text
        assert "disk swap booked" in text and "Acknowledged by" in text
        browser.find_element(By.CSS_SELECTOR, '#alert-state option[value="unacked"]').click()
        wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, item), 60, "the acknowledged alert left out")
        browser.find_element(By.CSS_SELECTOR, '#alert-state option[value="acked"]').click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f"{item} [data-acked]"), 60, "only acknowledged ones")
