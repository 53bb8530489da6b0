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
maintenance windows (operator), API tokens (an admin manages every token; an operator only
their own), the audit log and its export (admin), and the OpenID Connect redirect and callback.
A site-scoped principal acting on another site's alert, box, silence or window gets 404, as if
it did not exist. Every login, refusal and action is audited (``accounts.Accounts.audit``).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.cloud.fleet.accounts import (
    NAME,
    SITE,
    TOKEN_ID,
    Accounts,
    Actor,
    Session,
    export_rows,
    parse_role,
    parse_sites,
    sha256,
    to_csv,
)
from gateway.cloud.fleet.body import Body
from gateway.cloud.fleet.http import FleetDocs, Query
from gateway.cloud.fleet.oidc_login import PENDING_S, OidcLogin, principal_from_claims
from gateway.cloud.fleet.store import Alert
from gateway.config import BOX_ID, OidcSettings
from gateway.core.access import AccessDenied, AuthMethod, LoginRefused, Principal, Role
from gateway.core.alerts import MAX_NOTE, Maintenance, Silence
from gateway.core.errors import RequestError
from gateway.core.fleet import AlertKind

JSON_TYPE = "application/json; charset=utf-8"
_ID = r"[^/]{1,40}"
WRITE_PATHS = tuple(re.compile(p) for p in (
    r"/auth/login", r"/auth/logout", rf"/api/v1/alerts/{_ID}/ack", r"/api/v1/silences",
    rf"/api/v1/silences/{_ID}/expire",
    r"/api/v1/maintenance", rf"/api/v1/maintenance/{_ID}/end", r"/api/v1/tokens", rf"/api/v1/tokens/{_ID}/revoke"))
OPEN_API_PATHS = frozenset({"/api/v1/openapi.json"})
_NUMBER_ID = re.compile(r"[0-9]{1,18}")
_ACTION = re.compile(r"^[a-z][a-z._]{0,39}$")
_EPOCH = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
MAX_EPOCH = 1e11


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


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
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
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer":
                return await _json({"error": "only Bearer API tokens are accepted"}, 401,
                                   {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            try:
                principal = await run_in_threadpool(self.auth.accounts.resolve_token, value.strip(), address)
            except LoginRefused as exc:
                return await _json({"error": f"API token refused: {exc}"}, 401,
                                   {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        else:
            session_id = Request(scope).cookies.get(self.cookie, "")
            if session_id:
                session = await run_in_threadpool(self.auth.accounts.resolve_session, session_id)
                principal = session.principal if session is not None else None
        if principal is None and needs_principal(scope["path"]):
            return await _json({"error": "authentication required: log in, or send an API token"}, 401,
                               {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        refusal = self._forgery(scope, headers, session)
        if refusal:
            await run_in_threadpool(self.auth.accounts.audit, Actor(principal.name if principal else "",
                                    principal.method.value if principal else "", address),
                                    "csrf", scope["path"][:100], "refused", reason=refusal)
            return await _json({"error": refusal}, 403)(scope, receive, send)
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


def _hidden(what: str) -> HTTPException:
    return HTTPException(404, f"no such {what}")


def _when(b: Body, name: str, now: float, required: bool = False) -> float | None:
    return b.number(name, 0.0, MAX_EPOCH, required=required)


def _scoped_target(docs: FleetDocs, principal: Principal, site: str, box_id: str, what: str) -> None:
    """A site-scoped principal may act on its own sites and boxes only (others are 404)."""
    if principal.sites is None:
        return
    if box_id and not docs.box_visible(principal, box_id):
        raise _hidden("box")
    if site and not principal.can_see(site):
        raise _hidden("site")
    if not site and not box_id:
        raise AccessDenied(f"a site-scoped user's {what} must name one of their sites or boxes")


def _visible_rule(docs: FleetDocs, principal: Principal, site: str, box_id: str) -> bool:
    if principal.sites is None:
        return True
    return bool(site or box_id) and (not box_id or docs.box_visible(principal, box_id)) and (
        not site or principal.can_see(site))


def _session_cookie_headers(name: str, value: str, max_age_s: int, tls: bool, same_site: str = "Strict") -> str:
    secure = "; Secure" if tls else ""
    return f"{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite={same_site}{secure}"


def principal_doc(principal: Principal) -> dict[str, Any]:
    return {"user": principal.name, "role": principal.role.value,
            "sites": None if principal.sites is None else sorted(principal.sites), "method": principal.method.value}


# -- the routes -------------------------------------------------------------------------------------------------
def routes(docs: FleetDocs, auth: ConsoleAuth, tls: bool, clock: Callable[[], float] = time.time) -> list[BaseRoute]:
    accounts = auth.accounts
    cookie = session_cookie(tls)
    session_s = int(accounts.settings.session_hours * 3600)

    def opened(principal: Principal, address: str) -> tuple[Session, str]:
        session_id, session = accounts.open_session(principal, address)
        return session, _session_cookie_headers(cookie, session_id, session_s, tls)

    def login(request: Request) -> Response:
        b = body(request, "user", "password")
        user, password = b.text("user", 200, required=True), b.text("password", 1024, required=True)
        address = request.scope.get("mgw.address", "")
        principal = accounts.login(user, password, address)  # LoginRefused: 401, audited
        session, set_cookie = opened(principal, address)
        return _json({**principal_doc(principal), "csrf": session.csrf}, headers={"Set-Cookie": set_cookie})

    def logout(request: Request) -> Response:
        body(request)
        session_id = request.cookies.get(cookie, "")
        if request.scope.get("mgw.session") is not None and accounts.close_session(session_id):
            accounts.audit(actor(request), "logout", who(request).name)
        return _json({"ok": True}, headers={"Set-Cookie": _session_cookie_headers(cookie, "", 0, tls)})

    def me(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        session = request.scope.get("mgw.session")
        return _json({**principal_doc(who(request)), "csrf": session.csrf if isinstance(session, Session) else None})

    def ack(request: Request) -> Response:
        principal = who(request)
        alert_id = _path_id(request, "alert_id")
        alert = docs.service.store.alert(alert_id)
        if alert is None or not docs.alert_visible(principal, alert):
            raise _hidden("alert")
        principal.require(Role.OPERATOR, "acknowledging an alert")
        note = body(request, "note").text("note", MAX_NOTE)
        change = auth.actions.ack(alert_id, principal.name, note)
        accounts.audit(actor(request), "alert.ack", str(alert_id), kind=alert.kind.value, box_id=alert.box_id,
                       site=alert.site, note=note, changed=bool(change))
        return _json(_ack_doc(docs.service.store.alert(alert_id) or alert))

    def silences(request: Request) -> Response:
        principal = who(request)
        if request.method == "GET":
            q = Query(request.query_params.multi_items(), ("all",))
            shown = [dataclasses.asdict(s) for s in auth.actions.silences(active_only=not q.flag("all"))
                     if _visible_rule(docs, principal, s.site, s.box_id)]
            return _json({"now": clock(), "silences": shown})
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
        return _json(dataclasses.asdict(silence))

    def expire_silence(request: Request) -> Response:
        principal = who(request)
        silence_id = _path_id(request, "silence_id")
        found = next((s for s in auth.actions.silences(active_only=False) if s.id == silence_id), None)
        if found is None or not _visible_rule(docs, principal, found.site, found.box_id):
            raise _hidden("silence")
        principal.require(Role.OPERATOR, "expiring a silence")
        body(request)
        silence = auth.actions.expire_silence(silence_id)
        accounts.audit(actor(request), "silence.expire", str(silence_id), ends_at=silence.ends_at)
        return _json(dataclasses.asdict(silence))

    def maintenance(request: Request) -> Response:
        principal = who(request)
        if request.method == "GET":
            q = Query(request.query_params.multi_items(), ("all",))
            shown = [dataclasses.asdict(m) for m in auth.actions.maintenance_windows(active_only=not q.flag("all"))
                     if _visible_rule(docs, principal, m.site, m.box_id)]
            return _json({"now": clock(), "maintenance": shown})
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
        return _json(dataclasses.asdict(window))

    def end_maintenance(request: Request) -> Response:
        principal = who(request)
        window_id = _path_id(request, "window_id")
        found = next((m for m in auth.actions.maintenance_windows(active_only=False) if m.id == window_id), None)
        if found is None or not _visible_rule(docs, principal, found.site, found.box_id):
            raise _hidden("maintenance window")
        principal.require(Role.OPERATOR, "ending maintenance")
        body(request)
        window = auth.actions.end_maintenance(window_id)
        accounts.audit(actor(request), "maintenance.end", str(window_id), ends_at=window.ends_at)
        return _json(dataclasses.asdict(window))

    return [
        Route("/auth/login", login, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
        Route("/api/v1/me", me),
        Route("/api/v1/alerts/{alert_id}/ack", ack, methods=["POST"]),
        Route("/api/v1/silences", silences, methods=["GET", "POST"]),
        Route("/api/v1/silences/{silence_id}/expire", expire_silence, methods=["POST"]),
        Route("/api/v1/maintenance", maintenance, methods=["GET", "POST"]),
        Route("/api/v1/maintenance/{window_id}/end", end_maintenance, methods=["POST"]),
        *_admin_routes(auth, clock),
        *_oidc_routes(auth, tls, opened, clock),
    ]


def _ack_doc(a: Alert) -> dict[str, Any]:
    return {"id": a.id, "box_id": a.box_id, "kind": a.kind.value, "site": a.site, "acked_at": a.acked_at,
            "acked_by": a.acked_by, "ack_note": a.ack_note}


def _token_manager(principal: Principal) -> str | None:
    """The owner whose tokens ``principal`` manages: None = every owner (an admin); else their own."""
    if principal.has(Role.ADMIN):
        return None
    principal.require(Role.OPERATOR, "managing API tokens")
    if principal.method is not AuthMethod.PASSWORD:
        raise AccessDenied("API tokens belong to local accounts: log in with one to manage your tokens")
    return principal.name


def _admin_routes(auth: ConsoleAuth, clock: Callable[[], float]) -> list[BaseRoute]:
    accounts = auth.accounts

    def tokens(request: Request) -> Response:
        principal = who(request)
        owner = _token_manager(principal)
        if request.method == "GET":
            Query(request.query_params.multi_items(), ())
            return _json({"tokens": accounts.tokens(owner)})
        b = body(request, "name", "role", "sites", "days", "owner")
        wanted_owner = b.text("owner", 64, pattern=NAME)
        if owner is not None and wanted_owner and wanted_owner != owner:
            raise AccessDenied("an operator makes tokens for their own account only")
        token_owner = owner or wanted_owner or (principal.name if principal.method is AuthMethod.PASSWORD else "")
        if not token_owner:
            raise RequestError("'owner' is required when the caller is not a local account")
        sites = parse_sites(b.strings("sites", SITE))
        doc, secret = accounts.create_token(token_owner, b.text("name", 100, required=True),
                                            parse_role(b.text("role", 20, required=True)), sites,
                                            b.number("days", 0.0, 3650.0), actor(request))
        return _json({**doc, "token": secret})

    def revoke(request: Request) -> Response:
        principal = who(request)
        owner = _token_manager(principal)
        token_id = request.path_params["token_id"]
        if not TOKEN_ID.fullmatch(token_id):
            raise RequestError(f"'token_id' must match {TOKEN_ID.pattern}")
        body(request)
        actual = accounts.token_owner(token_id)
        if actual is None or (owner is not None and actual != owner):
            raise _hidden("token")
        if not accounts.revoke_token(token_id, actor(request)):
            return _json({"error": "token already revoked"}, 409)
        return _json({"id": token_id, "revoked": True})

    def audit(request: Request) -> Response:
        who(request).require(Role.ADMIN, "reading the audit log")
        q = Query(request.query_params.multi_items(), ("actor", "action", "since", "limit", "before"))
        rows = accounts.store.audit(actor=q.values.get("actor"), action=_action(q), since=_since(q),
                                    before_id=_before(q), limit=q.integer("limit", 100, 1, 1000))
        return _json({"entries": [r.as_dict() for r in rows],
                      "next": rows[-1].id if rows and len(rows) == q.integer("limit", 100, 1, 1000) else None})

    def export(request: Request) -> Response:
        who(request).require(Role.ADMIN, "exporting the audit log")
        q = Query(request.query_params.multi_items(), ("format", "since"))
        fmt = q.values.get("format", "csv")
        if fmt not in ("csv", "jsonl"):
            raise RequestError("'format' must be csv or jsonl")
        since = _since(q)
        accounts.audit(actor(request), "audit.export", fmt, since=since)
        rows = [r.as_dict() for r in export_rows(accounts, since)]
        content = to_csv(rows) if fmt == "csv" else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8"
        return Response(content, 200, {"Content-Disposition": f'attachment; filename="mgw-audit.{fmt}"'},
                        media_type=media)

    return [
        Route("/api/v1/tokens", tokens, methods=["GET", "POST"]),
        Route("/api/v1/tokens/{token_id}/revoke", revoke, methods=["POST"]),
        Route("/api/v1/audit", audit),
        Route("/api/v1/audit/export", export),
    ]


def _since(q: Query) -> float:
    raw = q.values.get("since")
    if raw is None:
        return 0.0
    if not _EPOCH.fullmatch(raw) or not float(raw) <= MAX_EPOCH:
        raise RequestError("'since' must be a time in seconds since 1970")
    return float(raw)


def _action(q: Query) -> str | None:
    value = q.values.get("action")
    if value is not None and not _ACTION.fullmatch(value):
        raise RequestError(f"'action' must match {_ACTION.pattern}")
    return value


def _before(q: Query) -> int | None:
    raw = q.values.get("before")
    if raw is not None and not _NUMBER_ID.fullmatch(raw):
        raise RequestError("'before' must be an audit entry id")
    return None if raw is None else int(raw)


def _oidc_routes(auth: ConsoleAuth, tls: bool, opened: Callable[[Principal, str], tuple[Session, str]],
                 clock: Callable[[], float]) -> list[BaseRoute]:
    accounts = auth.accounts
    pending_cookie = oidc_cookie(tls)

    def client() -> OidcLogin:
        if auth.oidc is None:
            raise HTTPException(404, "OpenID Connect login is not configured")
        return auth.oidc

    def begin(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        url, kept = client().begin()
        key = _random_key()
        accounts.store.put_pending(sha256(key), json.dumps(kept), clock() + PENDING_S)
        return RedirectResponse(url, 302, headers={"Set-Cookie": _session_cookie_headers(
            pending_cookie, key, int(PENDING_S), tls, same_site="Lax")})  # the provider's redirect back is cross-site

    def callback(request: Request) -> Response:
        oidc = client()
        q = Query(request.query_params.multi_items(), ("code", "state", "iss", "session_state", "error",
                                                        "error_description"))
        address = request.scope.get("mgw.address", "")
        kept_text = accounts.store.take_pending(sha256(request.cookies.get(pending_cookie, "")), clock())
        if kept_text is None:
            raise RequestError("no OpenID Connect login in progress here (or it expired): start again")
        try:
            principal = principal_from_claims(oidc.finish(q.values, json.loads(kept_text)), auth.oidc_settings)
        except LoginRefused as exc:
            accounts.audit(Actor("", AuthMethod.OIDC.value, address), "login", "", "refused", reason=str(exc))
            raise
        _, set_cookie = opened(principal, address)
        accounts.audit(Actor.of(principal, address), "login", principal.name)
        response = RedirectResponse("/", 302)
        response.headers.append("Set-Cookie", set_cookie)
        response.headers.append("Set-Cookie", _session_cookie_headers(pending_cookie, "", 0, tls, same_site="Lax"))
        return response

    return [Route("/auth/oidc/login", begin), Route("/auth/oidc/callback", callback)]


def _random_key() -> str:
    return secrets.token_urlsafe(32)
