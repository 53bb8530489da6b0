"""OpenID Connect login to the console, end to end: headless Chromium, the console over HTTPS (fleet
CA), a real OpenID provider (npm oidc-provider, tests/oidc_provider.py) whose certificate the same
CA issued, a real fleet service on a real mosquitto. The user's role and sites come from the ID
token's claims ([fleet.oidc] role_map, sites_claim): alice, an operator of site-1, sees site-1's box
only; a login cancelled at the provider opens no session. Both are in the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.ports import on_free_port
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.fleet.service import FleetService
from gateway.config import OidcSettings
from gateway.core import fleet
from gateway.core.fleet import MessageKind
from gateway.paths import Paths
from tests.backends import Backend
from tests.cloud import conftest as cloud_fixtures
from tests.cloud.test_fleet import Box
from tests.cloud.test_fleet import settings as cloud_settings
from tests.oidc_provider import RunningProvider, fleet_ca_tls, oidc_provider
from tests.peers import wait_for
from tests.system.browser import chromium

CALLBACK = "/auth/oidc/callback"
broker = cloud_fixtures.broker  # a real mosquitto on loopback, the cloud tests' fixture


@pytest.fixture(autouse=True)
def _boxes_stopped() -> Iterator[None]:
    yield
    while Box.made:
        Box.made.pop().link.stop()


def _console(broker: MosquittoBroker, paths: Paths, idp: RunningProvider, ca: Path) -> FleetService:
    secret = paths.key_file("oidc-client-secret")
    secret.touch(mode=0o600)
    secret.write_text(idp.client.client_secret)
    base = cloud_settings(broker, Backend("sqlite"), offline_after_s=600.0)

    def start(port: int) -> FleetService:
        oidc = OidcSettings(issuer=idp.issuer, client_id=idp.client.client_id, client_secret_file=secret.name,
                            redirect_url=f"https://127.0.0.1:{port}{CALLBACK}", ca_file=str(ca),
                            roles_claim="groups", role_map=("mgw-operators=operator", "mgw-admins=admin"),
                            sites_claim="sites")
        svc = FleetService(replace(base, fleet=replace(base.fleet, http_port=port, oidc=oidc)), paths)
        try:
            svc.start()
        except BaseException:
            svc.stop()
            raise
        return svc

    return on_free_port(start)


def test_operator_logs_in_at_the_sites_provider_and_sees_only_their_site_when_oidc_is_configured(
        broker: MosquittoBroker, tmp_path: Path) -> None:
    paths = Paths(tmp_path, tmp_path / "cloud", tmp_path)
    authority = FleetAuthority(paths.key_file(cloud_settings(broker, Backend("sqlite")).authority.pki_dir))
    try:
        ca, cert, key = fleet_ca_tls(authority, tmp_path / "idp-tls")  # one CA for the console and the provider
    finally:
        authority.close()
    with oidc_provider(tmp_path / "idp", redirect_uris=[f"https://127.0.0.1{CALLBACK}"], any_port=True,
                       tls_files=(ca, cert, key)) as idp:
        svc = _console(broker, paths, idp, ca)
        try:
            assert svc.http is not None
            base = svc.http.url.rstrip("/")
            boxes = {box_id: (Box(broker, box_id), site) for box_id, site in (("box-a", "site-1"), ("box-b", "site-2"))}

            def born() -> bool:  # a birth again is the same birth (same bd_seq): sent until the fleet has it
                for box_id, (box, site) in boxes.items():
                    if svc.box(box_id) is None:
                        box.send("state", fleet.encode(MessageKind.BIRTH, box_id, 1, site=site, version="1"))
                return all(svc.box(b) is not None for b in boxes)

            wait_for(born, 60, "both boxes in the registry")
            with chromium(trust=ca) as browser:
                # cancelled at the provider: refused, no session
                browser.get(base + "/login.html")
                link = wait_for(lambda: [e for e in browser.find_elements(By.ID, "oidc-login") if e.is_displayed()],
                                60, "the organisation login link")
                link[0].click()
                wait_for(lambda: browser.find_elements(By.ID, "login-cancel"), 60, "the provider's login page")
                browser.find_element(By.ID, "login-cancel").click()
                wait_for(lambda: CALLBACK in browser.current_url, 60, "back at the console's callback")
                assert "access_denied" in browser.find_element(By.TAG_NAME, "body").text
                assert not any(c["name"] == "__Host-mgw_session" for c in browser.get_cookies())
                # signed in as alice: an operator of site-1
                browser.get(base + "/login.html")
                wait_for(lambda: [e for e in browser.find_elements(By.ID, "oidc-login") if e.is_displayed()],
                         60, "the organisation login link")[0].click()
                wait_for(lambda: browser.find_elements(By.ID, "login-name"), 60, "the provider's login page")
                browser.find_element(By.ID, "login-name").send_keys("alice")
                browser.find_element(By.ID, "login-password").send_keys(idp.accounts["alice"].password)
                browser.find_element(By.ID, "login-submit").click()
                wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '[data-box="box-a"]'), 60,
                         "site-1's box on the console")
                wait_for(lambda: "oidc:alice" in browser.find_element(By.ID, "user").text, 30, "who is logged in")
                total = browser.find_element(By.CSS_SELECTOR, '#counts [data-status="total"] b').text
                assert total == "1" and not browser.find_elements(By.CSS_SELECTOR, '[data-box="box-b"]')
            logins = svc.store.auth.audit(action="login")
            assert [(r.actor, r.method, r.outcome) for r in reversed(logins)] == [
                ("", "oidc", "refused"), ("oidc:alice", "oidc", "ok")]
        finally:
            svc.stop()
