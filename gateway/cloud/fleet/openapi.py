"""The console API described in OpenAPI 3.1, written by hand next to the routes (``starlette_app.build_app``).

Served at ``/api/v1/openapi.json``. tests/cloud/test_console.py checks that every route is
described here and nothing else, and runs a schema-driven fuzzer (schemathesis) against a running
service: no answer may be a 5xx, and every answer must match what this document says of it.
Documents may gain fields (objects are open); a field listed here keeps its name and type.
"""

from __future__ import annotations

from typing import Any

from gateway.cloud.fleet import overview
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
DEAD_LETTER = _obj(["box_id", "topic", "reason", "detail", "at", "bytes", "messages", "service", "id"],
                   box_id=STR, topic=STR, reason=STR, detail=STR, at=NUM, bytes=INT, messages=INT, service=STR,
                   id=INT)
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


def _get(summary: str, ok: Schema, params: list[Schema] | None = None, ok_type: str = "application/json",
         not_found: str = "", not_modified: bool = False) -> Schema:
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
    return {"get": {"summary": summary, "parameters": params or [], "responses": responses}}


PATHS: dict[str, Schema] = {
    "/healthz": _get("liveness of the fleet service, and whether this instance holds the leader lease", _obj(
        ["ok", "version", "instance", "leader", "leader_instance"], ok=BOOL, version=STR, instance=STR, leader=BOOL,
        leader_instance=STR)),
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
        not_found="no such language"),
    "/api/v1/dead-letters": _get("telemetry set aside, newest first", _obj(
        ["now", "dead_letters"], now=NUM, dead_letters={"type": "array", "items": DEAD_LETTER}), [
        _param("box", BOX_PATTERN, "only this box's"),
        _param("days", DAYS, "how far back (default 7)"),
        _param("limit", {"type": "integer", "minimum": 1, "maximum": 5000}, "at most this many (default 200)")]),
    "/api/v1/modalities": _get("per box and modality: exams, images, first and last exam", _obj(
        ["modalities"], modalities={"type": "array", "items": MODALITY_ROW})),
    "/api/v1/utilisation": _get("a modality's utilisation per local day (docs/utilisation.md)", UTILISATION, [
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
    "/api/v1/openapi.json": _get("this document", ANY_OBJ),
}


def document(version: str) -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mgw fleet console API", "version": version,
                 "description": "Read-only. Every error answer is {\"error\": \"<reason>\"}. Query values are at "
                                f"most {MAX_QUERY_VALUE_CHARS} characters; unknown or repeated parameters are "
                                "refused (400)."},
        "paths": PATHS,
    }
