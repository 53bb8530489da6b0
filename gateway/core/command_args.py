"""A command's arguments, per kind, parsed into typed values (docs/operations.md, "Remote operations"); pure.

The sealed ``CommandArgs.args`` of a frame the box checked is still input from outside: a key the
kind does not take, a missing one, a value of the wrong type or out of range, and the command is
refused as ``bad-arguments`` (``CommandRefused``) before it is recorded or run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.core.command_wire import CommandRefused, Header, Kind, Refusal

RESTARTABLE = ("edge",)  # the services a command may restart (the box's allow-list)
MAX_LOG_LINES = 20000
DEFAULT_LOG_LINES = 2000
MAX_CONFIG_BYTES = 40 * 1024
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TEXT = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+~-]{0,63}$")


@dataclass(frozen=True)
class Echo:
    pass


@dataclass(frozen=True)
class Bundle:
    log_lines: int


@dataclass(frozen=True)
class Resend:
    study_instance_uid: str | None
    accession: str | None


@dataclass(frozen=True)
class Quarantine:
    action: str  # list, replay, drop
    item: int | None


@dataclass(frozen=True)
class Config:
    version: int
    document: str


@dataclass(frozen=True)
class Renew:
    pass


@dataclass(frozen=True)
class Restart:
    service: str


@dataclass(frozen=True)
class Update:
    url: str
    sha256: str
    version: str


Args = Echo | Bundle | Resend | Quarantine | Config | Renew | Restart | Update


class _Bad(Exception):
    pass


def _keys(args: dict[str, Any], required: set[str], optional: set[str] | None = None) -> None:
    unknown = set(args) - required - (optional or set())
    if unknown:
        raise _Bad(f"unknown argument {sorted(unknown)[0]!r}")
    missing = required - set(args)
    if missing:
        raise _Bad(f"missing argument {sorted(missing)[0]!r}")


def _int(args: dict[str, Any], key: str, low: int, high: int) -> int:
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad(f"{key!r} must be an integer {low}..{high}")
    return value


def _str(args: dict[str, Any], key: str, pattern: re.Pattern[str], what: str, max_len: int = 64) -> str:
    value = args[key]
    if not isinstance(value, str) or len(value) > max_len or not pattern.match(value):
        raise _Bad(f"{key!r} must be {what}")
    return value


def _echo(a: dict[str, Any]) -> Args:
    _keys(a, set())
    return Echo()


def _bundle(a: dict[str, Any]) -> Args:
    _keys(a, set(), {"log_lines"})
    return Bundle(_int(a, "log_lines", 1, MAX_LOG_LINES) if "log_lines" in a else DEFAULT_LOG_LINES)


def _resend(a: dict[str, Any]) -> Args:
    _keys(a, set(), {"study_instance_uid", "accession"})
    if len(a) != 1:
        raise _Bad("exactly one of 'study_instance_uid' or 'accession'")
    if "study_instance_uid" in a:
        return Resend(_str(a, "study_instance_uid", _UID, "a UID (digits and dots, at most 64)"), None)
    return Resend(None, _str(a, "accession", _TEXT, "text of 1..64 characters"))


def _quarantine(a: dict[str, Any]) -> Args:
    action = a.get("action")
    if action == "list":
        _keys(a, {"action"})
        return Quarantine("list", None)
    if action in ("replay", "drop"):
        _keys(a, {"action", "item"})
        return Quarantine(str(action), _int(a, "item", 1, 2**63 - 1))
    raise _Bad("'action' must be list, replay or drop")


def _config(a: dict[str, Any]) -> Args:
    _keys(a, {"version", "document"})
    document = a["document"]
    if not isinstance(document, str) or len(document.encode()) > MAX_CONFIG_BYTES:
        raise _Bad(f"'document' must be TOML text of at most {MAX_CONFIG_BYTES} bytes")
    return Config(_int(a, "version", 1, 2**31 - 1), document)


def _renew(a: dict[str, Any]) -> Args:
    _keys(a, set())
    return Renew()


def _restart(a: dict[str, Any]) -> Args:
    _keys(a, {"service"})
    if a["service"] not in RESTARTABLE:
        raise _Bad(f"'service' must be one of {', '.join(RESTARTABLE)}")
    return Restart(str(a["service"]))


def _update(a: dict[str, Any]) -> Args:
    _keys(a, {"url", "sha256", "version"})
    url = a["url"]
    if not isinstance(url, str) or not url.startswith("https://") or len(url) > 512 \
            or not re.match(r"^[\x21-\x7e]+$", url):
        raise _Bad("'url' must be an https:// URL of at most 512 characters")
    return Update(url, _str(a, "sha256", _SHA256, "64 lowercase hex digits"),
                  _str(a, "version", _VERSION, "a version (letters, digits, . + ~ -)"))


_PARSERS = {Kind.ECHO: _echo, Kind.BUNDLE: _bundle, Kind.RESEND: _resend, Kind.QUARANTINE: _quarantine,
            Kind.CONFIG: _config, Kind.RENEW: _renew, Kind.RESTART: _restart, Kind.UPDATE: _update}


def parse(header: Header, args: dict[str, Any]) -> Args:
    """The typed arguments of a command of ``header.kind``, or ``CommandRefused(BAD_ARGS)``."""
    try:
        return _PARSERS[header.kind](args)
    except _Bad as exc:
        raise CommandRefused(Refusal.BAD_ARGS, f"{header.kind.value}: {exc}", header.command_id,
                             header.seq) from None
