"""Remote commands as the console, the API and the CLI show them: documents without patient data.

A command's document has its kind, state, times, who issued it and the box's flat result detail;
never its arguments (a Study Instance UID, an accession number or a configuration are sealed at rest
and only the box opens them in flight). A configuration version's document is shown only on its own
(``config_diff``), to a principal who may read configurations.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from gateway.cloud.commands.queue import CommandQueue
from gateway.cloud.commands.store import CommandRow
from gateway.core.command_wire import Kind

SHOWN_ARGS = {Kind.BUNDLE: ("log_lines",), Kind.QUARANTINE: ("action", "item"), Kind.RESTART: ("service",),
              Kind.UPDATE: ("version",), Kind.CONFIG: ("version",)}  # arguments without patient data


def command_doc(row: CommandRow, has_blob: bool = False, queue: CommandQueue | None = None) -> dict[str, Any]:
    try:
        detail = json.loads(row.detail)
    except ValueError:
        detail = {}
    doc: dict[str, Any] = {
        "id": row.id, "box_id": row.box_id, "seq": row.seq, "kind": row.kind, "state": row.state,
        "issued_by": row.issued_by, "issued_at": row.issued_at, "expires_at": row.expires_at,
        "updated_at": row.updated_at, "sent_at": row.sent_at, "sends": row.sends, "reason": row.reason,
        "message": row.message, "detail": detail if isinstance(detail, dict) else {}, "rollout_id": row.rollout_id,
        "bundle": has_blob, "args": {}}
    shown = SHOWN_ARGS.get(Kind(row.kind), ())
    if queue is not None and shown:
        args = queue.args_of(row)
        doc["args"] = {k: args[k] for k in shown if k in args}
    return doc


def box_commands(queue: CommandQueue, box_id: str, limit: int = 100) -> dict[str, Any]:
    rows = queue.store.commands(box_id=box_id, limit=limit)
    blobs = queue.store.blob_ids([r.id for r in rows if r.kind == Kind.BUNDLE.value])
    known = queue.store.box(box_id)
    return {"box_id": box_id, "now": queue.now(), "config_version": known.config_version if known else 0,
            "has_key": bool(known and known.inbound_key),
            "commands": [command_doc(r, r.id in blobs, queue) for r in rows]}


def config_versions(queue: CommandQueue, box_id: str) -> dict[str, Any]:
    known = queue.store.box(box_id)
    return {"box_id": box_id, "reported": known.config_version if known else 0,
            "versions": [{"version": int(v["version"]), "command_id": v["command_id"], "issued_by": v["issued_by"],
                          "at": v["at"], "state": v["state"]} for v in queue.store.config_versions(box_id)]}


def config_diff(queue: CommandQueue, box_id: str, old: int, new: int) -> dict[str, Any] | None:
    """The unified diff from version ``old`` to ``new`` (0: the empty document); None if either is unknown."""
    texts = []
    for version in (old, new):
        text = "" if version == 0 else queue.config_document(box_id, version)
        if text is None:
            return None
        texts.append(text)
    lines = difflib.unified_diff(texts[0].splitlines(keepends=True), texts[1].splitlines(keepends=True),
                                 f"version {old}", f"version {new}")
    return {"box_id": box_id, "from": old, "to": new, "diff": "".join(lines), "document": texts[1]}
