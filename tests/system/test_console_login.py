"""Logging in to the console as a person does: headless Chromium on login.html over HTTPS (the fleet CA
trusted), a real fleet service on a real mosquitto; the dashboard after a good login, the refusal
after a wrong password, in English and in Chinese."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.fleet.service import FleetService
from gateway.core import fleet
from gateway.core.access import Role
from gateway.core.fleet import MessageKind
from gateway.paths import Paths
from tests.backends import Backend
from tests.cloud.test_fleet import Box
from tests.cloud.test_fleet import settings as cloud_settings
from tests.console_auth import PASSWORD, account, login
from tests.peers import _missing, wait_for
from tests.system.browser import chromium


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[FleetService, MosquittoBroker]]:
    try:
        broker = MosquittoBroker(tmp_path / "broker")
    except Exception as exc:  # noqa: BLE001 - skip or fail with the reason
        _missing(str(exc))
    broker.start()
    svc = FleetService(cloud_settings(broker, Backend("sqlite"), offline_after_s=60.0),
                       Paths(tmp_path, tmp_path / "cloud", tmp_path))
    try:
        svc.start()
        assert svc.link.wait_connected(60)
        yield svc, broker
    finally:
        svc.stop()
        while Box.made:
            Box.made.pop().link.stop()
        broker.stop()


def test_dashboard_is_shown_when_the_operator_logs_in_through_the_login_page(
        console: tuple[FleetService, MosquittoBroker]) -> None:
    svc, broker = console
    assert svc.http is not None and svc.tls.ca_file is not None
    Box(broker, "box-a").send("state", fleet.encode(MessageKind.BIRTH, "box-a", 1, site="clinic-a", version="9.9"))
    wait_for(lambda: svc.box("box-a"), 60, "box-a in the registry")
    account(svc.store, "wang", Role.OPERATOR)
    with chromium(trust=svc.tls.ca_file) as browser:
        browser.get(svc.http.url.rstrip("/") + "/api/v1/boxes")
        assert "authentication required" in browser.find_element(By.TAG_NAME, "body").text  # no data before login
        login(browser, svc.http.url, "wang", PASSWORD)
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '[data-box="box-a"]'), 60,
                 "the box row on the dashboard")
        cookies = {c["name"]: c for c in browser.get_cookies()}
        session = cookies["__Host-mgw_session"]
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
        assert browser.execute_script("return document.cookie") == ""  # no script reads the session
    rows = svc.store.auth.audit(action="login")
    assert (rows[0].actor, rows[0].outcome, rows[0].address) == ("wang", "ok", "127.0.0.1")


def test_refusal_is_shown_when_the_password_is_wrong(console: tuple[FleetService, MosquittoBroker]) -> None:
    svc, _ = console
    assert svc.http is not None and svc.tls.ca_file is not None
    account(svc.store, "wang", Role.VIEWER)
    with chromium(trust=svc.tls.ca_file) as browser:
        login(browser, svc.http.url, "wang", "not the right password", wait_for_app=False)
        error = browser.find_element(By.ID, "login-error")
        wait_for(lambda: error.text == "User name or password not accepted.", 60, "the refusal shown")
        assert browser.current_url.endswith("/login.html")
        assert not any(c["name"] == "__Host-mgw_session" for c in browser.get_cookies())
        browser.find_element(By.ID, "lang").click()
        wait_for(lambda: error.text == "用户名或密码不正确。", 30, "the refusal in Chinese")
        assert browser.find_element(By.ID, "login").text == "登录"
    assert svc.store.auth.audit(action="login")[0].outcome == "refused"


def test_admin_reads_filters_and_exports_the_audit_log_in_the_console_and_a_viewer_cannot(
        console: tuple[FleetService, MosquittoBroker]) -> None:
    svc, _ = console
    assert svc.http is not None and svc.tls.ca_file is not None
    account(svc.store, "li", Role.ADMIN)
    account(svc.store, "zhao", Role.VIEWER)
    base = svc.http.url.rstrip("/")
    with chromium(trust=svc.tls.ca_file) as browser:
        login(browser, base, "zhao", "not the right password", wait_for_app=False)  # a refusal to find later
        wait_for(lambda: browser.find_element(By.ID, "login-error").text, 60, "the refusal")
        login(browser, base, "zhao", PASSWORD)
        wait_for(lambda: "zhao" in browser.find_element(By.ID, "user").text, 60, "the viewer logged in")
        assert not browser.find_element(By.ID, "nav-audit").is_displayed()  # not an admin's: no link
        status = browser.execute_script("return fetch('/api/v1/audit').then((r) => r.status)")
        assert status == 403
        browser.delete_all_cookies()
        login(browser, base, "li", PASSWORD)
        wait_for(lambda: browser.find_element(By.ID, "nav-audit").is_displayed(), 60, "the admin's audit link")
        browser.find_element(By.ID, "nav-audit").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr"), 60, "the audit log")
        browser.find_element(By.ID, "audit-actor").send_keys("zhao")
        browser.find_element(By.ID, "audit-action").send_keys("login")
        browser.find_element(By.CSS_SELECTOR, "#audit-filter button[type=submit]").click()
        def filtered() -> list[str]:  # the rows once the filter applied (the unfiltered list shows zhao's too)
            rows: list[str] = browser.execute_script(  # in one script: the view may be redrawn between two reads
                "const rows = [...document.querySelectorAll('#audit tbody tr')];"
                "return rows.some((r) => r.classList.contains('over')) ? rows.map((r) => r.textContent) : []")
            return rows if rows and all("zhao" in r and "login" in r for r in rows) else []

        rows = wait_for(filtered, 60, "only zhao's logins, the refused one among them")
        assert len(rows) == 2  # one refused, one ok
        csv = browser.execute_script(
            "return fetch(document.getElementById('audit-export').href).then((r) => r.text())")
        assert csv.splitlines()[0].startswith("id,at,actor") and "zhao" in csv and "audit.read" not in csv
        browser.find_element(By.ID, "lang").click()
        wait_for(lambda: browser.execute_script(  # the switch redraws the view: read the title in one script
            "const h = document.querySelector('#view h2'); return h ? h.textContent : ''") == "审计日志", 60, "Chinese")
    assert svc.store.auth.audit(action="audit.export")[0].actor == "li"  # the export itself is audited
