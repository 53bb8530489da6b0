"""The fleet console's web application (Starlette): routes, the guard, error documents. Only importer of starlette.

``build_app`` makes the ASGI app from a ``FleetDocs``: the REST API (``/api/v1/...``, described
in ``openapi.py``, which a test holds to ``ROUTES``), ``/metrics``, ``/healthz`` and the dashboard's
files (``web/``). ``adapters/uvicorn_server.py`` serves it. Every route is read-only (GET, and
HEAD, which Starlette answers for every GET route); handlers are plain functions, which Starlette
runs in its worker threads, so a slow store never stalls the event loop.

Every request is treated as hostile. ``Guard``, the outermost middleware, refuses a method other
than GET/HEAD (405), any request body (413), a request target over ``MAX_TARGET_BYTES`` (414), and
puts the security headers on every answer. Query parameters are parsed into typed values by
``http.Query`` (unknown, repeated, too long or out of range: 400 with the reason); an unknown path
is 404. Every error answer is a JSON document ``{"error": "<reason>"}``.

Where login, sessions and roles go: as Starlette middleware in ``build_app``'s list, after
``Guard`` (so that an oversized or malformed request is refused before any session is read) and
before the routes: a session middleware, then an authentication middleware that sets
``request.user``/``request.auth``; each route then states the role it needs (the route list in
``build_app`` is the one place routes are named). ``/healthz`` and ``/metrics`` are for machines on
the operations network and would keep their own rule.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.adapters import metrics_http
from gateway.cloud.fleet import i18n, openapi, overview
from gateway.cloud.fleet.http import MAX_TARGET_BYTES, WEB_DIR, FleetDocs, Query
from gateway.cloud.fleet.store import AlertState
from gateway.config import BOX_ID
from gateway.core.alerts import Severity
from gateway.core.errors import GatewayError, RequestError

log = logging.getLogger(__name__)
JSON_TYPE = "application/json; charset=utf-8"
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

        if refusal is not None:
            await refusal(scope, receive, send_secured)
        else:
            await self.app(scope, receive, send_secured)

    @staticmethod
    def _refusal(scope: Scope) -> Response | None:
        if scope["method"] not in ("GET", "HEAD"):
            return _error(405, f"method {scope['method'][:16]} not allowed: the console is read-only",
                          {"Allow": "GET, HEAD"})
        headers = dict(scope["headers"])
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            return _error(413, "a request body is not accepted")
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > MAX_TARGET_BYTES:
            return _error(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
        return None


def _query(request: Request, *allowed: str) -> Query:
    return Query(request.query_params.multi_items(), allowed)


def _visible(request: Request) -> tuple[overview.Visible, str]:
    """Which sites the request's principal may see, and a key naming that scope (for ETags)."""
    principal = request.scope.get("principal")
    if principal is None:
        return overview.everything, "*"
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


def build_app(docs: FleetDocs, alive: Callable[[], bool], tls: bool) -> Starlette:
    """The console's ASGI app over ``docs``; ``alive`` answers /healthz."""

    def healthz(request: Request) -> Response:
        _query(request)
        return JsonResponse({"ok": alive(), "version": __version__, **docs.health()})

    def metrics(request: Request) -> Response:
        _query(request)
        return Response(metrics_http.render(docs.registry), media_type=metrics_http.CONTENT_TYPE)

    def registry(request: Request) -> Response:
        _query(request)
        visible, _ = _visible(request)
        doc = docs.box_list(time.time())
        doc["boxes"] = [b for b in doc["boxes"] if visible(b["site"])]
        return JsonResponse(doc)

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
        doc = docs.box(box_id, time.time())
        visible, _ = _visible(request)
        return JsonResponse(doc) if doc is not None and visible(doc["site"]) else _error(404, "no such box")

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
        return JsonResponse(docs.alerts(_query(request, "all", "days"), time.time()))

    def dead_letters(request: Request) -> Response:
        return JsonResponse(docs.dead_letters(_query(request, "box", "days", "limit"), time.time()))

    def modalities(request: Request) -> Response:
        _query(request)
        return JsonResponse(docs.modalities())

    def utilisation(request: Request) -> Response:
        return JsonResponse(docs.utilisation(_query(request, "box", "modality", "days"), time.time()))

    def turnaround(request: Request) -> Response:
        return JsonResponse(docs.turnaround(_query(request, "days"), time.time()))

    def turnaround_by_modality(request: Request) -> Response:
        return JsonResponse(docs.turnaround_by_modality(_query(request, "days"), time.time()))

    def idle_capacity(request: Request) -> Response:
        _query(request)
        return JsonResponse(docs.idle_capacity(time.time()))

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
        Route("/api/v1/alerts", alerts),
        Route("/api/v1/alerts/grouped", grouped_alerts),
        Route("/i18n/{lang}.json", messages),
        Route("/api/v1/dead-letters", dead_letters),
        Route("/api/v1/modalities", modalities),
        Route("/api/v1/utilisation", utilisation),
        Route("/api/v1/turnaround", turnaround),
        Route("/api/v1/turnaround/by-modality", turnaround_by_modality),
        Route("/api/v1/idle-capacity", idle_capacity),
        Route("/api/v1/openapi.json", openapi_json),
        Mount("/", StaticFiles(directory=WEB_DIR, html=True)),  # "/" is index.html
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, tls=tls)], exception_handlers={
        RequestError: _bad_request, HTTPException: _http_error, GatewayError: _unavailable, Exception: _failed})


def route_paths(app: Starlette) -> list[str]:
    """The API's route paths (``/api/v1/...``, ``/metrics``, ``/healthz``), for the OpenAPI check."""
    return [r.path for r in app.routes if isinstance(r, Route)]


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(400, f"bad request: {exc}")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = "not found" if exc.status_code == 404 else str(exc.detail)
    return _error(exc.status_code, reason, dict(exc.headers or {}))


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.error("fleet API failed", extra={"ERROR": str(exc)})
    return _error(503, str(exc))


async def _failed(request: Request, exc: Exception) -> Response:
    log.error("fleet API request failed", exc_info=exc)
    return _error(500, "internal error (see the fleet service's log)")
