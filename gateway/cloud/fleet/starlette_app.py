"""The fleet console's web application (Starlette): routes, the guard, error documents. Only importer of starlette.

``build_app`` makes the ASGI app from a ``FleetDocs``: the REST API (``/api/v1/...``, described
in ``openapi.py``, which a test holds to the routes), ``/metrics``, ``/healthz``, the login and
write routes (``starlette_auth.routes``) and the dashboard's files (``web/``).
``adapters/uvicorn_server.py`` serves it. Handlers are plain functions, which Starlette runs in
its worker threads, so a slow store never stalls the event loop.

Every request is treated as hostile. ``Guard``, the outermost middleware, refuses a method other
than GET/HEAD, or POST on a write route (``starlette_auth.WRITE_PATHS``) (405), a body on anything
but such a POST (413), a POST body that is not ``application/json`` (415) or longer than
``body.MAX_BODY_BYTES`` counted as it arrives (413), a request target over ``MAX_TARGET_BYTES``
(414), and puts the security headers on every answer. ``starlette_auth.Authenticate`` then
resolves the principal (a session cookie or an API token) and checks CSRF; every document is
filtered to the principal's sites (``FleetDocs``). Query parameters are parsed into typed values
by ``http.Query``, bodies by ``body.Body`` (400 with the reason); an unknown path is 404. Every
error answer is a JSON document ``{"error": "<reason>"}``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.adapters import metrics_http
from gateway.cloud.fleet import commission_docs, i18n, openapi, overview
from gateway.cloud.fleet.body import MAX_BODY_BYTES
from gateway.cloud.fleet.http import MAX_TARGET_BYTES, WEB_DIR, FleetDocs, Query
from gateway.cloud.fleet.starlette_admin import routes as admin_routes
from gateway.cloud.fleet.starlette_auth import WRITE_PATHS, Authenticate, ConsoleAuth, actor, who
from gateway.cloud.fleet.starlette_auth import routes as auth_routes
from gateway.cloud.fleet.starlette_commands import routes as command_routes
from gateway.cloud.fleet.store import AlertState
from gateway.config import BOX_ID
from gateway.core.access import AccessDenied, LoginRefused
from gateway.core.alerts import Severity
from gateway.core.errors import AccountError, AlertRequestError, GatewayError, RequestError

log = logging.getLogger(__name__)
JSON_TYPE = "application/json; charset=utf-8"
REPORT_ID = re.compile(r"[0-9a-f]{32}")
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]


class JsonResponse(Response):
    media_type = JSON_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False).encode()


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse({"error": reason}, status, headers)


class Guard:
    """Refuses what no route takes before any route runs, and adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app = app
        self.headers = SECURITY_HEADERS + ([(b"strict-transport-security", b"max-age=31536000")] if tls else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets, no lifespan: the server runs with lifespan off
        refusal = self._refusal(scope)

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [h for h in message.get("headers", []) if h[0] not in dict(self.headers)]
                message["headers"] += self.headers
            await send(message)

        if refusal is None and scope["method"] == "POST":
            refusal, body = await self._read_body(scope, receive)
            if body is None and refusal is None:
                return  # the client went away
            scope["mgw.body"] = body
            receive = _replay(body or b"")
        if refusal is not None:
            await refusal(scope, receive, send_secured)
        else:
            await self.app(scope, receive, send_secured)

    @staticmethod
    def _refusal(scope: Scope) -> Response | None:
        writable = any(p.fullmatch(scope["path"]) for p in WRITE_PATHS)
        if scope["method"] not in ("GET", "HEAD") and not (scope["method"] == "POST" and writable):
            allow = "GET, HEAD, POST" if writable else "GET, HEAD"
            return _error(405, f"method {scope['method'][:16]} not allowed here", {"Allow": allow})
        headers = dict(scope["headers"])
        if scope["method"] != "POST" and (headers.get(b"content-length", b"0") != b"0"
                                          or b"transfer-encoding" in headers):
            return _error(413, "a request body is not accepted")
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > MAX_TARGET_BYTES:
            return _error(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
        return None

    @staticmethod
    async def _read_body(scope: Scope, receive: Receive) -> tuple[Response | None, bytes | None]:
        """A POST's body, at most ``MAX_BODY_BYTES`` counted as they arrive; a non-empty one must be JSON."""
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return _error(413, f"a request body is at most {MAX_BODY_BYTES} bytes"), b""
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                return _error(413, f"a request body is at most {MAX_BODY_BYTES} bytes"), b""
            if not message.get("more_body", False):
                break
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and media != b"application/json":
            return _error(415, "a request body must be application/json"), b""
        return None, body


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands the app the body the Guard already read."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _query(request: Request, *allowed: str) -> Query:
    return Query(request.query_params.multi_items(), allowed)


def _visible(request: Request) -> tuple[overview.Visible, str]:
    """Which sites the request's principal may see, and a key naming that scope (for ETags)."""
    principal = who(request)  # Authenticate puts one on every /api/ path
    return principal.can_see, repr((principal.name, principal.role, principal.sites))


def _cached(request: Request, doc: dict[str, Any], scope: str, key: str) -> Response:
    """304 when the browser's If-None-Match holds the document's ETag (its revision, the principal's
    scope and the query); else the document, with its ETag."""
    etag = overview.etag(doc["revision"], scope, key)
    if etag in request.headers.get("if-none-match", "").split(", "):
        return Response(status_code=304, headers={"ETag": etag})
    return JsonResponse(doc, headers={"ETag": etag})


BOX_QUERY = ("q", "site", "region", "modality", "status", "version", "sort", "order", "offset", "limit", "group",
             "since")


def _box_query(request: Request) -> overview.BoxQuery:
    q = _query(request, *BOX_QUERY)
    return overview.parse_box_query(q.values, q.choice, q.integer)


def build_app(docs: FleetDocs, alive: Callable[[], bool], tls: bool, auth: ConsoleAuth) -> Starlette:
    """The console's ASGI app over ``docs``; ``alive`` answers /healthz; ``auth`` says who asks."""

    def healthz(request: Request) -> Response:
        _query(request)
        return JsonResponse({"ok": alive(), "version": __version__, **docs.health()})

    def metrics(request: Request) -> Response:
        _query(request)
        return Response(docs.metrics(who(request)), media_type=metrics_http.CONTENT_TYPE)

    def registry(request: Request) -> Response:
        _query(request)
        return JsonResponse(docs.box_list(who(request), time.time()))

    def fleet_overview(request: Request) -> Response:
        _query(request)
        visible, scope = _visible(request)
        return _cached(request, docs.overview.overview(time.time(), visible), scope, "overview")

    def boxes(request: Request) -> Response:
        q = _box_query(request)
        visible, scope = _visible(request)
        return _cached(request, docs.overview.boxes(q, time.time(), visible), scope, q.key())

    def box(request: Request) -> Response:
        _query(request)
        box_id = request.path_params["box_id"]
        if not BOX_ID.fullmatch(box_id):
            raise RequestError(f"box id must match {BOX_ID.pattern}")
        doc = docs.box(who(request), box_id, time.time())
        return JsonResponse(doc) if doc is not None else _error(404, "no such box")

    def grouped_alerts(request: Request) -> Response:
        q = _query(request, "state", "severity", "site", "days", "limit")
        visible, scope = _visible(request)
        state = AlertState(q.choice("state", tuple(AlertState), AlertState.OPEN.value) or AlertState.OPEN.value)
        severity = q.choice("severity", tuple(Severity), None)
        site = q.text("site", overview.TEXT)
        doc = docs.overview.alerts(state, None if severity is None else Severity(severity), site, q.days("days", 7.0),
                                   q.integer("limit", 500, 1, overview.MAX_ALERTS), time.time(), visible)
        return _cached(request, doc, scope, "alerts?" + request.url.query)

    def messages(request: Request) -> Response:
        _query(request)
        return JsonResponse(i18n.messages(request.path_params["lang"]) or {}) if i18n.known(
            request.path_params["lang"]) else _error(404, "no such language")

    def alerts(request: Request) -> Response:
        return JsonResponse(docs.alerts(who(request), _query(request, "all", "days"), time.time()))

    def dead_letters(request: Request) -> Response:
        return JsonResponse(docs.dead_letters(who(request), _query(request, "box", "days", "limit"), time.time()))

    def archive_versions(request: Request) -> Response:
        doc = docs.archive_versions(who(request), _query(request, "sop_instance_uid"))
        auth.accounts.audit(actor(request), "archive.versions", "", "ok", versions=len(doc["versions"]))  # no UID
        return JsonResponse(doc)

    def modalities(request: Request) -> Response:
        _query(request)
        return JsonResponse(docs.modalities(who(request)))

    def worklist_feed(request: Request) -> Response:
        _query(request)
        return JsonResponse(docs.worklist_feed(who(request), time.time()))

    def utilisation(request: Request) -> Response:
        doc = docs.utilisation(who(request), _query(request, "box", "modality", "days"), time.time())
        return JsonResponse(doc) if doc is not None else _error(404, "no such box")

    def turnaround(request: Request) -> Response:
        return JsonResponse(docs.turnaround(who(request), _query(request, "days"), time.time()))

    def turnaround_by_modality(request: Request) -> Response:
        return JsonResponse(docs.turnaround_by_modality(who(request), _query(request, "days"), time.time()))

    def idle_capacity(request: Request) -> Response:
        _query(request)
        return JsonResponse(docs.idle_capacity(who(request), time.time()))

    def box_commissioning(request: Request) -> Response:
        _query(request)
        box_id = request.path_params["box_id"]
        if not BOX_ID.fullmatch(box_id):
            raise RequestError(f"box id must match {BOX_ID.pattern}")
        reports = commission_docs.box_reports(docs.service.store, docs, who(request), box_id)
        return JsonResponse({"box_id": box_id, "reports": reports})

    def _commission_report(request: Request) -> dict[str, Any] | None:
        report_id = request.path_params["report_id"]
        if not REPORT_ID.fullmatch(report_id):
            raise RequestError(f"report id must match {REPORT_ID.pattern}")
        return commission_docs.report(docs.service.store, docs, docs.service.fleet, who(request), report_id)

    def commissioning_report(request: Request) -> Response:
        _query(request)
        doc = _commission_report(request)
        return JsonResponse(doc) if doc is not None else _error(404, "no such report")

    def commissioning_pdf(request: Request) -> Response:
        lang = _query(request, "lang").choice("lang", tuple(i18n.LANGUAGES), "en") or "en"
        doc = _commission_report(request)
        if doc is None:
            return _error(404, "no such report")
        body = commission_docs.pdf(doc, lang)
        name = f"commissioning-{doc['box_id']}-{doc['report_id'][:8]}.pdf"
        return Response(body, media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{name}"'})

    def openapi_json(request: Request) -> Response:
        _query(request)
        return JsonResponse(openapi.document(__version__))

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/api/v1/overview", fleet_overview),
        Route("/api/v1/boxes", boxes),
        Route("/api/v1/registry", registry),
        Route("/api/v1/boxes/{box_id}", box),
        Route("/api/v1/boxes/{box_id}/commissioning", box_commissioning),
        Route("/api/v1/commissioning/{report_id}", commissioning_report),
        Route("/api/v1/commissioning/{report_id}/pdf", commissioning_pdf),
        Route("/api/v1/alerts", alerts),
        Route("/api/v1/alerts/grouped", grouped_alerts),
        Route("/i18n/{lang}.json", messages),
        Route("/api/v1/dead-letters", dead_letters),
        Route("/api/v1/archive/versions", archive_versions),
        Route("/api/v1/modalities", modalities),
        Route("/api/v1/worklist/feed", worklist_feed),
        Route("/api/v1/utilisation", utilisation),
        Route("/api/v1/turnaround", turnaround),
        Route("/api/v1/turnaround/by-modality", turnaround_by_modality),
        Route("/api/v1/idle-capacity", idle_capacity),
        Route("/api/v1/openapi.json", openapi_json),
        *auth_routes(docs, auth, tls),
        *admin_routes(auth, tls),
        *command_routes(docs, auth),
        Mount("/", StaticFiles(directory=WEB_DIR, html=True)),  # "/" is index.html
    ]
    middleware = [Middleware(Guard, tls=tls), Middleware(Authenticate, auth=auth, tls=tls)]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        RequestError: _bad_request, AlertRequestError: _bad_request, AccountError: _bad_request,
        LoginRefused: _refused, AccessDenied: _denied, HTTPException: _http_error, GatewayError: _unavailable,
        Exception: _failed})
    app.state.auth = auth
    return app


def route_paths(app: Starlette) -> list[str]:
    """The API's route paths (``/api/v1/...``, ``/metrics``, ``/healthz``, ``/auth/...``), each once."""
    return sorted({r.path for r in app.routes if isinstance(r, Route)})


def route_methods(app: Starlette) -> dict[str, set[str]]:
    """Each route path's methods (lower case, HEAD left out), for the OpenAPI check."""
    out: dict[str, set[str]] = {}
    for r in app.routes:
        if isinstance(r, Route):
            out.setdefault(r.path, set()).update(m.lower() for m in (r.methods or ()) if m != "HEAD")
    return out


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(400, f"bad request: {exc}")


async def _refused(request: Request, exc: Exception) -> Response:
    return _error(401, str(exc))


async def _denied(request: Request, exc: Exception) -> Response:
    auth: ConsoleAuth = request.app.state.auth
    await run_in_threadpool(auth.accounts.audit, actor(request), request.url.path[:100], "", "refused",
                            reason=str(exc))
    return _error(403, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = "not found" if exc.status_code == 404 and exc.detail == "Not Found" else str(exc.detail)
    return _error(exc.status_code, reason, dict(exc.headers or {}))


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.error("fleet API failed", extra={"ERROR": str(exc)})
    return _error(503, str(exc))


async def _failed(request: Request, exc: Exception) -> Response:
    log.error("fleet API request failed", exc_info=exc)
    return _error(500, "internal error (see the fleet service's log)")
