"""The console's authentication and its write routes (Starlette): who is asking, and what they may change.

``Authenticate`` is the middleware after ``starlette_app.Guard`` (which has already refused an
oversized or malformed request and read a POST's body within its bound). It resolves
``Authorization: Bearer mgw_<id>_<secret>`` (an API token) or the session cookie into a
``core.access.Principal`` at ``request.scope["principal"]``. Without one, the API, ``/metrics``
and logout answer 401; ``/healthz``, the OpenAPI document, the login routes and the static
pages (which hold no data: the app fetches everything from the API and goes to the login page
on a 401) stay open. A POST authenticated by the session cookie must carry ``X-CSRF-Token``
equal to its session's token; any POST with an ``Origin`` must come from the console's own.

The routes (``routes``): login and logout, ``/api/v1/me``, acknowledging alerts, silences and
maintenance windows (operator); API tokens, the audit log and OpenID Connect are
``starlette_admin.py``'s.
A site-scoped principal acting on another site's alert, box, silence or window gets 404, as if
it did not exist. Every login, refusal and action is audited (``accounts.Accounts.audit``).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.cloud.fleet.accounts import (
    SITE,
    Accounts,
    Actor,
    Session,
)
from gateway.cloud.fleet.body import Body
from gateway.cloud.fleet.http import FleetDocs, Query
from gateway.cloud.fleet.oidc_login import OidcLogin
from gateway.cloud.fleet.store import Alert
from gateway.config import BOX_ID, OidcSettings
from gateway.core.access import AccessDenied, LoginRefused, Principal, Role
from gateway.core.alerts import MAX_NOTE, Maintenance, Silence
from gateway.core.errors import GatewayError, RequestError
from gateway.core.fleet import AlertKind

JSON_TYPE = "application/json; charset=utf-8"
_ID = r"[^/]{1,200}"  # the route parses the id itself (400 or 404 with a reason)
WRITE_PATHS = tuple(re.compile(p) for p in (
    r"/auth/login", r"/auth/logout", rf"/api/v1/alerts/{_ID}/ack", r"/api/v1/silences",
    rf"/api/v1/silences/{_ID}/expire",
    r"/api/v1/maintenance", rf"/api/v1/maintenance/{_ID}/end", r"/api/v1/tokens", rf"/api/v1/tokens/{_ID}/revoke",
    r"/api/v1/accounts", rf"/api/v1/accounts/{_ID}/{_ID}", rf"/api/v1/boxes/{_ID}/commands", r"/api/v1/rollouts"))
OPEN_API_PATHS = frozenset({"/api/v1/openapi.json"})
_NUMBER_ID = re.compile(r"[0-9]{1,18}")
MAX_EPOCH = 1e11

log = logging.getLogger(__name__)


class AlertActions(Protocol):
    """What the write routes change, in the fleet service (``fleet.service.FleetService``)."""

    def ack(self, alert_id: int, who: str, note: str, now: float | None = None) -> dict[str, tuple[object, object]]: ...
    def silence(self, *, box_id: str = "", site: str = "", kind: str = "", ends_at: float, who: str, reason: str,
                starts_at: float | None = None, now: float | None = None) -> Silence: ...
    def expire_silence(self, silence_id: int, now: float | None = None) -> Silence: ...
    def silences(self, *, active_only: bool = True, now: float | None = None) -> list[Silence]: ...
    def maintenance(self, *, site: str = "", box_id: str = "", starts_at: float, ends_at: float, who: str,
                    reason: str = "", now: float | None = None) -> Maintenance: ...
    def end_maintenance(self, window_id: int, now: float | None = None) -> Maintenance: ...
    def maintenance_windows(self, *, active_only: bool = True, now: float | None = None) -> list[Maintenance]: ...


@dataclass(frozen=True)
class ConsoleAuth:
    """What the authentication and write routes need, made by the fleet service."""

    accounts: Accounts
    actions: AlertActions
    trusted_proxies: tuple[str, ...] = ()
    oidc: OidcLogin | None = None
    oidc_settings: OidcSettings = dataclasses.field(default_factory=OidcSettings)


def session_cookie(tls: bool) -> str:
    return "__Host-mgw_session" if tls else "mgw_session"  # __Host- needs Secure, so HTTPS


def oidc_cookie(tls: bool) -> str:
    return "__Host-mgw_oidc" if tls else "mgw_oidc"


def json_answer(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc, ensure_ascii=False), status, headers, media_type=JSON_TYPE)


def needs_principal(path: str) -> bool:
    return (path.startswith("/api/") and path not in OPEN_API_PATHS) or path in ("/metrics", "/auth/logout")


def client_address(scope: Scope, trusted_proxies: Sequence[str]) -> str:
    """The client's address as uvicorn saw it; behind a configured proxy, the last hop it names."""
    peer = (scope.get("client") or ("", 0))[0] or ""
    if peer in trusted_proxies:
        forwarded = Headers(scope=scope).get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops and len(hops[-1]) <= 64:
            return hops[-1]
    return str(peer)[:64]


def _unauthenticated(reason: str) -> Response:
    return json_answer({"error": reason}, 401, {"WWW-Authenticate": "Bearer"})


class Authenticate:
    """Puts the request's principal (or None) at ``scope["principal"]``; 401/403 for what needs one or a CSRF token."""

    def __init__(self, app: ASGIApp, auth: ConsoleAuth, tls: bool) -> None:
        self.app = app
        self.auth = auth
        self.tls = tls
        self.cookie = session_cookie(tls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        address = client_address(scope, self.auth.trusted_proxies)
        scope["mgw.address"] = address
        headers = Headers(scope=scope)
        principal: Principal | None = None
        session: Session | None = None
        authorization = headers.get("authorization")
        try:
            if authorization is not None:
                scheme, _, value = authorization.partition(" ")
                if scheme.lower() != "bearer":
                    return await _unauthenticated("only Bearer API tokens are accepted")(scope, receive, send)
                try:
                    principal = await run_in_threadpool(self.auth.accounts.resolve_token, value.strip(), address)
                except LoginRefused as exc:
                    return await _unauthenticated(f"API token refused: {exc}")(scope, receive, send)
            else:
                session_id = Request(scope).cookies.get(self.cookie, "")
                if session_id:
                    session = await run_in_threadpool(self.auth.accounts.resolve_session, session_id)
                    principal = session.principal if session is not None else None
        except GatewayError as exc:  # the store is out of reach: nobody can be checked, so nothing is served
            if needs_principal(scope["path"]):
                log.error("console cannot check who asks", extra={"ERROR": str(exc)})
                return await json_answer({"error": f"cannot check the session or token: {exc}"}, 503)(
                    scope, receive, send)
            principal, session = None, None
        if principal is None and needs_principal(scope["path"]):
            return await _unauthenticated("authentication required: log in, or send an API token")(
                scope, receive, send)
        refusal = self._forgery(scope, headers, session)
        if refusal:
            who_asks = Actor(principal.name, principal.method.value, address) if principal else Actor("", "", address)
            await run_in_threadpool(self.auth.accounts.audit, who_asks, "csrf", scope["path"][:100], "refused",
                                    reason=refusal)
            return await json_answer({"error": refusal}, 403)(scope, receive, send)
        scope["principal"] = principal
        scope["mgw.session"] = session
        await self.app(scope, receive, send)

    def _forgery(self, scope: Scope, headers: Headers, session: Session | None) -> str:
        """Why a POST looks forged ("" when it does not)."""
        if scope["method"] != "POST":
            return ""
        origin = headers.get("origin")
        own = f"{'https' if self.tls else 'http'}://{headers.get('host', '')}"
        if origin is not None and origin != own:
            return "cross-origin request refused"
        if session is not None and scope["path"] not in ("/auth/login",):
            token = headers.get("x-csrf-token", "")
            if not hmac.compare_digest(token.encode(), session.csrf.encode()):
                return "missing or wrong X-CSRF-Token"
        return ""


# -- helpers of the routes ---------------------------------------------------------------------------------
def who(request: Request) -> Principal:
    principal = request.scope.get("principal")
    assert isinstance(principal, Principal)  # noqa: S101 - Authenticate refuses these paths without one
    return principal


def actor(request: Request) -> Actor:
    return Actor.of(who(request), request.scope.get("mgw.address", ""))


def body(request: Request, *allowed: str) -> Body:
    return Body(request.scope.get("mgw.body", b"") or b"{}", allowed)


def _path_id(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not _NUMBER_ID.fullmatch(raw):
        raise RequestError(f"{name!r} must be a whole number")
    return int(raw)


def hidden(what: str) -> HTTPException:
    return HTTPException(404, f"no such {what}")


def _when(b: Body, name: str, now: float, required: bool = False) -> float | None:
    return b.number(name, 0.0, MAX_EPOCH, required=required)


def _scoped_target(docs: FleetDocs, principal: Principal, site: str, box_id: str, what: str) -> None:
    """A site-scoped principal may act on its own sites and boxes only (others are 404)."""
    if principal.sites is None:
        return
    if box_id and not docs.box_visible(principal, box_id):
        raise hidden("box")
    if site and not principal.can_see(site):
        raise hidden("site")
    if not site and not box_id:
        raise AccessDenied(f"a site-scoped user's {what} must name one of their sites or boxes")


def _visible_rule(docs: FleetDocs, principal: Principal, site: str, box_id: str) -> bool:
    if principal.sites is None:
        return True
    return bool(site or box_id) and (not box_id or docs.box_visible(principal, box_id)) and (
        not site or principal.can_see(site))


def session_cookie_header(name: str, value: str, max_age_s: int, tls: bool, same_site: str = "Strict") -> str:
    secure = "; Secure" if tls else ""
    return f"{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite={same_site}{secure}"


def opened(accounts: Accounts, principal: Principal, address: str, tls: bool) -> tuple[Session, str]:
    """A new session for ``principal``, and the Set-Cookie that hands it to the browser."""
    session_id, session = accounts.open_session(principal, address)
    max_age_s = int(accounts.settings.session_hours * 3600)
    return session, session_cookie_header(session_cookie(tls), session_id, max_age_s, tls)


def principal_doc(principal: Principal) -> dict[str, Any]:
    return {"user": principal.name, "role": principal.role.value,
            "sites": None if principal.sites is None else sorted(principal.sites), "method": principal.method.value}


# -- the routes -------------------------------------------------------------------------------------------------
def routes(docs: FleetDocs, auth: ConsoleAuth, tls: bool, clock: Callable[[], float] = time.time) -> list[BaseRoute]:
    accounts = auth.accounts
    cookie = session_cookie(tls)

    def login(request: Request) -> Response:
        b = body(request, "user", "password")
        user, password = b.text("user", 200, required=True), b.text("password", 1024, required=True)
        address = request.scope.get("mgw.address", "")
        principal = accounts.login(user, password, address)  # LoginRefused: 401, audited
        accounts.close_session(request.cookies.get(cookie, ""))  # a new login never keeps an old session id
        session, set_cookie = opened(accounts, principal, address, tls)
        return json_answer({**principal_doc(principal), "csrf": session.csrf}, headers={"Set-Cookie": set_cookie})

    def logout(request: Request) -> Response:
        body(request)
        session_id = request.cookies.get(cookie, "")
        if request.scope.get("mgw.session") is not None and accounts.close_session(session_id):
            accounts.audit(actor(request), "logout", who(request).name)
        return json_answer({"ok": True}, headers={"Set-Cookie": session_cookie_header(cookie, "", 0, tls)})

    def me(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        session = request.scope.get("mgw.session")
        csrf = session.csrf if isinstance(session, Session) else None
        return json_answer({**principal_doc(who(request)), "csrf": csrf})

    def ack(request: Request) -> Response:
        principal = who(request)
        alert_id = _path_id(request, "alert_id")
        alert = docs.service.store.alert(alert_id)
        if alert is None or not docs.alert_visible(principal, alert):
            raise hidden("alert")
        principal.require(Role.OPERATOR, "acknowledging an alert")
        note = body(request, "note").text("note", MAX_NOTE)
        change = auth.actions.ack(alert_id, principal.name, note)
        accounts.audit(actor(request), "alert.ack", str(alert_id), kind=alert.kind.value, box_id=alert.box_id,
                       site=alert.site, note=note, changed=bool(change))
        return json_answer(_ack_doc(docs.service.store.alert(alert_id) or alert))

    def listed(request: Request, principal: Principal, key: str,
               rules: Callable[..., Sequence[Any]]) -> Response:
        """GET: the silences or maintenance windows of the principal's sites in force (``?all=1``: every one)."""
        q = Query(request.query_params.multi_items(), ("all",))
        shown = [dataclasses.asdict(r) for r in rules(active_only=not q.flag("all"))
                 if _visible_rule(docs, principal, r.site, r.box_id)]
        return json_answer({"now": clock(), key: shown})

    def silences(request: Request) -> Response:
        principal = who(request)
        if request.method == "GET":
            return listed(request, principal, "silences", auth.actions.silences)
        principal.require(Role.OPERATOR, "silencing alerts")
        b = body(request, "box_id", "site", "kind", "starts_at", "ends_at", "reason")
        box_id, site = b.text("box_id", 64, pattern=BOX_ID), b.text("site", 64, pattern=SITE)
        kind = b.text("kind", 40)
        if kind and kind not in {k.value for k in AlertKind}:
            raise RequestError(f"'kind' must be one of {', '.join(k.value for k in AlertKind)}")
        _scoped_target(docs, principal, site, box_id, "silence")
        silence = auth.actions.silence(box_id=box_id, site=site, kind=kind, starts_at=_when(b, "starts_at", clock()),
                                       ends_at=_when(b, "ends_at", clock(), required=True) or 0.0,
                                       who=principal.name, reason=b.text("reason", MAX_NOTE, required=True))
        accounts.audit(actor(request), "silence.create", str(silence.id), box_id=box_id, site=site, kind=kind,
                       starts_at=silence.starts_at, ends_at=silence.ends_at, reason=silence.reason)
        return json_answer(dataclasses.asdict(silence))

    def ender(what: str, param: str, rules: Callable[[], Sequence[Any]], end: Callable[[int], Any],
              action: str, verb: str) -> Callable[[Request], Response]:
        """POST .../{id}/expire|end: a silence or maintenance window of the principal's sites, ended now."""

        def handler(request: Request) -> Response:
            principal = who(request)
            rule_id = _path_id(request, param)
            found = next((r for r in rules() if r.id == rule_id), None)
            if found is None or not _visible_rule(docs, principal, found.site, found.box_id):
                raise hidden(what)
            principal.require(Role.OPERATOR, verb)
            body(request)
            ended = end(rule_id)
            accounts.audit(actor(request), action, str(rule_id), ends_at=ended.ends_at)
            return json_answer(dataclasses.asdict(ended))

        return handler

    expire_silence = ender("silence", "silence_id", lambda: auth.actions.silences(active_only=False),
                           auth.actions.expire_silence, "silence.expire", "expiring a silence")

    def maintenance(request: Request) -> Response:
        principal = who(request)
        if request.method == "GET":
            return listed(request, principal, "maintenance", auth.actions.maintenance_windows)
        principal.require(Role.OPERATOR, "planning maintenance")
        b = body(request, "site", "box_id", "starts_at", "ends_at", "reason")
        box_id, site = b.text("box_id", 64, pattern=BOX_ID), b.text("site", 64, pattern=SITE)
        _scoped_target(docs, principal, site, box_id, "maintenance window")
        now = clock()
        window = auth.actions.maintenance(site=site, box_id=box_id, starts_at=_when(b, "starts_at", now) or now,
                                          ends_at=_when(b, "ends_at", now, required=True) or 0.0, who=principal.name,
                                          reason=b.text("reason", MAX_NOTE))
        accounts.audit(actor(request), "maintenance.create", str(window.id), site=site, box_id=box_id,
                       starts_at=window.starts_at, ends_at=window.ends_at, reason=window.reason)
        return json_answer(dataclasses.asdict(window))

    end_maintenance = ender("maintenance window", "window_id",
                            lambda: auth.actions.maintenance_windows(active_only=False),
                            auth.actions.end_maintenance, "maintenance.end", "ending maintenance")

    return [
        Route("/auth/login", login, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
        Route("/api/v1/me", me),
        Route("/api/v1/alerts/{alert_id}/ack", ack, methods=["POST"]),
        Route("/api/v1/silences", silences, methods=["GET", "POST"]),
        Route("/api/v1/silences/{silence_id}/expire", expire_silence, methods=["POST"]),
        Route("/api/v1/maintenance", maintenance, methods=["GET", "POST"]),
        Route("/api/v1/maintenance/{window_id}/end", end_maintenance, methods=["POST"]),
    ]


def _ack_doc(a: Alert) -> dict[str, Any]:
    return {"id": a.id, "box_id": a.box_id, "kind": a.kind.value, "site": a.site, "acked_at": a.acked_at,
            "acked_by": a.acked_by, "ack_note": a.ack_note}
