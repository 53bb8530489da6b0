"""Authenticating to the fleet console in tests: an admin account and API token in a service's
store (in-process or a loopback deployment's), and a real browser login through login.html."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from gateway import config
from gateway.cloud import backends
from gateway.cloud.fleet.accounts import Accounts, Actor
from gateway.cloud.fleet.store import FleetStore
from gateway.config import AuthSettings
from gateway.core.access import Role
from gateway.paths import Paths
from tests.peers import wait_for

TEST_ACTOR = Actor("cli:test", "cli", "")
PASSWORD = "correct horse battery staple"  # noqa: S105 - a test account's


def accounts_of(store: FleetStore) -> Accounts:
    return Accounts(store.auth, AuthSettings())


def account(store: FleetStore, name: str, role: Role = Role.ADMIN, sites: frozenset[str] | None = None,
            password: str = PASSWORD) -> str:
    """Create the account unless it exists; its password."""
    accounts = accounts_of(store)
    if store.auth.account(name) is None:
        accounts.create(name, password, role, sites, TEST_ACTOR)
    return password


def token(store: FleetStore, name: str = "test-admin", role: Role = Role.ADMIN,
          sites: frozenset[str] | None = None) -> str:
    """A fresh API token of account ``name`` (made with that role and sites if it is new)."""
    account(store, name, role, sites)
    return accounts_of(store).create_token(name, f"test-{secrets.token_hex(3)}", role, sites, None, TEST_ACTOR)[1]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


_SERVICE_TOKENS: dict[tuple[int, str], str] = {}


def service_token(service: Any) -> str:
    """An admin token for an in-process ``FleetService`` (one per service object)."""
    key = (id(service), service.store.where)  # an id alone is reused once its service is collected
    if key not in _SERVICE_TOKENS:
        _SERVICE_TOKENS[key] = token(service.store)
    return _SERVICE_TOKENS[key]


_DEPLOYMENT_TOKENS: dict[tuple[Path, Role], str] = {}


def deployment_token(fleet_toml: Path, role: Role = Role.ADMIN) -> str:
    """A token of that role in a loopback deployment's fleet store (SQLite or PostgreSQL, as configured),
    made once per deployment."""
    if (fleet_toml, role) not in _DEPLOYMENT_TOKENS:
        _DEPLOYMENT_TOKENS[(fleet_toml, role)] = _new_deployment_token(fleet_toml, role)
    return _DEPLOYMENT_TOKENS[(fleet_toml, role)]


def _new_deployment_token(fleet_toml: Path, role: Role) -> str:
    settings = config.load_cloud([fleet_toml])
    store = backends.open_fleet_store(settings, Paths.from_env(settings.cloud.state_dir, base=fleet_toml.parent))
    try:
        return token(store, f"test-{role.value}", role)
    finally:
        store.close()


def deployment_account(fleet_toml: Path, name: str, role: Role = Role.ADMIN,
                       sites: frozenset[str] | None = None) -> str:
    settings = config.load_cloud([fleet_toml])
    store = backends.open_fleet_store(settings, Paths.from_env(settings.cloud.state_dir, base=fleet_toml.parent))
    try:
        return account(store, name, role, sites)
    finally:
        store.close()


def login(driver: Any, base_url: str, user: str, password: str, wait_for_app: bool = True) -> None:
    """Log in through login.html as a person would: the form, then the dashboard."""
    from selenium.webdriver.common.by import By

    driver.get(base_url.rstrip("/") + "/login.html")
    wait_for(lambda: driver.find_elements(By.ID, "user"), 60, "the login form")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    if wait_for_app:
        wait_for(lambda: not driver.current_url.split("?")[0].endswith("/login.html"), 60, "the dashboard after login")
