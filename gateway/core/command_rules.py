"""The cloud's rules for remote commands (pure): arguments per kind, who may issue what, arguments at rest.

``check_args`` turns what an operator asked for (API body, CLI options: hostile until parsed) into
the arguments the box expects for a kind (docs/operations.md, "Remote operations"), or refuses with
``ValueError`` naming the argument. The box checks them again (``bad-arguments``).

``required_role``: a viewer reads; an operator diagnoses (echo, bundle, the quarantine list, renew,
restart); what changes data or software needs an admin (resend, quarantine replay and drop, config,
update).

``seal_args`` / ``open_args``: a queued command's arguments sealed at rest in the fleet store
(``core.atrest``), under a key derived from the cloud's envelope key for this use only, and bound to
their row (command id and box id inside the sealed bytes).
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.core import atrest
from gateway.core.access import Role
from gateway.core.command_wire import MAX_ARGS_BYTES, Kind
from gateway.core.errors import IntegrityError

AT_REST_INFO = b"mgw/v1 fleet command arguments at rest"
MAX_CONFIG_BYTES = MAX_ARGS_BYTES - 1024  # the document, with room for the rest of the sealed arguments
RESTART_SERVICES = ("edge",)  # the box's allow-list
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ACCESSION = re.compile(r"^[^\x00-\x1f\x7f\\]{1,16}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+~_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_URL = re.compile(r"^https://[^\s\x00-\x1f\x7f]{1,1000}$")
DEFAULT_LOG_LINES = 2000
MAX_LOG_LINES = 20000


def _only(args: dict[str, Any], *names: str) -> None:
    unknown = sorted(set(args) - set(names))
    if unknown:
        raise ValueError(f"unknown argument {unknown[0][:32]!r}")


def _int(args: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name!r} must be an integer in [{low}, {high}]")
    return value


def _text(args: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name!r} must match {pattern.pattern}")
    return value


def check_args(kind: Kind, args: dict[str, Any], config_version: int = 1) -> dict[str, Any]:
    """The arguments the box gets for ``kind``; ``config_version`` is the version a config command carries."""
    if not isinstance(args, dict):
        raise ValueError("the arguments must be an object")
    if kind in (Kind.ECHO, Kind.RENEW):
        _only(args)
        return {}
    if kind is Kind.BUNDLE:
        _only(args, "log_lines")
        return {"log_lines": _int(args, "log_lines", 1, MAX_LOG_LINES, DEFAULT_LOG_LINES)}
    if kind is Kind.RESEND:
        _only(args, "study_instance_uid", "accession")
        if len(args) != 1:
            raise ValueError("give exactly one of 'study_instance_uid' or 'accession'")
        if "accession" in args:
            return {"accession": _text(args, "accession", _ACCESSION)}
        uid = _text(args, "study_instance_uid", UID)
        if len(uid) > 64:
            raise ValueError("'study_instance_uid' is at most 64 characters")
        return {"study_instance_uid": uid}
    if kind is Kind.QUARANTINE:
        return _quarantine(args)
    if kind is Kind.CONFIG:
        _only(args, "document")
        return {"version": _int({"v": config_version}, "v", 1, 2**62), "document": check_config(args.get("document"))}
    if kind is Kind.RESTART:
        _only(args, "service")
        if args.get("service") not in RESTART_SERVICES:
            raise ValueError(f"'service' must be one of {', '.join(RESTART_SERVICES)}")
        return {"service": args["service"]}
    _only(args, "url", "sha256", "version")
    return {"url": _text(args, "url", _URL), "sha256": _text(args, "sha256", _SHA256),
            "version": _text(args, "version", _VERSION)}


def _quarantine(args: dict[str, Any]) -> dict[str, Any]:
    action = args.get("action")
    if action == "list":
        _only(args, "action")
        return {"action": "list"}
    if action in ("replay", "drop"):
        _only(args, "action", "item")
        return {"action": action, "item": _int(args, "item", 1, 2**62)}
    raise ValueError("'action' must be list, replay or drop")


def check_config(document: Any) -> str:
    """A configuration document: TOML that parses, within the size a command carries."""
    if not isinstance(document, str) or not document.strip():
        raise ValueError("'document' must be a non-empty TOML text")
    if len(document.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ValueError(f"'document' is longer than {MAX_CONFIG_BYTES} bytes")
    try:
        tomllib.loads(document)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"'document' is not TOML: {exc}") from None
    return document


def required_role(kind: Kind, args: dict[str, Any]) -> Role:
    if kind in (Kind.RESEND, Kind.CONFIG, Kind.UPDATE):
        return Role.ADMIN
    if kind is Kind.QUARANTINE and args.get("action") != "list":
        return Role.ADMIN
    return Role.OPERATOR


def at_rest_key(secret: bytes) -> bytes:
    """The key sealing queued arguments in the fleet store: HKDF-SHA256 of a cloud secret, for this use only."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=AT_REST_INFO).derive(secret)


def seal_args(key: bytes, file_id: bytes, command_id: str, box_id: str, args: dict[str, Any]) -> bytes:
    """The arguments sealed; ``file_id`` is 16 random bytes, fresh for every seal."""
    plain = json.dumps({"id": command_id, "box_id": box_id, "args": args}, sort_keys=True).encode("utf-8")
    return b"".join(atrest.seal_pieces(key, file_id, [plain]))


def open_args(key: bytes, command_id: str, box_id: str, sealed: bytes) -> dict[str, Any]:
    """The arguments of a stored command; ``IntegrityError`` if altered or moved to another row."""
    try:
        doc = json.loads(b"".join(atrest.open_pieces(key, [sealed])))
    except ValueError as exc:
        raise IntegrityError("stored command arguments do not open") from exc
    if not isinstance(doc, dict) or doc.get("id") != command_id or doc.get("box_id") != box_id \
            or not isinstance(doc.get("args"), dict):
        raise IntegrityError("stored command arguments do not belong to their row")
    return dict(doc["args"])
