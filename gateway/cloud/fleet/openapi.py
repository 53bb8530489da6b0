"""The console API described in OpenAPI 3.1, written by hand next to the routes (``starlette_app.build_app``).

Served at ``/api/v1/openapi.json``. tests/cloud/test_console.py checks that every route is
described here and nothing else, and runs a schema-driven fuzzer (schemathesis) against a running
service: no answer may be a 5xx, and every answer must match what this document says of it.
Documents may gain fields (objects are open); a field listed here keeps its name and type.
"""

from __future__ import annotations

from typing import Any

from gateway.cloud.archive import versions
from gateway.cloud.fleet import overview
from gateway.cloud.fleet.accounts import NAME as NAME_PATTERN
from gateway.cloud.fleet.accounts import SITE as SITE_PATTERN
from gateway.cloud.fleet.body import MAX_BODY_BYTES
from gateway.cloud.fleet.http import MAX_QUERY_VALUE_CHARS, MAX_TARGET_BYTES, MODALITY
from gateway.config import BOX_ID

Schema = dict[str, Any]


def _obj(required: list[str], **props: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": props}


def _null(type_: str) -> Schema:
    return {"type": [type_, "null"]}


NUM, INT, STR, BOOL = {"type": "number"}, {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
ANY_OBJ: Schema = {"type": "object"}
ERROR = _obj(["error"], error=STR)
BOX = _obj(
    ["box_id", "site", "version", "online", "last_seen", "changed_at", "first_seen", "bd_seq", "alerts"],
    box_id=STR, site=STR, version=STR, online=BOOL, last_seen=NUM, changed_at=NUM, first_seen=NUM, bd_seq=INT,
    alerts={"type": "array", "items": STR}, backlog={"type": ["object", "null"]}, disk={"type": ["object", "null"]},
    cpu_temp_c=_null("number"), cert_not_after=_null("number"), last_study=ANY_OBJ, uptime_s=_null("number"),
    reconnects=_null("integer"), quarantine_items=_null("integer"), heartbeat_at=_null("number"))
ALERT = _obj(["id", "box_id", "kind", "subject", "detail", "raised_at", "cleared_at"],
             id=INT, box_id=STR, kind=STR, subject=STR, detail=STR, raised_at=NUM, cleared_at=_null("number"))
EXAM = _obj(["study_key", "modality", "start", "end", "images", "status", "turnaround_s"],
            study_key=STR, modality=STR, start=NUM, end=NUM, images=INT, series=INT, source=STR, status=STR,
            turnaround_s=_null("number"))
POINTS: Schema = {"type": "array", "items": {"type": "array", "items": _null("number"), "minItems": 2, "maxItems": 2}}
SERIES = _obj(["backlog_items", "backlog_bytes", "oldest_age_s", "disk_used_percent", "exams_per_hour",
               "images_delivered_per_hour", "turnaround_s"], backlog_items=POINTS, backlog_bytes=POINTS,
              oldest_age_s=POINTS, disk_used_percent=POINTS, exams_per_hour=POINTS, images_delivered_per_hour=POINTS,
              turnaround_s=POINTS)
BOX_CONFIG = _obj(["version", "site", "region", "tz", "opening_hours", "turnaround_target_s", "modalities"],
                  version=STR, site=STR, region=STR, tz=STR, opening_hours={"type": "array", "items": STR},
                  turnaround_target_s=NUM, modalities={"type": "array", "items": STR})
BOX_DETAIL: Schema = {"allOf": [BOX, _obj(["now", "history", "recent_exams", "alert_log", "series", "config",
                                           "dead_letters"], now=NUM,
                                          history={"type": "array", "items": ANY_OBJ},
                                          recent_exams={"type": "array", "items": EXAM},
                                          alert_log={"type": "array", "items": ALERT},
                                          series=SERIES, config=BOX_CONFIG,
                                          dead_letters={"type": "array", "items": ANY_OBJ})]}
NULL_NUM: Schema = {"type": ["number", "null"]}
WORKLIST_BOX = _obj(["box_id", "has_key", "routes", "entries", "left_out", "seq", "published_at", "cleared"],
                    box_id=STR, has_key=BOOL, routes={"type": "array", "items": STR}, entries=INT, left_out=INT,
                    seq=INT, published_at=NULL_NUM, cleared=BOOL)
WORKLIST_SOURCE = _obj(["source", "last_poll", "last_ok", "orders", "errors", "last_error"], source=STR,
                       last_poll=NULL_NUM, last_ok=NULL_NUM, orders={"type": "object", "additionalProperties": INT},
                       errors=INT, last_error=STR)
DEAD_LETTER = _obj(["box_id", "topic", "reason", "detail", "at", "bytes", "messages", "service", "id"],
                   box_id=STR, topic=STR, reason=STR, detail=STR, at=NUM, bytes=INT, messages=INT, service=STR,
                   id=INT)
ARCHIVE_VERSION = _obj(["sop_instance_uid", "box_id", "site", "size", "sha256", "stored_at", "stored_local",
                        "time_zone", "superseded_at", "current"],
                       sop_instance_uid=STR, box_id=STR, site=STR, size=INT, sha256=STR, stored_at=NUM,
                       stored_local=STR, time_zone=STR, superseded_at=_null("number"), current=BOOL)
MODALITY_ROW = _obj(["box_id", "site", "modality", "exams"], box_id=STR, site=STR, modality=STR, exams=INT,
                    images=_null("integer"), last_exam_end=_null("number"), first_exam_start=_null("number"))
DAY = _obj(["day", "open", "exams", "images", "occupancy", "busy"], day=STR, open=BOOL, exams=INT, images=INT,
           occupancy=NUM, busy={"type": "array", "items": {"type": "array", "items": NUM}})
UTILISATION = _obj(["box_id", "modality", "opening_hours", "utc_offset_minutes", "days", "sources"],
                   box_id=STR, modality=STR, opening_hours=STR, utc_offset_minutes=INT,
                   days={"type": "array", "items": DAY}, sources={"type": "object", "additionalProperties": INT})
SITE = _obj(["site", "studies", "p50_s", "p95_s", "max_s", "target_s", "over_target"], site=STR, studies=INT,
            p50_s=NUM, p95_s=NUM, max_s=NUM, target_s=NUM, over_target=BOOL)
GROUP = _obj(["site", "modality", "studies", "p50_s", "p95_s", "max_s", "target_s", "over_target"], site=STR,
             modality=STR, studies=INT, p50_s=NUM, p95_s=NUM, max_s=NUM, target_s=NUM, over_target=BOOL)
OVER = _obj(["site", "modality", "p95_s", "target_s"], site=STR, modality=STR, p95_s=NUM, target_s=NUM)
SCANNER = _obj(["site", "box_id", "modality", "week", "open_hours", "busy_hours", "free_passed_hours",
                "remaining_hours", "free_hours"], site=STR, box_id=STR, modality=STR,
               week={"type": "array", "items": NUM, "minItems": 2, "maxItems": 2}, open_hours=NUM, busy_hours=NUM,
               free_passed_hours=NUM, remaining_hours=NUM, free_hours=NUM)
TOTALS = {"type": "object", "additionalProperties": _obj(
    ["scanners", "free_hours", "free_passed_hours", "open_hours"], scanners=INT, free_hours=NUM,
    free_passed_hours=NUM, open_hours=NUM)}


STRS: Schema = {"type": "array", "items": STR}
ROW = _obj(["id", "site", "region", "mod", "status", "sev", "alerts", "muted", "flags", "ver", "backlog", "oldest_min",
            "disk", "cert_days", "since", "seen"],
           id=STR, site=STR, region=STR, mod=STRS, status={"type": "string", "enum": ["online", "offline", "degraded"]},
           sev={"type": "string", "enum": ["", "info", "warning", "critical"]}, alerts=STRS, muted=BOOL, flags=STRS,
           ver=STR, backlog=_null("integer"), oldest_min=_null("integer"), disk=_null("integer"),
           cert_days=_null("integer"), since=NUM, seen=_null("number"))
FACET = {"type": "array", "items": _obj(["key", "count"], key=STR, count=INT)}
OVERVIEW = _obj(["now", "revision", "counts", "facets", "sites"], now=NUM, revision=INT,
                counts=_obj(["total", *overview.FLAGS], **{k: INT for k in ("total", *overview.FLAGS)}),
                facets=_obj(list(overview.GROUPS), **{g: FACET for g in overview.GROUPS}),
                sites={"type": "object", "additionalProperties": _obj(["region", "tz"], region=STR, tz=STR)})
GROUP_ROW = _obj(["key", "count", "offline", "alerting", "sev"], key=STR, count=INT, offline=INT, alerting=INT, sev=STR)
BOX_PAGE: Schema = {"oneOf": [
    _obj(["now", "revision", "total", "offset", "limit", "delta", "ids", "rows"], now=NUM, revision=INT, total=INT,
         offset=INT, limit=INT, delta=BOOL, ids=STRS, rows={"type": "array", "items": ROW}),
    _obj(["now", "revision", "total", "group", "groups"], now=NUM, revision=INT, total=INT, group=STR,
         groups={"type": "array", "items": GROUP_ROW})]}
ALERT_BASE = _obj(["id", "box_id", "site", "kind", "subject", "detail", "severity", "raised_at", "last_seen",
                   "cleared_at", "acked_at", "acked_by", "ack_note", "suppressed_by", "boxes", "children"],
                  id=INT, box_id=STR, site=STR, kind=STR, subject=STR, detail=STR, severity=STR, raised_at=NUM,
                  last_seen=NUM, cleared_at=_null("number"), acked_at=_null("number"), acked_by=STR, ack_note=STR,
                  suppressed_by=STR, boxes=INT, children={"type": "array", "items": ANY_OBJ})
TEXT_PARAM: Schema = {"type": "string", "pattern": overview.TEXT.pattern, "maxLength": MAX_QUERY_VALUE_CHARS}


def _enum(values: tuple[str, ...]) -> Schema:
    return {"type": "string", "enum": list(values)}


def _param(name: str, schema: Schema, description: str, required: bool = False, where: str = "query") -> Schema:
    return {"name": name, "in": where, "required": required, "description": description, "schema": schema}


BOX_PATTERN: Schema = {"type": "string", "pattern": BOX_ID.pattern}
DAYS = {"type": "number", "exclusiveMinimum": 0, "maximum": 366}


def _json(schema: Schema, what: str) -> Schema:
    return {"description": what, "content": {"application/json": {"schema": schema}}}


UNAUTHENTICATED = _json(ERROR, "no valid session cookie nor API token (log in, or send 'Authorization: Bearer')")
FORBIDDEN = _json(ERROR, "the principal lacks the role, or a POST lacks its CSRF token or comes from another origin")
OPEN: list[Schema] = []  # security of a route anyone may call


def _get(summary: str, ok: Schema, params: list[Schema] | None = None, ok_type: str = "application/json",
         not_found: str = "", not_modified: bool = False, public: bool = False, admin: bool = False) -> Schema:
    responses: Schema = {"200": {"description": summary, "content": {ok_type: {"schema": ok}}},
                         "400": _json(ERROR, "a query parameter is unknown, repeated, malformed or out of range"),
                         "413": _json(ERROR, "the request carried a body (the console's API reads none)"),
                         "414": _json(ERROR, f"the request target (path and query) is longer than "
                                             f"{MAX_TARGET_BYTES} bytes"),
                         "503": _json(ERROR, "the fleet store failed (the reason says how)")}
    if not_found:
        responses["404"] = _json(ERROR, not_found)
    if not_modified:
        responses["304"] = {"description": "nothing changed since the ETag sent in If-None-Match"}
    operation: Schema = {"summary": summary, "parameters": params or [], "responses": responses}
    if public:
        operation["security"] = OPEN
    else:
        responses["401"] = UNAUTHENTICATED
    if admin:
        responses["403"] = FORBIDDEN
    return {"get": operation}


def _post(summary: str, ok: Schema, body: Schema | None, params: list[Schema] | None = None,
          public: bool = False, not_found: str = "", conflict: str = "") -> Schema:
    """A write route: a JSON body of at most MAX_BODY_BYTES (or none), CSRF-checked with a session cookie."""
    responses: Schema = {
        "200": _json(ok, summary),
        "400": _json(ERROR, "the body or a path parameter is malformed, or the request is not one that can be done"),
        "401": UNAUTHENTICATED if not public else _json(ERROR, "user name or password not accepted"),
        "403": FORBIDDEN,
        "405": _json(ERROR, "the path is not one of a write route"),
        "413": _json(ERROR, f"the body is longer than {MAX_BODY_BYTES} bytes"),
        "414": _json(ERROR, f"the request target is longer than {MAX_TARGET_BYTES} bytes"),
        "415": _json(ERROR, "the body is not application/json"),
        "503": _json(ERROR, "the fleet store failed (the reason says how)")}
    if not_found:
        responses["404"] = _json(ERROR, not_found)
    if conflict:
        responses["409"] = _json(ERROR, conflict)
    operation: Schema = {"summary": summary, "parameters": params or [], "responses": responses}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if public:
        operation["security"] = OPEN
    return {"post": operation}


def _closed(required: list[str], **props: Schema) -> Schema:
    return {**_obj(required, **props), "additionalProperties": False}


def _id_param(name: str, what: str, pattern: str = "^[0-9]{1,18}$") -> Schema:
    return _param(name, {"type": "string", "pattern": pattern}, what, required=True, where="path")


TIME = {"type": "number", "minimum": 0, "maximum": 1e11}
SITE_ID: Schema = {"type": "string", "pattern": SITE_PATTERN.pattern}
SITES_OR_ALL: Schema = {"type": ["array", "null"], "items": STR}
PRINCIPAL = _obj(["user", "role", "sites", "method", "csrf"], user=STR, role=STR, sites=SITES_OR_ALL, method=STR,
                 csrf=_null("string"))
SILENCE = _obj(["id", "box_id", "site", "kind", "starts_at", "ends_at", "created_by", "reason", "created_at"],
               id=INT, box_id=STR, site=STR, kind=STR, starts_at=NUM, ends_at=NUM, created_by=STR, reason=STR,
               created_at=NUM)
WINDOW = _obj(["id", "site", "box_id", "starts_at", "ends_at", "created_by", "reason", "created_at"], id=INT,
              site=STR, box_id=STR, starts_at=NUM, ends_at=NUM, created_by=STR, reason=STR, created_at=NUM)
TOKEN_DOC = _obj(["id", "name", "owner", "role", "sites", "created_at", "expires_at", "revoked_at", "last_used"],
                 id=STR, name=STR, owner=STR, role=STR, sites={"type": "array", "items": STR}, created_at=NUM,
                 expires_at=_null("number"), revoked_at=_null("number"), last_used=_null("number"))
AUDIT_ROW = _obj(["id", "at", "actor", "method", "address", "action", "target", "outcome", "detail"], id=INT,
                 at=NUM, actor=STR, method=STR, address=STR, action=STR, target=STR, outcome=STR, detail=STR)
ROLE: Schema = {"type": "string", "enum": ["viewer", "operator", "admin"]}
ACCOUNT = _obj(["name", "role", "sites", "disabled", "failures", "locked", "created_at", "updated_at"], name=STR,
               role=STR, sites={"type": "array", "items": STR}, disabled=BOOL, failures=INT, locked=BOOL,
               created_at=NUM, updated_at=NUM)
ALL_FLAG = _param("all", {"type": "string", "enum": ["0", "1"]}, "1: ended ones too")
AUTH_PATHS: dict[str, Schema] = {
    "/auth/login": _post("log in with a local account: sets the session cookie, answers the principal and its CSRF "
                         "token", _obj(["user", "role", "sites", "csrf"], user=STR, role=STR, sites=SITES_OR_ALL,
                                       csrf=STR),
                         _closed(["user", "password"], user={"type": "string", "maxLength": 200, "pattern": r"\S"},
                                 password={"type": "string", "maxLength": 1024, "pattern": r"\S"}), public=True),
    "/auth/logout": _post("end this session (and clear its cookie)", _obj(["ok"], ok=BOOL), None),
    "/auth/methods": _get("how one may log in here: a local account's password, and OpenID Connect when configured",
                          _obj(["password", "oidc"], password=BOOL, oidc=BOOL), public=True),
    "/auth/oidc/login": {"get": {"summary": "start an OpenID Connect login: a redirect to the provider",
                                 "security": OPEN, "parameters": [], "responses": {
                                     "302": {"description": "to the provider's authorization endpoint"},
                                     "400": _json(ERROR, "a query parameter was given"),
                                     "404": _json(ERROR, "OpenID Connect login is not configured"),
                                     "503": _json(ERROR, "the store or the provider failed")}}},
    "/auth/oidc/callback": {"get": {"summary": "the provider's redirect back: a session, then a redirect to /",
                                    "security": OPEN, "parameters": [
                                        _param(n, {"type": "string"}, "from the provider")
                                        for n in ("code", "state", "iss", "session_state", "error",
                                                  "error_description")], "responses": {
                                        "302": {"description": "logged in: to the console"},
                                        "400": _json(ERROR, "no login in progress, or a malformed callback"),
                                        "401": _json(ERROR, "the provider or the role mapping refused the login"),
                                        "404": _json(ERROR, "OpenID Connect login is not configured"),
                                        "414": _json(ERROR, "request target too long"),
                                        "503": _json(ERROR, "the store or the provider failed")}}},
    "/api/v1/me": _get("who is asking: user, role, sites (null: every site), how, and the session's CSRF token",
                       PRINCIPAL),
    "/api/v1/alerts/{alert_id}/ack": _post(
        "acknowledge an alert with a note (operator); audited", _obj(
            ["id", "acked_at", "acked_by", "ack_note"], id=INT, acked_at=_null("number"), acked_by=STR,
            ack_note=STR),
        _closed([], note={"type": "string", "maxLength": 1000}), [_id_param("alert_id", "the alert's id")],
        not_found="no such alert (or not one of the principal's sites)"),
    "/api/v1/silences": {
        **_get("silences in force (all=1: every one), of the principal's sites", _obj(
            ["now", "silences"], now=NUM, silences={"type": "array", "items": SILENCE}), [ALL_FLAG]),
        **_post("silence alerts matching a box, a site and/or a kind until ends_at (operator); audited", SILENCE,
                _closed(["ends_at", "reason"], box_id=BOX_PATTERN, site=SITE_ID, kind=STR, starts_at=TIME,
                        ends_at=TIME, reason={"type": "string", "maxLength": 1000}),
                not_found="no such box or site (or not the principal's)")},
    "/api/v1/silences/{silence_id}/expire": _post(
        "end a silence now (operator); audited", SILENCE, None, [_id_param("silence_id", "the silence's id")],
        not_found="no such silence"),
    "/api/v1/maintenance": {
        **_get("maintenance windows in force (all=1: every one), of the principal's sites", _obj(
            ["now", "maintenance"], now=NUM, maintenance={"type": "array", "items": WINDOW}), [ALL_FLAG]),
        **_post("plan a maintenance window for a site or a box (operator); audited", WINDOW,
                _closed(["ends_at"], site=SITE_ID, box_id=BOX_PATTERN, starts_at=TIME, ends_at=TIME,
                        reason={"type": "string", "maxLength": 1000}),
                not_found="no such box or site (or not the principal's)")},
    "/api/v1/maintenance/{window_id}/end": _post(
        "end a maintenance window now (operator); audited", WINDOW, None, [_id_param("window_id", "the window's id")],
        not_found="no such maintenance window"),
    "/api/v1/tokens": {
        **_get("API tokens: every one for an admin, an operator's own", _obj(
            ["tokens"], tokens={"type": "array", "items": TOKEN_DOC}), admin=True),
        **_post("create an API token; its secret is in 'token', shown only in this answer; audited",
                {"allOf": [TOKEN_DOC, _obj(["token"], token=STR)]},
                _closed(["name", "role"], name={"type": "string", "maxLength": 100}, role=ROLE,
                        sites={"type": "array", "items": SITE_ID, "maxItems": 100},
                        days={"type": "number", "minimum": 0, "maximum": 3650},
                        owner={"type": "string", "maxLength": 64}))},
    "/api/v1/tokens/{token_id}/revoke": _post(
        "revoke an API token at once; audited", _obj(["id", "revoked"], id=STR, revoked=BOOL), None,
        [_id_param("token_id", "the token's id", "^[0-9a-f]{12}$")], not_found="no such token (or not yours)",
        conflict="the token was already revoked"),
    "/api/v1/accounts": {
        **_get("the local accounts (admin): role, sites, state", _obj(["accounts"], accounts={
            "type": "array", "items": ACCOUNT}), admin=True),
        **_post("create a local account (admin); audited", ACCOUNT, _closed(
            ["name", "password", "role"], name={"type": "string", "pattern": NAME_PATTERN.pattern},
            password={"type": "string", "minLength": 12, "maxLength": 1024}, role=ROLE,
            sites={"type": "array", "items": SITE_ID, "maxItems": 100}), conflict="")},
    "/api/v1/accounts/{name}/{action}": _post(
        "disable (ends its sessions, stops its tokens), enable or unlock an account (admin); audited", ACCOUNT, None,
        [_param("name", {"type": "string", "pattern": NAME_PATTERN.pattern}, "the account", required=True,
                where="path"),
         _param("action", {"type": "string", "enum": ["disable", "enable", "unlock"]}, "what to do", required=True,
                where="path")], not_found="no such account"),
    "/api/v1/audit": _get("the audit log, newest first (admin); page on with before=<next>", _obj(
        ["entries", "next"], entries={"type": "array", "items": AUDIT_ROW}, next=_null("integer")), [
        _param("actor", {"type": "string", "maxLength": 128}, "only this actor's"),
        _param("action", {"type": "string", "pattern": "^[a-z][a-z._]{0,39}$"}, "only this action"),
        _param("since", TIME, "only entries at or after this time (seconds since 1970)"),
        _param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (default 100)"),
        _param("before", {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}, "only entries older than this id")],
        admin=True),
    "/api/v1/audit/export": _get("the whole audit log since a time, oldest first, as a file (admin); "
                                 "the export is itself audited", STR, [
        _param("format", {"type": "string", "enum": ["csv", "jsonl"]}, "csv (default) or jsonl (one JSON per line)"),
        _param("since", TIME, "only entries at or after this time")], ok_type="text/csv", admin=True),
}


PATHS: dict[str, Schema] = {
    "/healthz": _get("liveness of the fleet service, and whether this instance holds the leader lease", _obj(
        ["ok", "version", "instance", "leader", "leader_instance"], ok=BOOL, version=STR, instance=STR, leader=BOOL,
        leader_instance=STR), public=True),
    "/metrics": _get("Prometheus text exposition of the fleet's figures", STR, ok_type="text/plain"),
    "/api/v1/overview": _get("counts (online, offline, degraded, backlogged, certificate expiring, with open alerts) "
                             "and facets with counts; ETag, If-None-Match answers 304", OVERVIEW, not_modified=True),
    "/api/v1/boxes": _get(
        "one page of compact rows, problems first unless sorted otherwise, with the total matched; or, with group, "
        "the groups with counts. since=<revision>: only the page's rows changed after it (ids: the page's order). "
        "ETag, If-None-Match answers 304", BOX_PAGE, [
            _param("q", TEXT_PARAM, "words that must all occur in the box id, site, region, version, modalities or "
                                    "alert kinds"),
            _param("site", TEXT_PARAM, "only this site's boxes"),
            _param("region", TEXT_PARAM, "only this region's boxes"),
            _param("modality", TEXT_PARAM, "only boxes with this modality"),
            _param("version", TEXT_PARAM, "only boxes running this version"),
            _param("status", _enum(overview.FLAGS), "only boxes with this status or mark"),
            _param("sort", _enum(overview.SORTS), "the order (default problems: worst open alert, offline, "
                                                  "backlogged, then box id)"),
            _param("order", _enum(overview.ORDERS), "asc (default) or desc"),
            _param("offset", {"type": "integer", "minimum": 0, "maximum": 100000}, "first row (default 0)"),
            _param("limit", {"type": "integer", "minimum": 1, "maximum": overview.MAX_LIMIT},
                   f"rows (default {overview.DEFAULT_LIMIT})"),
            _param("group", _enum(overview.GROUPS), "answer groups by this facet instead of rows"),
            _param("since", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "a revision of an earlier answer")],
        not_modified=True),
    "/api/v1/registry": _get("every box the registry knows in one document, those with alerts first", _obj(
        ["now", "offline_after_s", "boxes"], now=NUM, offline_after_s=NUM, boxes={"type": "array", "items": BOX})),
    "/api/v1/boxes/{box_id}": _get(
        "one box: its state, a day of health samples, a month of exams, a week of alerts", BOX_DETAIL,
        [_param("box_id", BOX_PATTERN, "the box id", required=True, where="path")], not_found="no such box"),
    "/api/v1/alerts": _get("open alerts, or with all=1 also those cleared within the days", _obj(
        ["now", "alerts"], now=NUM, alerts={"type": "array", "items": ALERT}), [
        _param("all", {"type": "string", "enum": ["0", "1"]}, "1: cleared alerts too"),
        _param("days", DAYS, "how far back cleared alerts go (default 7)")]),
    "/api/v1/alerts/grouped": _get(
        "alerts grouped (a site outage is one row, its boxes beneath as children), the worst and unacknowledged "
        "first, with severity, first and last seen, acknowledgement and silence or maintenance marks",
        _obj(["now", "revision", "alerts"], now=NUM, revision=INT, alerts={"type": "array", "items": ALERT_BASE}), [
            _param("state", _enum(("open", "unacked", "acked", "resolved", "all")), "which alerts (default open)"),
            _param("severity", _enum(("critical", "warning", "info")), "only this severity"),
            _param("site", TEXT_PARAM, "only this site's"),
            _param("days", DAYS, "how far back resolved alerts go (default 7)"),
            _param("limit", {"type": "integer", "minimum": 1, "maximum": overview.MAX_ALERTS},
                   "at most this many rows (default 500)")], not_modified=True),
    "/i18n/{lang}.json": _get("the console's strings in a language: msgid (English) -> translation", _obj(
        ["lang", "messages"], lang=STR, messages={"type": "object", "additionalProperties": STR}), [
        _param("lang", {"type": "string", "enum": ["en", "zh-CN"]}, "the language", required=True, where="path")],
        not_found="no such language", public=True),
    "/api/v1/dead-letters": _get("telemetry set aside, newest first", _obj(
        ["now", "dead_letters"], now=NUM, dead_letters={"type": "array", "items": DEAD_LETTER}), [
        _param("box", BOX_PATTERN, "only this box's"),
        _param("days", DAYS, "how far back (default 7)"),
        _param("limit", {"type": "integer", "minimum": 1, "maximum": 5000}, "at most this many (default 200)")]),
    "/api/v1/archive/versions": _get(
        "the archive's versions of an instance (operator or admin), those sent by the principal's sites' boxes, "
        "oldest archived first; current: the one in force, the others superseded. Audited", _obj(
            ["versions"], versions={"type": "array", "items": ARCHIVE_VERSION}), [
            _param("sop_instance_uid", {"type": "string", "pattern": versions.UID.pattern,
                                        "maxLength": versions.MAX_UID_CHARS}, "the SOP Instance UID", required=True)],
        admin=True),
    "/api/v1/worklist/feed": _get(
        "the worklist feed: per box its routes, last snapshot's entries, seq and time; per RIS source its polls "
        "and orders, and the statuses waiting for the RIS (to a principal of every site). No patient data",
        _obj(["now", "enabled", "boxes", "sources", "outbox"], now=NUM, enabled=BOOL,
             boxes={"type": "array", "items": WORKLIST_BOX}, sources={"type": "array", "items": WORKLIST_SOURCE},
             outbox={"type": ["object", "null"]})),
    "/api/v1/modalities": _get("per box and modality: exams, images, first and last exam", _obj(
        ["modalities"], modalities={"type": "array", "items": MODALITY_ROW})),
    "/api/v1/utilisation": _get("a modality's utilisation per local day (docs/utilisation.md)", UTILISATION,
                                not_found="no such box (or not one of the principal's sites)", params=[
        _param("box", BOX_PATTERN, "the box", required=True),
        _param("modality", {"type": "string", "pattern": MODALITY.pattern}, "the modality", required=True),
        _param("days", {"type": "integer", "minimum": 1, "maximum": 366}, "days ending with the latest exam "
               "(default 14)")]),
    "/api/v1/turnaround": _get("per site: p50/p95/max of cloud stored minus last image received, seconds", _obj(
        ["sites"], sites={"type": "array", "items": SITE}), [
        _param("days", {"type": "number", "minimum": 1, "maximum": 366}, "how far back (default 7)")]),
    "/api/v1/turnaround/by-modality": _get(
        "per site and modality: p50/p95/max turnaround against the site's target, those over it listed apart",
        _obj(["since", "target_s", "groups", "over_target"], since=NUM, target_s=NUM,
             groups={"type": "array", "items": GROUP}, over_target={"type": "array", "items": OVER}), [
            _param("days", {"type": "number", "minimum": 1, "maximum": 366}, "how far back (default 7)")]),
    "/api/v1/idle-capacity": _get(
        "this week's free opening hours per scanner (box and modality) in each site's local week, with totals",
        _obj(["now", "scanners", "by_modality", "by_site"], now=NUM, scanners={"type": "array", "items": SCANNER},
             by_modality=TOTALS, by_site=TOTALS)),
    "/api/v1/openapi.json": _get("this document", ANY_OBJ, public=True),
    **AUTH_PATHS,
}
PATHS["/api/v1/audit/export"]["get"]["responses"]["200"]["content"]["application/x-ndjson"] = {"schema": STR}

# the boxes' signed commissioning reports (cloud/fleet/commission_docs.py)
REPORT_ID_PATTERN: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
COMMISSION_SUMMARY = _obj(["report_id", "box_id", "site", "result", "engineer", "started_at", "finished_at",
                           "received_at"], report_id=STR, box_id=STR, site=STR,
                          result=_enum(("PASSED", "FAILED", "INCOMPLETE")), engineer=STR, started_at=NUM,
                          finished_at=NUM, received_at=NUM)
COMMISSION_REPORT = _obj(["report_id", "box_id", "site", "result", "engineer", "started_at", "finished_at",
                          "received_at", "document", "signature", "certificate", "tz", "verified"],
                         report_id=STR, box_id=STR, site=STR, result=STR, engineer=STR, started_at=NUM,
                         finished_at=NUM, received_at=NUM, document={"type": "object"}, signature=STR,
                         certificate=STR, tz=STR, verified=BOOL)
_REPORT_PARAM = _param("report_id", REPORT_ID_PATTERN, "the report id", required=True, where="path")
PATHS["/api/v1/boxes/{box_id}/commissioning"] = _get(
    "a box's signed commissioning reports, newest first (those of the principal's sites)",
    _obj(["box_id", "reports"], box_id=STR, reports={"type": "array", "items": COMMISSION_SUMMARY}),
    [_param("box_id", BOX_PATTERN, "the box id", required=True, where="path")])
PATHS["/api/v1/commissioning/{report_id}"] = _get(
    "one commissioning report: the signed document (canonical JSON), its signature, the box certificate, the "
    "site's time zone", COMMISSION_REPORT, [_REPORT_PARAM], not_found="no such report (or not one of the "
    "principal's sites)")
PATHS["/api/v1/commissioning/{report_id}/pdf"] = _get(
    "one commissioning report as a printable PDF (A4, Chinese font embedded)", {"type": "string", "format": "binary"},
    [_REPORT_PARAM, _param("lang", _enum(("en", "zh-CN")), "the PDF's language (default en)")],
    ok_type="application/pdf", not_found="no such report (or not one of the principal's sites)")


# remote commands (cloud/fleet/starlette_commands.py, docs/operations.md "Remote operations")
COMMAND_ID_PATTERN: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
COMMAND_STATE = _enum(("pending", "delivered", "running", "succeeded", "failed", "refused", "expired"))
COMMAND_KIND = _enum(("echo", "bundle", "resend", "quarantine", "config", "renew", "restart", "update"))
COMMAND = _obj(["id", "box_id", "seq", "kind", "state", "issued_by", "issued_at", "expires_at", "updated_at",
                "sent_at", "sends", "reason", "message", "detail", "rollout_id", "bundle", "args"],
               id=STR, box_id=STR, seq=INT, kind=STR, state=COMMAND_STATE, issued_by=STR, issued_at=NUM,
               expires_at=NUM, updated_at=NUM, sent_at=NULL_NUM, sends=INT, reason=STR, message=STR, detail=ANY_OBJ,
               rollout_id=_null("integer"), bundle=BOOL, args=ANY_OBJ)
ROLLOUT = _obj(["id", "kind", "state", "canary", "wave_size", "issued", "total", "detail", "created_by",
                "created_at", "updated_at", "counts", "boxes"],
               id=INT, kind=STR, state=_enum(("running", "succeeded", "stopped")), canary=INT, wave_size=INT,
               issued=INT, total=INT, detail=STR, created_by=STR, created_at=NUM, updated_at=NUM, failed=INT,
               counts={"type": "object", "additionalProperties": INT},
               boxes={"type": "array", "items": _obj(["box_id", "wave", "state"], box_id=STR, wave=INT, state=STR,
                                                     command_id=_null("string"), updated_at=NULL_NUM)})
ISSUED: Schema = {**COMMAND, "properties": {**COMMAND["properties"],
                                            "commands": {"type": "array", "items": COMMAND}}}
_BOX_PARAM = _param("box_id", BOX_PATTERN, "the box id", required=True, where="path")
_COMMAND_PARAM = _param("command_id", COMMAND_ID_PATTERN, "the command id", required=True, where="path")
_NO_BOX = "no such box (or not one of the principal's sites)"
PATHS["/api/v1/boxes/{box_id}/commands"] = {
    **_get("a box's remote commands, newest first, with their states and results (no arguments but those "
           "without patient data)", _obj(["box_id", "now", "config_version", "has_key", "commands"], box_id=STR,
                                         now=NUM, config_version=INT, has_key=BOOL,
                                         commands={"type": "array", "items": COMMAND}), [_BOX_PARAM],
           not_found=_NO_BOX),
    **_post("issue a remote command to the box (operator: echo, bundle, quarantine list, renew, restart; admin: "
            "resend, quarantine replay/drop, config, update); queued until the box is online, signed, audited. A "
            "resend by accession number is one resend per Study Instance UID archived from the box under it: the "
            "answer is the first, 'commands' lists all",
            ISSUED, _closed(["kind"], kind=COMMAND_KIND, args=ANY_OBJ,
                            ttl_s={"type": "number", "minimum": 60, "maximum": 2592000}), [_BOX_PARAM],
            not_found=_NO_BOX + ", or no study archived from it has the accession number")}
PATHS["/api/v1/boxes/{box_id}/config-versions"] = _get(
    "the configuration versions the cloud sent the box, newest first, and the version it reports", _obj(
        ["box_id", "reported", "versions"], box_id=STR, reported=INT, versions={"type": "array", "items": _obj(
            ["version", "command_id", "issued_by", "at", "state"], version=INT, command_id=STR, issued_by=STR,
            at=NUM, state=STR)}), [_BOX_PARAM], not_found=_NO_BOX)
PATHS["/api/v1/boxes/{box_id}/config-diff"] = _get(
    "the unified diff between two configuration versions sent to the box (0: empty), and the newer document "
    "(admin)", _obj(["box_id", "from", "to", "diff", "document"], box_id=STR, to=INT, diff=STR, document=STR,
                    **{"from": INT}),
    [_BOX_PARAM, _param("from", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "the older version", required=True),
     _param("to", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "the newer version", required=True)],
    not_found="no such box or version", admin=True)
PATHS["/api/v1/commands/{command_id}"] = _get("one remote command", COMMAND, [_COMMAND_PARAM],
                                              not_found="no such command (or not one of the principal's sites)")
PATHS["/api/v1/commands/{command_id}/bundle"] = _get(
    "a bundle command's diagnostic bundle (no patient data), opened for this download (operator); audited",
    {"type": "string", "format": "binary"}, [_COMMAND_PARAM], ok_type="application/octet-stream",
    not_found="no such command, or its bundle has not arrived", admin=True)
PATHS["/api/v1/rollouts"] = {
    **_get("rollouts, newest first, with per-box progress", _obj(["now", "rollouts"], now=NUM, rollouts={
        "type": "array", "items": ROLLOUT})),
    **_post("start a wave rollout of a config or an update to a site's boxes or a list (admin): the canary "
            "first, then waves, stopped at the first box that does not succeed; audited", ROLLOUT,
            _closed(["kind", "args"], kind=_enum(("config", "update")), args=ANY_OBJ, site=SITE_ID,
                    boxes={"type": "array", "items": BOX_PATTERN, "maxItems": 1000},
                    canary={"type": "integer", "minimum": 1, "maximum": 10},
                    wave_size={"type": "integer", "minimum": 1, "maximum": 100}),
            not_found="no such box or site (or not the principal's)")}
PATHS["/api/v1/rollouts/{rollout_id}"] = _get(
    "one rollout's progress per box", ROLLOUT,
    [_param("rollout_id", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "the rollout id", required=True,
            where="path")], not_found="no such rollout")

def document(version: str) -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mgw fleet console API", "version": version,
                 "description": "Every error answer is {\"error\": \"<reason>\"}. Query values are at "
                                f"most {MAX_QUERY_VALUE_CHARS} characters; unknown or repeated parameters are "
                                "refused (400). Authenticate with a session cookie (POST /auth/login) or an API "
                                "token (Authorization: Bearer mgw_<id>_<secret>); a POST with the cookie carries "
                                "X-CSRF-Token. Every document shows only the principal's sites."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API token, mgw_<id>_<secret>"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "__Host-mgw_session",
                       "description": "the session of POST /auth/login (mgw_session over plain HTTP)"}}},
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": PATHS,
    }
