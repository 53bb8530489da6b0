"""The console's archived-versions page as an operator uses it: headless Chromium over HTTPS, a real fleet
service on a real mosquitto, and an archive index holding two versions of an instance."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.by import By

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.archive.store import Archive
from gateway.cloud.fleet.service import FleetService
from gateway.core import fleet
from gateway.core.access import Role
from gateway.core.fleet import MessageKind
from tests.cloud.test_archive_versions import SOP, T0, _identity
from tests.cloud.test_fleet import Box
from tests.console_auth import PASSWORD, account, login
from tests.peers import wait_for
from tests.system.browser import chromium
from tests.system.test_console_login import console  # noqa: F401 - the fixture

ROWS = "return [...document.querySelectorAll('#versions tbody tr')].map((r) => r.textContent)"


def test_operator_sees_which_version_is_current_without_the_uid_on_the_page_and_a_viewer_has_no_link(
        console: tuple[FleetService, MosquittoBroker], tmp_path: Path) -> None:  # noqa: F811
    svc, broker = console
    assert svc.http is not None and svc.tls.ca_file is not None
    archive = Archive(tmp_path / "cloud" / "archive", tmp_path / "cloud" / "archive.db")
    try:
        for n, data in enumerate((b"first", b"corrected")):
            archive.store(_identity(data, SOP), archive.receive([data]), "box-a", bytes([n]) * 16, 2, T0 + n,
                          edge_item_id=10 + n)
    finally:
        archive.close()
    Box(broker, "box-a").send("state", fleet.encode(MessageKind.BIRTH, "box-a", 1, site="clinic-a", version="9.9"))
    wait_for(lambda: svc.box("box-a"), 60, "box-a in the registry")
    account(svc.store, "wang", Role.OPERATOR)
    account(svc.store, "zhao", Role.VIEWER)
    base = svc.http.url.rstrip("/")
    with chromium(trust=svc.tls.ca_file) as browser:
        login(browser, base, "zhao", PASSWORD)
        wait_for(lambda: "zhao" in browser.find_element(By.ID, "user").text, 60, "the viewer logged in")
        assert not browser.find_element(By.ID, "nav-versions").is_displayed()  # a viewer's role is too low
        browser.delete_all_cookies()
        login(browser, base, "wang", PASSWORD)
        wait_for(lambda: browser.find_element(By.ID, "nav-versions").is_displayed(), 60, "the operator's link")
        browser.find_element(By.ID, "nav-versions").click()
        wait_for(lambda: browser.find_elements(By.ID, "versions-uid"), 60, "the versions form")
        browser.find_element(By.ID, "versions-uid").send_keys(SOP)
        browser.find_element(By.CSS_SELECTOR, "#versions-form button[type=submit]").click()
        rows = wait_for(lambda: browser.execute_script(ROWS), 60, "the versions")
        assert len(rows) == 2 and "box-a" in rows[0] and "superseded" in rows[0] and rows[1].endswith("current")
        assert "5" in rows[0] and "9" in rows[1]  # their sizes
        assert SOP not in browser.execute_script("return document.body.textContent")  # the UID stays in the form
        assert SOP not in browser.current_url  # and out of the address (history)
        browser.find_element(By.ID, "lang").click()
        wait_for(lambda: browser.execute_script(
            "const h = document.querySelector('#view h2'); return h ? h.textContent : ''") == "归档版本", 60, "Chinese")
    assert [r.actor for r in svc.store.auth.audit(action="archive.versions")] == ["wang"]
