"""The console's remote commands page as an operator uses it: headless Chromium over HTTPS, a real fleet service
on a real mosquitto, and a stand-in box that checks, opens and answers each signed frame. The operator issues an
echo and a bundle from the page, sees both succeed (times in the browser's zone), downloads the bundle; a viewer
gets no form; the page reads in Chinese."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.fleet.service import FleetService
from gateway.core.access import Role
from tests.cloud.test_commands_api import BUNDLE, StandInBox, online
from tests.console_auth import PASSWORD, account, login
from tests.peers import wait_for
from tests.system.browser import chromium
from tests.system.test_console_login import console  # noqa: F401 - the fixture

STATES = "return [...document.querySelectorAll('#commands-body tr')].map((r) => r.dataset.state)"
# read in one script: the page redraws its rows every few seconds (and all of it on a language switch)
TEXT = "const n = document.querySelector(arguments[0]); return n ? n.textContent : ''"


def test_operator_issues_echo_and_bundle_from_the_page_and_downloads_the_bundle_when_they_succeed(
        console: tuple[FleetService, MosquittoBroker], tmp_path: Path) -> None:  # noqa: F811
    svc, broker = console
    assert svc.http is not None and svc.tls.ca_file is not None
    wait_for(lambda: svc.leading, 60, "the fleet service leads")
    boxes: list[StandInBox] = []
    try:
        online(broker, svc, boxes, "box-a")
        account(svc.store, "wang", Role.OPERATOR)
        account(svc.store, "zhao", Role.VIEWER)
        base = svc.http.url.rstrip("/")
        with chromium(trust=svc.tls.ca_file) as browser:
            login(browser, base, "zhao", PASSWORD)
            browser.get(base + "/#/commands/box-a")
            wait_for(lambda: browser.find_elements(By.ID, "commands"), 60, "the viewer's commands page")
            assert not browser.find_elements(By.ID, "issue-form")
            browser.delete_all_cookies()
            login(browser, base, "wang", PASSWORD)
            browser.get(base + "/#/box/box-a")
            wait_for(lambda: browser.find_elements(By.ID, "box-commands"), 60, "the box page's link")
            browser.execute_script("document.getElementById('box-commands').click()")  # the box page redraws
            wait_for(lambda: browser.find_elements(By.ID, "issue-form"), 60, "the issue form")
            browser.find_element(By.ID, "issue-submit").click()  # echo, the first kind
            wait_for(lambda: browser.execute_script(STATES) == ["succeeded"], 60, "the echo succeeded on the page")
            Select(browser.find_element(By.ID, "issue-kind")).select_by_value("bundle")
            browser.find_element(By.ID, "issue-submit").click()
            wait_for(lambda: browser.execute_script(STATES) == ["succeeded", "succeeded"], 60, "the bundle succeeded")
            href = wait_for(lambda: browser.execute_script(
                "const a = document.querySelector('#commands-body a.bundle'); return a ? a.href : ''"), 60,
                "the bundle's download link")
            size = browser.execute_script(
                "return fetch(arguments[0], {credentials: 'same-origin'}).then((r) => r.arrayBuffer())"
                ".then((b) => b.byteLength)", href)
            assert size == len(BUNDLE)
            row = browser.execute_script(TEXT, "#commands-body tr:last-child")
            assert "C-ECHO" in row and "status=0x0000" in row and "wang" in row
            browser.find_element(By.ID, "lang").click()
            wait_for(lambda: "远程命令" in browser.execute_script(TEXT, "#view h2"), 60, "Chinese")
            wait_for(lambda: "成功" in browser.execute_script(TEXT, "#commands-body"), 60, "states in Chinese")
    finally:
        for box in boxes:
            box.link.stop()
    actions = [r.action for r in svc.store.auth.audit(limit=100)]
    assert actions.count("command.issue") == 2 and actions.count("command.bundle_download") == 1


def test_admin_resends_a_study_by_accession_number_from_the_page_when_the_cloud_archived_it(
        console: tuple[FleetService, MosquittoBroker], tmp_path: Path) -> None:  # noqa: F811
    from tests.cloud.test_commands_api import _archive_from
    from tests.cloud.test_ingest import ACCESSION

    svc, broker = console
    assert svc.http is not None and svc.tls.ca_file is not None
    wait_for(lambda: svc.leading, 60, "the fleet service leads")
    boxes: list[StandInBox] = []
    try:
        box = online(broker, svc, boxes, "box-a")
        _archive_from(svc, tmp_path)
        account(svc.store, "li", Role.ADMIN)
        base = svc.http.url.rstrip("/")
        with chromium(trust=svc.tls.ca_file) as browser:
            login(browser, base, "li", PASSWORD)
            browser.get(base + "/#/commands/box-a")
            wait_for(lambda: browser.find_elements(By.ID, "issue-form"), 60, "the issue form")
            Select(browser.find_element(By.ID, "issue-kind")).select_by_value("resend")
            field = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#issue-form input[name=accession]"), 60,
                             "the accession field")[0]
            field.send_keys(ACCESSION)
            browser.find_element(By.ID, "issue-submit").click()
            wait_for(lambda: "2 resend command(s) queued" in browser.execute_script(TEXT, "#issue-note"), 60,
                     "the note naming both resends")
            wait_for(lambda: browser.execute_script(STATES) == ["succeeded", "succeeded"], 60, "both resends ran")
            field.clear()
            field.send_keys("ACC-UNKNOWN")
            browser.find_element(By.ID, "issue-submit").click()
            wait_for(lambda: "no study archived from box-a has this accession number"
                     in browser.execute_script(TEXT, "#issue-note"), 60, "the refusal on the page")
        assert sorted(c.args["study_instance_uid"] for c in box.executed) == ["1.2.3.701", "1.2.3.702"]
    finally:
        for b in boxes:
            b.link.stop()
