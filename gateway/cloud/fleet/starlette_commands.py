"""The console's remote command routes (Starlette), beside ``starlette_app`` (docs/operations.md, "Remote operations").

* ``GET /api/v1/boxes/{box}/commands``: a box's commands, newest first (viewer);
  ``POST`` issues one: ``{"kind", "args", "ttl_s"}``, the role the kind needs
  (``core.command_rules.required_role``: an operator diagnoses, an admin changes data, configuration or
  software), audited as ``command.issue`` (kind, command id, seq; never the arguments). A resend by
  ``accession`` is resolved through the archive index (``commands.resend``): one resend per Study Instance
  UID archived from the box under it (the answer is the first, ``commands`` all), 404 when there is none;
  audited with the accession number's digest only.
* ``GET /api/v1/commands/{id}``: one command; ``GET /api/v1/commands/{id}/bundle``: its diagnostic
  bundle, opened for this download (operator), audited as ``command.bundle_download``.
* ``GET /api/v1/boxes/{box}/config-versions`` (viewer) and ``/config-diff?from=&to=`` (admin: a
  configuration may hold what only an admin reads).
* ``GET /api/v1/rollouts`` (viewer), ``POST`` starts one (admin, audited as ``rollout.start``),
  ``GET /api/v1/rollouts/{id}``: its progress per box.

A site-scoped principal sees and acts on its sites' boxes only; anything else is 404, as if it did
not exist. Every refusal is a JSON ``{"error"}`` and audited by the app's handlers.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.cloud.commands import resend, views
from gateway.cloud.commands.rollout import ROLLOUT_KINDS
from gateway.cloud.fleet.accounts import SITE
from gateway.cloud.fleet.body import Body
from gateway.cloud.fleet.http import FleetDocs, Query
from gateway.cloud.fleet.starlette_auth import ConsoleAuth, actor, body, hidden, json_answer, who
from gateway.config import BOX_ID
from gateway.core import command_rules, command_wire
from gateway.core.access import Principal, Role
from gateway.core.command_wire import Kind
from gateway.core.errors import RequestError

COMMAND_ID = re.compile(r"[0-9a-f]{32}")
_NUMBER = re.compile(r"[0-9]{1,18}")
MAX_WAVE_BOXES = 1000


def _box(docs: FleetDocs, principal: Principal, raw: str) -> str:
    if not BOX_ID.fullmatch(raw):
        raise RequestError(f"box id must match {BOX_ID.pattern}")
    if docs.service.box(raw) is None or not docs.box_visible(principal, raw):
        raise hidden("box")
    return raw


def _kind(b: Body) -> Kind:
    raw = b.text("kind", 16, required=True)
    try:
        return Kind(raw)
    except ValueError:
        raise RequestError(f"'kind' must be one of {', '.join(k.value for k in Kind)}") from None


def _args(b: Body) -> dict[str, Any]:
    args = b.doc.get("args", {})
    if not isinstance(args, dict):
        raise RequestError("'args' must be an object")
    return args


def _number_param(q: Query, name: str) -> int:
    raw = q.values.get(name)
    if raw is None or not _NUMBER.fullmatch(raw):
        raise RequestError(f"{name!r} must be a version number")
    return int(raw)


def routes(docs: FleetDocs, auth: ConsoleAuth) -> list[BaseRoute]:
    queue, rollouts = docs.service.commands, docs.service.rollouts

    def box_commands(request: Request) -> Response:
        principal = who(request)
        box_id = _box(docs, principal, request.path_params["box_id"])
        if request.method == "GET":
            Query(request.query_params.multi_items(), ())
            return json_answer(views.box_commands(queue, box_id))
        b = body(request, "kind", "args", "ttl_s")
        kind, args = _kind(b), _args(b)
        principal.require(command_rules.required_role(kind, args), f"a {kind.value} command")
        ttl = b.number("ttl_s", 60.0, command_wire.MAX_LIFETIME_S) or docs.service.fleet.command_ttl_s
        try:
            issued = resend.issue(queue, box_id, kind, args, principal.name, ttl, docs.service.archive_studies)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        except resend.UnknownAccession as exc:  # audited with the accession's digest, never the number
            auth.accounts.audit(actor(request), "command.issue", box_id, "refused", kind=kind.value,
                                accession=queue.accession_digest(box_id, str(args["accession"])), reason=str(exc))
            raise HTTPException(404, str(exc)) from None
        more = {"accession": issued.accession_hmac} if issued.accession_hmac else {}
        for row in issued.rows:
            auth.accounts.audit(actor(request), "command.issue", box_id, "ok", kind=kind.value, command=row.id,
                                seq=row.seq, expires_at=row.expires_at, **more)
        doc = views.command_doc(issued.rows[0], False, queue)
        if issued.accession_hmac:  # one resend per study: the first above, all of them here
            doc["commands"] = [views.command_doc(row, False, queue) for row in issued.rows]
        return json_answer(doc)

    def _command(request: Request) -> Any:
        raw = request.path_params["command_id"]
        if not COMMAND_ID.fullmatch(raw):
            raise RequestError(f"command id must match {COMMAND_ID.pattern}")
        row = queue.store.command(raw)
        if row is None or not docs.box_visible(who(request), row.box_id):
            raise hidden("command")
        return row

    def command(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        row = _command(request)
        return json_answer(views.command_doc(row, bool(queue.store.blob_ids([row.id])), queue))

    def bundle(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        who(request).require(Role.OPERATOR, "downloading a diagnostic bundle")
        row = _command(request)
        opened = queue.bundle(row.id)
        if opened is None:
            raise hidden("bundle (not yet, or not a bundle command)")
        auth.accounts.audit(actor(request), "command.bundle_download", row.box_id, "ok", command=row.id,
                            bytes=len(opened[1]))
        name = f"mgw-bundle-{row.box_id}-{row.id[:8]}{_suffix(opened[1])}"
        return Response(opened[1], media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    def config_versions(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        box_id = _box(docs, who(request), request.path_params["box_id"])
        return json_answer(views.config_versions(queue, box_id))

    def config_diff(request: Request) -> Response:
        principal = who(request)
        principal.require(Role.ADMIN, "reading configuration versions")
        box_id = _box(docs, principal, request.path_params["box_id"])
        q = Query(request.query_params.multi_items(), ("from", "to"))
        doc = views.config_diff(queue, box_id, _number_param(q, "from"), _number_param(q, "to"))
        if doc is None:
            raise hidden("configuration version")
        return json_answer(doc)

    def rollout_list(request: Request) -> Response:
        principal = who(request)
        if request.method == "GET":
            Query(request.query_params.multi_items(), ())
            shown = [r for r in queue.store.rollouts(limit=50) if _all_visible(docs, principal, r.boxes)]
            return json_answer({"now": time.time(), "rollouts": [rollouts.progress(r) for r in shown]})
        principal.require(Role.ADMIN, "a rollout")
        b = body(request, "kind", "args", "site", "boxes", "canary", "wave_size")
        kind, args = _kind(b), _args(b)
        if kind not in ROLLOUT_KINDS:
            raise RequestError("a rollout carries a config or an update")
        boxes = _group(docs, principal, b)
        canary, wave = b.number("canary", 1, 10), b.number("wave_size", 1, 100)
        try:
            started = rollouts.start(kind, args, boxes, principal.name, int(canary or 1), int(wave or 5))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        auth.accounts.audit(actor(request), "rollout.start", str(started.id), "ok", kind=kind.value,
                            boxes=len(boxes), canary=started.canary, wave_size=started.wave_size)
        return json_answer(rollouts.progress(started))

    def rollout(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        raw = request.path_params["rollout_id"]
        if not _NUMBER.fullmatch(raw):
            raise RequestError("'rollout_id' must be a whole number")
        found = queue.store.rollout(int(raw))
        if found is None or not _all_visible(docs, who(request), found.boxes):
            raise hidden("rollout")
        return json_answer(rollouts.progress(found))

    return [Route("/api/v1/boxes/{box_id}/commands", box_commands, methods=["GET", "POST"]),
            Route("/api/v1/boxes/{box_id}/config-versions", config_versions),
            Route("/api/v1/boxes/{box_id}/config-diff", config_diff),
            Route("/api/v1/commands/{command_id}", command),
            Route("/api/v1/commands/{command_id}/bundle", bundle),
            Route("/api/v1/rollouts", rollout_list, methods=["GET", "POST"]),
            Route("/api/v1/rollouts/{rollout_id}", rollout)]


def _group(docs: FleetDocs, principal: Principal, b: Body) -> list[str]:
    """A rollout's boxes: a site's (in box id order) or an explicit list (in its order), all visible."""
    site = b.text("site", 64, pattern=SITE)
    listed = b.strings("boxes", BOX_ID, MAX_WAVE_BOXES)
    if bool(site) == bool(listed):
        raise RequestError("give either 'site' or 'boxes'")
    if site:
        boxes = sorted(s.box_id for s in docs.service.registry() if (s.site or s.box_id) == site)
        if not boxes or not principal.can_see(site):
            raise hidden("site")
        return boxes
    for box_id in listed:
        _box(docs, principal, box_id)
    return listed


def _all_visible(docs: FleetDocs, principal: Principal, boxes_json: str) -> bool:
    return principal.sites is None or all(docs.box_visible(principal, b) for b in json.loads(boxes_json))


def _suffix(data: bytes) -> str:
    if data[:1] == b"{":
        return ".json"  # the edge's bundle: one JSON document (gateway/edge/diagnostics.py)
    if data[:2] == b"\x1f\x8b":
        return ".tar.gz"
    if data[:4] == b"PK\x03\x04":
        return ".zip"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return ".tar.zst"
    return ".bin"
