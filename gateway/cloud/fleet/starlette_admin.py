"""The console's API token, audit log and OpenID Connect routes (Starlette), beside ``starlette_auth``.

API tokens: an admin manages every token; an operator only their own, and only from a local
account's session (tokens belong to local accounts); a viewer none. The audit log and its export
are an admin's; the export is itself audited. OpenID Connect: ``/auth/oidc/login`` keeps the
client's values (state, nonce, PKCE verifier) in a server-side pre-login record keyed by a random
cookie and redirects to the provider; ``/auth/oidc/callback`` takes that record once, lets the
client verify the answer, maps the claims to a principal (``oidc_login.principal_from_claims``)
and opens a session. Every action and refusal is audited.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.cloud.fleet.accounts import (
    NAME,
    SITE,
    TOKEN_ID,
    Actor,
    export_rows,
    parse_role,
    parse_sites,
    sha256,
    to_csv,
)
from gateway.cloud.fleet.http import Query
from gateway.cloud.fleet.oidc_login import PENDING_S, OidcLogin, principal_from_claims
from gateway.cloud.fleet.starlette_auth import (
    ConsoleAuth,
    actor,
    body,
    hidden,
    json_answer,
    oidc_cookie,
    opened,
    session_cookie_header,
    who,
)
from gateway.core.access import AccessDenied, AuthMethod, LoginRefused, Principal, Role
from gateway.core.errors import RequestError

_NUMBER_ID = re.compile(r"[0-9]{1,18}")
_ACTION = re.compile(r"^[a-z][a-z._]{0,39}$")
_EPOCH = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")
MAX_EPOCH = 1e11


def routes(auth: ConsoleAuth, tls: bool, clock: Callable[[], float] = time.time) -> list[BaseRoute]:
    return [*_admin_routes(auth, clock), *_account_routes(auth), *_oidc_routes(auth, tls, clock)]


def _account_routes(auth: ConsoleAuth) -> list[BaseRoute]:
    """Local accounts over HTTP, an admin's (as ``mgw cloud user``); every change audited by the accounts."""
    accounts = auth.accounts

    def listing(request: Request) -> Response:
        who(request).require(Role.ADMIN, "managing accounts")
        if request.method == "GET":
            Query(request.query_params.multi_items(), ())
            return json_answer({"accounts": accounts.list_accounts()})
        b = body(request, "name", "password", "role", "sites")
        name = b.text("name", 64, required=True, pattern=NAME)
        accounts.create(name, b.text("password", 1024, required=True), parse_role(b.text("role", 20, required=True)),
                        parse_sites(b.strings("sites", SITE)), actor(request))
        return json_answer(next(a for a in accounts.list_accounts() if a["name"] == name))

    def change(request: Request) -> Response:
        who(request).require(Role.ADMIN, "managing accounts")
        name, verb = request.path_params["name"], request.path_params["action"]
        if not NAME.fullmatch(name) or verb not in ("disable", "enable", "unlock"):
            raise hidden("account action")
        body(request)
        if accounts.store.account(name) is None:
            raise hidden("account")
        {"disable": accounts.disable, "enable": accounts.enable, "unlock": accounts.unlock}[verb](name, actor(request))
        return json_answer(next(a for a in accounts.list_accounts() if a["name"] == name))

    return [Route("/api/v1/accounts", listing, methods=["GET", "POST"]),
            Route("/api/v1/accounts/{name}/{action}", change, methods=["POST"])]


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
            return json_answer({"tokens": accounts.tokens(owner)})
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
        return json_answer({**doc, "token": secret})

    def revoke(request: Request) -> Response:
        principal = who(request)
        owner = _token_manager(principal)
        token_id = request.path_params["token_id"]
        if not TOKEN_ID.fullmatch(token_id):
            raise RequestError(f"'token_id' must match {TOKEN_ID.pattern}")
        body(request)
        actual = accounts.token_owner(token_id)
        if actual is None or (owner is not None and actual != owner):
            raise hidden("token")
        if not accounts.revoke_token(token_id, actor(request)):
            return json_answer({"error": "token already revoked"}, 409)
        return json_answer({"id": token_id, "revoked": True})

    def audit(request: Request) -> Response:
        who(request).require(Role.ADMIN, "reading the audit log")
        q = Query(request.query_params.multi_items(), ("actor", "action", "since", "limit", "before"))
        rows = accounts.store.audit(actor=q.values.get("actor"), action=_action(q), since=_since(q),
                                    before_id=_before(q), limit=q.integer("limit", 100, 1, 1000))
        return json_answer({"entries": [r.as_dict() for r in rows],
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


def _oidc_routes(auth: ConsoleAuth, tls: bool, clock: Callable[[], float]) -> list[BaseRoute]:
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
        return RedirectResponse(url, 302, headers={"Set-Cookie": session_cookie_header(
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
        _, set_cookie = opened(accounts, principal, address, tls)
        accounts.audit(Actor.of(principal, address), "login", principal.name)
        response = RedirectResponse("/", 302)
        response.headers.append("Set-Cookie", set_cookie)
        response.headers.append("Set-Cookie", session_cookie_header(pending_cookie, "", 0, tls, same_site="Lax"))
        return response

    def methods(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        return json_answer({"password": True, "oidc": auth.oidc is not None})

    return [Route("/auth/methods", methods), Route("/auth/oidc/login", begin), Route("/auth/oidc/callback", callback)]


def _random_key() -> str:
    return secrets.token_urlsafe(32)
