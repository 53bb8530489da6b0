"""The console's accounts, sessions, CSRF, roles, per-site scope, API tokens and audit log, over real
HTTPS against a real fleet service on a real mosquitto (and the store on SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import http.client
import io
import json
import ssl
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.postgres_cluster import PostgresCluster
from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud.fleet.accounts import Accounts, Actor
from gateway.cloud.fleet.service import FleetService
from gateway.cloud.fleet.store import FleetStore
from gateway.config import AuthSettings, OidcSettings
from gateway.core import fleet
from gateway.core.access import LoginRefused, Role
from gateway.core.errors import AccountError, StorageError
from gateway.core.fleet import AlertKind, MessageKind
from gateway.paths import Paths
from tests.backends import Backend
from tests.cloud.test_console import request, start
from tests.cloud.test_fleet import Box
from tests.cloud.test_fleet import settings as cloud_settings
from tests.console_auth import PASSWORD, TEST_ACTOR, account, bearer, token
from tests.peers import wait_for


@pytest.fixture(autouse=True)
def _stop_boxes() -> Iterator[None]:
    yield
    while Box.made:
        Box.made.pop().link.stop()


@pytest.fixture
def service(broker: MosquittoBroker, tmp_path: Path) -> Iterator[FleetService]:
    svc = start(broker, tmp_path, auth=AuthSettings(lockout_failures=3, address_failures=8))
    try:
        assert svc.link.wait_connected(60)  # subscribed before the boxes' births are published
        yield svc
    finally:
        svc.stop()


def call(svc: FleetService, method: str, target: str, doc: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], Any]:
    """A request without the test admin's token unless ``headers`` carry one; the answer's JSON."""
    body = None if doc is None else json.dumps(doc).encode()
    sent = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
    status, got, raw = request(svc, method, target, body, sent, auth=False)
    is_json = got.get("content-type", "").startswith("application/json")
    return status, got, json.loads(raw) if is_json and raw else raw


class Browser:
    """A session as a browser holds it: the cookie, and the CSRF token the app got from /api/v1/me."""

    def __init__(self, svc: FleetService, user: str, password: str = PASSWORD) -> None:
        self.svc = svc
        status, headers, doc = call(svc, "POST", "/auth/login", {"user": user, "password": password})
        assert status == 200, doc
        self.set_cookie = headers["set-cookie"]
        self.cookie = self.set_cookie.split(";")[0]
        self.csrf = doc["csrf"]
        self.doc = doc

    def get(self, target: str) -> tuple[int, Any]:
        status, _, doc = call(self.svc, "GET", target, headers={"Cookie": self.cookie})
        return status, doc

    def post(self, target: str, doc: Any = None, csrf: str | None = "", origin: str | None = None) -> tuple[int, Any]:
        headers = {"Cookie": self.cookie}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf or self.csrf
        if origin is not None:
            headers["Origin"] = origin
        status, _, answer = call(self.svc, "POST", target, doc, headers)
        return status, answer


def audit_rows(svc: FleetService, action: str) -> list[dict[str, Any]]:
    return [r.as_dict() for r in svc.store.auth.audit(action=action, limit=1000)]


def two_sites(svc: FleetService, broker: MosquittoBroker) -> dict[str, int]:
    """box-a at clinic-a and box-b at clinic-b in the registry, and an open alert on each: their ids."""
    boxes = {box_id: (Box(broker, box_id), site) for box_id, site in (("box-a", "clinic-a"), ("box-b", "clinic-b"))}

    def born() -> bool:
        for box_id, (box, site) in boxes.items():  # a birth again is the same birth (same bd_seq)
            if svc.box(box_id) is None:
                box.send("state", fleet.encode(MessageKind.BIRTH, box_id, 1, site=site, version="9.9"))
        return all(svc.box(b) is not None for b in boxes)

    wait_for(born, 60, "both boxes in the registry")
    for box_id, (box, _) in boxes.items():  # a full disk: the service raises (and keeps) the alert itself
        box.send("health", fleet.encode(MessageKind.HEARTBEAT, box_id, 1, at=time.time(),
                                        disk={"used_percent": 97.0}))

    def raised() -> dict[str, int]:
        found = {a.site: a.id for a in svc.open_alerts() if a.kind is AlertKind.DISK_FULL}
        return found if set(found) == {"clinic-a", "clinic-b"} else {}

    return wait_for(raised, 60, "a disk alert on each site")


# -- logins, lockout, sessions --------------------------------------------------------------------------------
def test_session_cookie_is_set_and_me_answers_when_the_password_is_right(service: FleetService) -> None:
    assert call(service, "GET", "/auth/methods")[2] == {"password": True, "oidc": False}
    assert call(service, "GET", "/auth/oidc/login")[0] == 404  # no provider configured
    account(service.store, "alice", Role.OPERATOR, frozenset({"clinic-a"}))
    alice = Browser(service, "alice")
    cookie = alice.set_cookie
    assert cookie.startswith("__Host-mgw_session=")
    assert {"Path=/", "HttpOnly", "SameSite=Strict", "Secure"} <= {p.strip() for p in cookie.split(";")}
    assert alice.doc == {"user": "alice", "role": "operator", "sites": ["clinic-a"], "method": "password",
                         "csrf": alice.csrf}
    status, me = alice.get("/api/v1/me")
    assert status == 200 and me["user"] == "alice" and me["csrf"] == alice.csrf
    row = audit_rows(service, "login")[0]
    assert (row["actor"], row["outcome"], row["method"], row["address"]) == ("alice", "ok", "password", "127.0.0.1")
    session_id = alice.cookie.split("=", 1)[1]
    assert session_id not in json.dumps(service.store.auth.execute("SELECT * FROM sessions"))  # only its hash


def test_login_is_refused_alike_and_audited_when_the_password_is_wrong_or_the_user_unknown(
        service: FleetService) -> None:
    account(service.store, "alice")
    answers = [call(service, "POST", "/auth/login", {"user": user, "password": "wrong password!"})
               for user in ("alice", "mallory")]
    assert [(s, d) for s, _, d in answers] == [(401, {"error": "user name or password not accepted"})] * 2
    assert all("set-cookie" not in h for _, h, _ in answers)
    refused = {(r["target"], json.loads(r["detail"])["reason"]) for r in audit_rows(service, "login")}
    assert refused == {("alice", "wrong password"), ("mallory", "unknown account")}
    assert call(service, "GET", "/api/v1/boxes")[0] == 401


def test_account_locks_after_the_failures_and_opens_again_when_unlocked(service: FleetService) -> None:
    account(service.store, "alice")
    for _ in range(3):  # fleet.auth.lockout_failures = 3
        assert call(service, "POST", "/auth/login", {"user": "alice", "password": "not the password"})[0] == 401
    assert call(service, "POST", "/auth/login", {"user": "alice", "password": PASSWORD})[0] == 401  # locked
    assert json.loads(audit_rows(service, "login")[0]["detail"])["reason"] == "account locked"
    service.accounts.unlock("alice", TEST_ACTOR)
    assert call(service, "POST", "/auth/login", {"user": "alice", "password": PASSWORD})[0] == 200
    assert audit_rows(service, "account.unlock")[0]["actor"] == "cli:test"


def test_address_is_refused_for_every_account_when_it_failed_too_often(service: FleetService) -> None:
    account(service.store, "alice")
    for n in range(8):  # fleet.auth.address_failures = 8, spread over names so no account locks
        call(service, "POST", "/auth/login", {"user": f"guess{n}", "password": "x" * 12})
    assert call(service, "POST", "/auth/login", {"user": "alice", "password": PASSWORD})[0] == 401
    reason = json.loads(audit_rows(service, "login")[0]["detail"])["reason"]
    assert reason == "too many failures from this address"


def test_session_ends_when_idle_too_long_or_past_its_lifetime(tmp_path: Path) -> None:
    store = SqliteFleetStore(tmp_path / "fleet.db")
    now = [1000.0]
    accounts = Accounts(store.auth, AuthSettings(session_idle_minutes=10, session_hours=1), clock=lambda: now[0])
    try:
        accounts.create("alice", PASSWORD, Role.VIEWER, None, TEST_ACTOR)
        principal = accounts.login("alice", PASSWORD, "10.0.0.1")
        idle, _ = accounts.open_session(principal, "10.0.0.1")
        busy, _ = accounts.open_session(principal, "10.0.0.1")
        for _ in range(7):  # used every 9 minutes: past the hour, the absolute lifetime ends it
            now[0] += 9 * 60
            assert (accounts.resolve_session(busy) is not None) == (now[0] < 1000 + 3600)
        assert accounts.resolve_session(idle) is None  # unused for more than 10 minutes
        assert store.auth.execute("SELECT COUNT(*) AS n FROM sessions")[0]["n"] == 0
    finally:
        store.close()


def test_session_is_dead_when_logged_out_or_its_account_disabled(service: FleetService) -> None:
    account(service.store, "alice")
    account(service.store, "bob")
    alice, bob = Browser(service, "alice"), Browser(service, "bob")
    assert alice.post("/auth/logout")[0] == 200
    assert alice.get("/api/v1/me")[0] == 401
    assert audit_rows(service, "logout")[0]["actor"] == "alice"
    assert bob.get("/api/v1/me")[0] == 200
    status, headers, _ = call(service, "POST", "/auth/login", {"user": "bob", "password": PASSWORD},
                              {"Cookie": bob.cookie})  # logging in again, from the same browser
    assert status == 200 and bob.get("/api/v1/me")[0] == 401  # the previous session id is dead
    bob.cookie = headers["set-cookie"].split(";")[0]
    assert bob.get("/api/v1/me")[0] == 200
    service.accounts.disable("bob", TEST_ACTOR)
    assert bob.get("/api/v1/me")[0] == 401
    assert call(service, "POST", "/auth/login", {"user": "bob", "password": PASSWORD})[0] == 401


# -- CSRF and roles -----------------------------------------------------------------------------------------------
def test_post_is_refused_without_the_csrf_token_or_from_another_origin_when_a_session_cookie_authenticates(
        service: FleetService, broker: MosquittoBroker) -> None:
    alert = two_sites(service, broker)["clinic-a"]
    account(service.store, "alice", Role.OPERATOR)
    alice = Browser(service, "alice")
    target = f"/api/v1/alerts/{alert}/ack"
    assert alice.post(target, {"note": "x"}, csrf=None) == (403, {"error": "missing or wrong X-CSRF-Token"})
    assert alice.post(target, {"note": "x"}, csrf="forged")[0] == 403
    port = service.http.port if service.http else 0
    assert alice.post(target, {"note": "x"}, origin="https://evil.example") == (
        403, {"error": "cross-origin request refused"})
    assert service.store.alert(alert).acked_at is None  # type: ignore[union-attr]
    assert alice.post(target, {"note": "seen"}, origin=f"https://127.0.0.1:{port}")[0] == 200
    assert service.store.alert(alert).acked_by == "alice"  # type: ignore[union-attr]
    assert [r["outcome"] for r in audit_rows(service, "csrf")] == ["refused"] * 3
    ack = audit_rows(service, "alert.ack")[0]
    assert (ack["actor"], ack["target"], json.loads(ack["detail"])["note"]) == ("alice", str(alert), "seen")


def test_viewer_is_refused_with_403_when_acknowledging_an_alert(service: FleetService, broker: MosquittoBroker) -> None:
    alert = two_sites(service, broker)["clinic-a"]
    account(service.store, "victor", Role.VIEWER)
    victor = Browser(service, "victor")
    status, doc = victor.post(f"/api/v1/alerts/{alert}/ack", {"note": "x"})
    assert status == 403 and "operator" in doc["error"]
    assert victor.post("/api/v1/silences", {"site": "clinic-a", "ends_at": time.time() + 60, "reason": "x"})[0] == 403
    refused = service.store.auth.audit(actor="victor", limit=10)
    assert {(r.action, r.outcome) for r in refused} >= {(f"/api/v1/alerts/{alert}/ack", "refused")}
    assert victor.get("/api/v1/audit")[0] == 403


def test_site_scoped_user_sees_only_their_sites_and_gets_404_on_another_sites_alert(
        service: FleetService, broker: MosquittoBroker) -> None:
    alerts = two_sites(service, broker)
    account(service.store, "ana", Role.OPERATOR, frozenset({"clinic-a"}))
    ana = Browser(service, "ana")
    assert [b["box_id"] for b in ana.get("/api/v1/registry")[1]["boxes"]] == ["box-a"]
    assert [r["id"] for r in ana.get("/api/v1/boxes")[1]["rows"]] == ["box-a"]  # the paged overview too
    assert {a["box_id"] for a in ana.get("/api/v1/alerts")[1]["alerts"]} == {"box-a"}
    assert ana.get("/api/v1/boxes/box-b") == (404, {"error": "no such box"})
    assert ana.get("/api/v1/utilisation?box=box-b&modality=CT")[0] == 404
    status, _, metrics = call(service, "GET", "/metrics", headers={"Cookie": ana.cookie})
    assert status == 200 and 'box_id="box-a"' in metrics.decode() and 'box_id="box-b"' not in metrics.decode()
    assert ana.post(f"/api/v1/alerts/{alerts['clinic-b']}/ack", {"note": "x"}) == (404, {"error": "no such alert"})
    assert ana.post("/api/v1/silences", {"box_id": "box-b", "ends_at": time.time() + 60, "reason": "x"})[0] == 404
    assert ana.post("/api/v1/silences", {"kind": "disk_full", "ends_at": time.time() + 60, "reason": "x"})[0] == 403
    assert ana.post(f"/api/v1/alerts/{alerts['clinic-a']}/ack", {"note": "mine"})[0] == 200
    status, made = ana.post("/api/v1/maintenance", {"site": "clinic-a", "ends_at": time.time() + 600})
    assert status == 200 and made["created_by"] == "ana"
    assert [m["id"] for m in ana.get("/api/v1/maintenance")[1]["maintenance"]] == [made["id"]]
    assert ana.post(f"/api/v1/maintenance/{made['id']}/end")[0] == 200
    assert [r.action for r in service.store.auth.audit(actor="ana", limit=10)][:2] == [
        "maintenance.end", "maintenance.create"]


# -- API tokens ----------------------------------------------------------------------------------------------------
def test_token_acts_narrowed_to_its_role_and_sites_and_stops_when_revoked_or_expired(
        service: FleetService, broker: MosquittoBroker) -> None:
    alerts = two_sites(service, broker)
    admin = token(service.store, "root")
    status, _, made = call(service, "POST", "/api/v1/tokens", {"name": "grafana", "role": "viewer",
                                                                "sites": ["clinic-b"], "owner": "root"},
                           bearer(admin))
    assert status == 200 and made["token"].startswith(f"mgw_{made['id']}_")
    assert made["token"] not in json.dumps(call(service, "GET", "/api/v1/tokens", headers=bearer(admin))[2])
    viewer = bearer(made["token"])
    assert [b["box_id"] for b in call(service, "GET", "/api/v1/registry", headers=viewer)[2]["boxes"]] == ["box-b"]
    assert call(service, "POST", f"/api/v1/alerts/{alerts['clinic-b']}/ack", {"note": "x"}, viewer)[0] == 403
    account(service.store, "olga", Role.OPERATOR)
    olga = Accounts(service.store.auth, AuthSettings())
    with pytest.raises(AccountError, match="more than its owner"):
        olga.create_token("olga", "too much", Role.ADMIN, None, None, TEST_ACTOR)
    wide = bearer(olga.create_token("olga", "wide", Role.OPERATOR, None, None, TEST_ACTOR)[1])
    assert len(call(service, "GET", "/api/v1/registry", headers=wide)[2]["boxes"]) == 2
    service.store.auth.update_account("olga", time.time(), sites="clinic-a")  # the owner's scope shrinks: so does
    assert [b["box_id"] for b in call(service, "GET", "/api/v1/registry", headers=wide)[2]["boxes"]] == ["box-a"]
    assert call(service, "POST", f"/api/v1/tokens/{made['id']}/revoke", None, bearer(admin))[0] == 200
    assert call(service, "GET", "/api/v1/boxes", headers=viewer)[2] == {"error": "API token refused: token revoked"}
    short = olga.create_token("olga", "brief", Role.VIEWER, None, 1 / 86400, TEST_ACTOR)[1]  # one second
    wait_for(lambda: call(service, "GET", "/api/v1/me", headers=bearer(short))[0] == 401, 60, "the token expired")
    assert call(service, "GET", "/api/v1/me", headers=bearer(short))[2]["error"].endswith("token expired")
    assert call(service, "GET", "/api/v1/me", headers=bearer("mgw_000000000000_" + "A" * 43))[0] == 401
    refusals = {json.loads(r["detail"])["reason"] for r in audit_rows(service, "token.use")}
    assert {"token revoked", "token expired", "unknown token"} <= refusals
    assert {r["target"] for r in audit_rows(service, "token.create")} >= {made["id"]}
    assert audit_rows(service, "token.revoke")[0]["target"] == made["id"]


def test_operator_manages_only_their_own_tokens_when_not_an_admin(service: FleetService) -> None:
    account(service.store, "olga", Role.OPERATOR)
    account(service.store, "root")
    theirs = Accounts(service.store.auth, AuthSettings()).create_token("root", "x", Role.ADMIN, None, None,
                                                                        TEST_ACTOR)[0]["id"]
    olga = Browser(service, "olga")
    status, mine = olga.post("/api/v1/tokens", {"name": "script", "role": "operator", "days": 30})
    assert status == 200 and mine["owner"] == "olga" and mine["expires_at"] > time.time() + 29 * 86400
    assert [t["id"] for t in olga.get("/api/v1/tokens")[1]["tokens"]] == [mine["id"]]
    assert olga.post(f"/api/v1/tokens/{theirs}/revoke")[0] == 404
    assert olga.post("/api/v1/tokens", {"name": "x", "role": "admin"})[0] == 400
    assert olga.post(f"/api/v1/tokens/{mine['id']}/revoke") == (200, {"id": mine["id"], "revoked": True})
    assert olga.post(f"/api/v1/tokens/{mine['id']}/revoke")[0] == 409


# -- the audit log -------------------------------------------------------------------------------------------------
def _audit_store(backend: str, tmp_path: Path, pg_cluster: PostgresCluster | None) -> FleetStore:
    if backend == "sqlite":
        return SqliteFleetStore(tmp_path / "fleet.db")
    from gateway.adapters.postgres_fleet_store import PostgresFleetStore

    assert pg_cluster is not None
    return PostgresFleetStore(pg_cluster.create_database("audit_append_only"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_audit_row_cannot_be_changed_or_deleted_when_written(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cluster = request.getfixturevalue("pg_cluster") if backend == "postgres" else None
    store = _audit_store(backend, tmp_path, cluster)
    try:
        Accounts(store.auth, AuthSettings()).audit(Actor("alice", "password", "10.0.0.1"), "alert.ack", "7")
        for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log",
                          *(["TRUNCATE audit_log"] if backend == "postgres" else [])):
            with pytest.raises(StorageError, match="audit_log is append-only"):
                store.auth.execute(statement)
        assert [(r.actor, r.action, r.target) for r in store.auth.audit()] == [("alice", "alert.ack", "7")]
    finally:
        store.close()


def test_audit_export_holds_every_row_as_csv_and_jsonl_and_is_itself_audited(service: FleetService) -> None:
    account(service.store, "alice", Role.VIEWER)
    call(service, "POST", "/auth/login", {"user": "=cmd|' /C calc'!A0", "password": "not the password"})
    admin = bearer(token(service.store, "root"))
    status, headers, raw = call(service, "GET", "/api/v1/audit/export?format=csv", headers=admin)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [r["action"] for r in rows] == ["account.create", "login", "account.create", "token.create", "audit.export"]
    assert rows[1]["target"] == "'=cmd|' /C calc'!A0" and "not the password" not in raw.decode()
    assert all(not v.startswith(("=", "+", "@")) for r in rows for v in r.values())
    status, headers, raw = call(service, "GET", "/api/v1/audit/export?format=jsonl", headers=admin)
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert status == 200 and len(lines) == len(rows) + 1 and lines[-1]["action"] == "audit.export"
    page = call(service, "GET", "/api/v1/audit?limit=2", headers=admin)[2]
    older = call(service, "GET", f"/api/v1/audit?limit=2&before={page['next']}", headers=admin)[2]
    assert [e["id"] for e in page["entries"] + older["entries"]] == sorted(
        (e["id"] for e in page["entries"] + older["entries"]), reverse=True)
    assert call(service, "GET", "/api/v1/audit?action=login", headers=admin)[2]["entries"][0]["outcome"] == "refused"


# -- hostile bodies ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "headers", "status", "reason"), [
    (b'{"user": "a", "password": "b"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    (b"{" + b" " * 20000 + b"}", {"Content-Type": "application/json"}, 413, "at most"),
    (b'{"user": "a", "password": "b"}', {"Content-Type": "application/json", "Content-Length": "99999"}, 413,
     "at most"),
    (b'{"user": "a", "user": "b", "password": "c"}', {"Content-Type": "application/json"}, 400, "twice"),
    (b'{"user": "a", "password": "b", "admin": true}', {"Content-Type": "application/json"}, 400, "unknown"),
    (b'{"user": 1, "password": "b"}', {"Content-Type": "application/json"}, 400, "string"),
    (b"[" * 5000, {"Content-Type": "application/json"}, 400, "JSON"),
    (b'{"user": "a", "password": NaN}', {"Content-Type": "application/json"}, 400, "number"),
    (b"\xff\xfe", {"Content-Type": "application/json"}, 400, "JSON"),
])
def test_login_body_is_refused_with_a_reason_when_it_is_hostile(
        service: FleetService, body: bytes, headers: dict[str, str], status: int, reason: str) -> None:
    got, _, answer = request(service, "POST", "/auth/login", body, headers, auth=False)
    assert got == status, answer
    assert reason in json.loads(answer)["error"]
    assert service.alive()


# -- OpenID Connect ------------------------------------------------------------------------------------------------
def session_cookie(svc: FleetService, target: str, pending: str, provider: FakeProvider) -> str:
    """Run the callback again with a fresh pre-login; its session cookie (the answer has two Set-Cookie)."""
    status, headers, _ = call(svc, "GET", "/auth/oidc/login")
    assert svc.http is not None and svc.tls.ca_file is not None
    conn = http.client.HTTPSConnection("127.0.0.1", svc.http.port, timeout=30,
                                       context=ssl.create_default_context(cafile=str(svc.tls.ca_file)))
    try:
        conn.request("GET", target, headers={"Cookie": headers["set-cookie"].split(";")[0]})
        cookies = [v.split(";")[0] for k, v in conn.getresponse().getheaders() if k.lower() == "set-cookie"]
    finally:
        conn.close()
    assert cookies[1] == "__Host-mgw_oidc="  # the pre-login's cookie cleared
    return cookies[0]


class FakeProvider:
    """A thin stand-in for the OIDC client adapter (its protocol only): the claims it would verify."""

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims
        self.kept: list[Mapping[str, str]] = []

    def begin(self) -> tuple[str, dict[str, str]]:
        return "https://idp.example/authorize?state=s1", {"state": "s1", "nonce": "n1", "code_verifier": "v1"}

    def finish(self, params: Mapping[str, str], kept: Mapping[str, str]) -> Mapping[str, Any]:
        self.kept.append(kept)
        if params.get("state") != kept["state"]:
            raise LoginRefused("state does not match")
        return self.claims


@pytest.mark.parametrize(("claims", "outcome"), [
    ({"sub": "u1", "preferred_username": "wei", "groups": ["ops", "staff"], "sites": ["clinic-a"]},
     ("oidc:wei", "operator", ["clinic-a"])),
    ({"sub": "u2", "groups": ["staff"], "sites": ["clinic-a"]}, None),  # no mapped role: refused
    ({"sub": "u3", "groups": ["ops"]}, None),  # sites_claim configured, none given: refused
])
def test_oidc_login_opens_a_session_or_is_refused_and_audited_when_the_provider_returns(
        broker: MosquittoBroker, tmp_path: Path, claims: dict[str, Any], outcome: tuple[str, str, list[str]] | None
        ) -> None:
    provider = FakeProvider(claims)
    oidc = OidcSettings(issuer="https://idp.example", client_id="mgw", sites_claim="sites",
                        redirect_url="https://127.0.0.1/auth/oidc/callback", role_map=("ops=operator", "admins=admin"))
    svc = FleetService(cloud_settings(broker, Backend("sqlite"), oidc=oidc),
                       Paths(tmp_path, tmp_path / "cloud", tmp_path), oidc=provider)
    svc.start()
    try:
        assert call(svc, "GET", "/auth/methods")[2] == {"password": True, "oidc": True}  # login.html offers it
        status, headers, _ = call(svc, "GET", "/auth/oidc/login")
        assert status == 302 and headers["location"].startswith("https://idp.example/authorize")
        pending = headers["set-cookie"].split(";")[0]
        assert pending.startswith("__Host-mgw_oidc=") and "SameSite=Lax" in headers["set-cookie"]
        assert call(svc, "GET", "/auth/oidc/callback?code=c&state=s1")[0] == 400  # no pre-login cookie
        status, headers, answer = call(svc, "GET", "/auth/oidc/callback?code=c&state=s1",
                                       headers={"Cookie": pending})
        assert provider.kept == [{"state": "s1", "nonce": "n1", "code_verifier": "v1"}]
        row = audit_rows(svc, "login")[0]
        if outcome is None:
            assert status == 401 and row["outcome"] == "refused" and row["method"] == "oidc"
            return
        assert status == 302 and headers["location"] == "/"
        cookie = session_cookie(svc, "/auth/oidc/callback?code=c&state=s1", pending, provider)
        status, _, me = call(svc, "GET", "/api/v1/me", headers={"Cookie": cookie})
        assert (me["user"], me["role"], me["sites"], me["method"]) == (*outcome, "oidc")
        assert (row["actor"], row["outcome"]) == (outcome[0], "ok")
        again = call(svc, "GET", "/auth/oidc/callback?code=c&state=s1", headers={"Cookie": pending})
        assert again[0] == 400  # a pre-login is used once
    finally:
        svc.stop()


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "address"), [
    ("10.0.0.9", "203.0.113.7", (), "10.0.0.9"),  # no proxy configured: X-Forwarded-For is ignored
    ("10.0.0.9", "198.51.100.1, 203.0.113.7", ("10.0.0.9",), "203.0.113.7"),  # the hop the proxy saw
    ("10.0.0.8", "203.0.113.7", ("10.0.0.9",), "10.0.0.8"),  # not from the proxy: ignored
])
def test_client_address_is_the_connections_unless_a_trusted_proxy_names_it(
        peer: str, forwarded: str, trusted: tuple[str, ...], address: str) -> None:
    from gateway.cloud.fleet.starlette_auth import client_address

    scope = {"type": "http", "client": (peer, 50000), "headers": [(b"x-forwarded-for", forwarded.encode())]}
    assert client_address(scope, trusted) == address


def test_site_scoped_user_sees_no_figure_of_another_site_when_both_sites_have_exams_and_dead_letters(
        service: FleetService, broker: MosquittoBroker) -> None:
    two_sites(service, broker)
    t0 = time.time() - 4000  # over and stored before now, whatever the time of day
    for n, (box_id, site) in enumerate((("box-a", "clinic-a"), ("box-b", "clinic-b"))):
        box = next(b for b in Box.made if b.box_id == box_id)
        box.send("util", json.dumps({
            "v": 1, "box_id": box_id, "study_key": f"{n}b" * 16, "revision": 1, "modality": "CT", "start": t0,
            "end": t0 + 600, "images": 10, "series": 1, "source": "header", "status": "completed",
            "first_received_at": t0 + 10, "last_received_at": t0 + 620, "cloud_stored_at": t0 + 650,
            "site": site}).encode())
        box.send("health", b'{"v":1,"kind":"heartbeat","box_id":"' + box_id.encode() + b'","bd_seq":1,"disk":"x"}')
    wait_for(lambda: service.counters.exams == 2 and len(service.store.dead_letters()) == 2, 60,
             "both exam records stored and both bad heartbeats set aside")
    admin = bearer(token(service.store, "root"))
    account(service.store, "ana", Role.VIEWER, frozenset({"clinic-a"}))
    ana = Browser(service, "ana")
    for target, rows, key in (("/api/v1/modalities", "modalities", "site"), ("/api/v1/turnaround", "sites", "site"),
                              ("/api/v1/idle-capacity", "scanners", "site"),
                              ("/api/v1/dead-letters", "dead_letters", "box_id")):
        everyone = {r[key] for r in call(service, "GET", target, headers=admin)[2][rows]}
        theirs = {r[key] for r in ana.get(target)[1][rows]}
        assert len(everyone) == 2 and len(theirs) == 1 and theirs < everyone, target
        assert theirs <= {"clinic-a", "box-a"}, target
    groups = ana.get("/api/v1/turnaround/by-modality")[1]["groups"]
    assert {g["site"] for g in groups} == {"clinic-a"}
    assert set(ana.get("/api/v1/idle-capacity")[1]["by_site"]) == {"clinic-a"}
    assert ana.get("/api/v1/dead-letters?box=box-b")[1]["dead_letters"] == []


def test_admin_manages_accounts_over_http_and_others_are_refused_when_they_try(service: FleetService) -> None:
    account(service.store, "root")
    account(service.store, "olga", Role.OPERATOR)
    root, olga = Browser(service, "root"), Browser(service, "olga")
    status, made = root.post("/api/v1/accounts", {"name": "wei", "password": "x" * 11, "role": "viewer"})
    assert status == 400 and "12 characters" in made["error"]
    status, made = root.post("/api/v1/accounts", {"name": "wei", "password": PASSWORD, "role": "viewer",
                                                  "sites": ["clinic-a"]})
    assert status == 200 and (made["name"], made["role"], made["sites"]) == ("wei", "viewer", ["clinic-a"])
    wei = Browser(service, "wei")
    assert olga.get("/api/v1/accounts")[0] == 403
    assert olga.post("/api/v1/accounts/wei/disable")[0] == 403
    status, changed = root.post("/api/v1/accounts/wei/disable")
    assert status == 200 and changed["disabled"] and wei.get("/api/v1/me")[0] == 401
    assert root.post("/api/v1/accounts/nobody/enable")[0] == 404
    assert {"account.create", "account.disable"} <= {r.action for r in service.store.auth.audit(actor="root")}
