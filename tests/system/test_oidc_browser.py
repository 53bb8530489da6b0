"""The tests' OpenID provider in a real browser: its login page works in headless Chromium over
HTTPS, and the browser comes back to the redirect URI with what the console's client redeems.

The console's own login through it (routes, session) is tested end to end with the console; this
checks the provider's side and ``OidcClient`` with a real browser in between.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gateway.adapters.oidc_client import OidcClient
from gateway.core.access import LoginRefused
from tests.oidc_provider import oidc_provider
from tests.system.browser import chromium

REDIRECT = "https://127.0.0.1:9/oidc/callback"  # nobody listens: the test reads the browser's address


def _back_at_the_redirect(driver: Any) -> dict[str, str]:
    """The query the browser brings to the redirect URI, once it got there."""
    WebDriverWait(driver, 60).until(lambda d: d.current_url.startswith(REDIRECT))
    return dict(parse_qsl(urlsplit(driver.current_url).query))


def _callback(driver: Any, login: str | None, password: str | None) -> dict[str, str]:
    if login is None:
        driver.find_element(By.ID, "login-cancel").click()
    else:
        driver.find_element(By.ID, "login-name").send_keys(login)
        driver.find_element(By.ID, "login-password").send_keys(password)
        driver.find_element(By.ID, "login-submit").click()
    return _back_at_the_redirect(driver)


def test_browser_brings_back_a_code_the_client_redeems_when_the_user_signs_in_at_the_provider(
        tmp_path: Path) -> None:
    with oidc_provider(tmp_path, redirect_uris=[REDIRECT]) as idp:
        client = OidcClient(idp.issuer, idp.client.client_id, idp.client.client_secret, REDIRECT, ca_file=idp.ca_file)
        with chromium(trust=idp.ca_file) as driver:
            url, kept = client.begin()
            driver.get(url)
            claims = client.finish(_callback(driver, "bob", idp.accounts["bob"].password), kept)
            assert claims["sub"] == "bob" and claims["groups"] == ["mgw-admins"]

            url, kept = client.begin()  # the provider's session remembers bob: a new login goes straight back
            driver.get(url)
            assert client.finish(_back_at_the_redirect(driver), kept)["sub"] == "bob"


def test_browser_brings_back_access_denied_when_the_user_cancels_at_the_provider(tmp_path: Path) -> None:
    with oidc_provider(tmp_path, redirect_uris=[REDIRECT]) as idp:
        client = OidcClient(idp.issuer, idp.client.client_id, idp.client.client_secret, REDIRECT, ca_file=idp.ca_file)
        with chromium(trust=idp.ca_file) as driver:
            url, kept = client.begin()
            driver.get(url)
            params = _callback(driver, None, None)
            with pytest.raises(LoginRefused, match="access_denied"):
                client.finish(params, kept)
