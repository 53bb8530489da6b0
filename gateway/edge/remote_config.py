"""The box's remote-managed settings (the ``config`` remote command): ``<state_dir>/remote.toml``.

Central operations change a box's configuration by sending a new version of one TOML document,
read last, over the site and device files (``settings_files.edge_settings``). Only the tables and
keys of ``REMOTE_KEYS`` may appear in it: what ops may tune from afar (the uplink, the spool's
policy, Storage Commitment's modality addresses, priorities, the worklist, heartbeats, utilisation,
and the broker's address for a broker move). The box's identity, keys, paths and enrolment are
never remote-managed.

Applying a version, in order, each step durable before the next:

1. ``validate``: the document parses, names only ``REMOTE_KEYS``, and the settings it makes with
   the box's other files pass ``config.load_edge``'s checks;
2. ``stage``: the current document is kept as ``remote.previous.toml``, the new one written
   atomically, and ``remote_config.json`` says which command is pending; the edge restarts;
3. at the next start (``starting``) the attempt is counted; the edge runs the health check
   (its loops alive, the uplink and telemetry connections up within ``health.config_check_s``, 30 s by default) and
   ``commit``s, or ``roll_back``s (the previous document restored) and restarts again. A start
   that finds the attempt already counted (the new settings crashed the edge before its check)
   rolls back before it reads the settings.

``config_version`` (birth, heartbeat, /metrics) is the version the box runs: 0 until a remote change.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gateway import config
from gateway.adapters import blobs
from gateway.core.errors import ConfigError
from gateway.logs import MSG

log = logging.getLogger(__name__)
FILE_NAME = "remote.toml"
PREVIOUS_NAME = "remote.previous.toml"
STATE_NAME = "remote_config.json"
_ALL = frozenset({"*"})
REMOTE_KEYS: dict[str, frozenset[str]] = {
    "uplink": _ALL, "spool": frozenset({"retention_hours", "high_water_percent", "low_water_percent",
                                        "study_stable_s", "encrypt_at_rest"}),
    "commitment": _ALL, "priority": _ALL, "worklist": _ALL, "utilisation": _ALL,
    "health": frozenset({"heartbeat_s"}),
    "mqtt": frozenset({"host", "port", "keepalive_s", "reconnect_min_s", "reconnect_max_s"}),
}


@dataclass(frozen=True)
class State:
    version: int = 0  # the version the box runs (committed)
    previous_version: int = 0
    pending: str = ""  # the command id of a version staged, not yet committed
    pending_version: int = 0
    attempts: int = 0  # starts with the pending version
    last_command: str = ""  # the command the last commit or roll-back finished
    last_applied: bool = False
    last_rolled_back: bool = False
    last_reason: str = ""


def remote_file(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def read_state(state_dir: Path) -> State:
    try:
        doc = json.loads((state_dir / STATE_NAME).read_bytes())
        return State(**{k: v for k, v in doc.items() if k in State.__dataclass_fields__})
    except FileNotFoundError:
        return State()
    except (OSError, ValueError, TypeError) as exc:
        log.error("remote configuration state unreadable; treating as version 0", extra={"ERROR": str(exc)})
        return State()


def _write_state(state_dir: Path, state: State) -> None:
    blobs.write_atomic(state_dir / STATE_NAME, json.dumps(asdict(state)).encode(), mode=0o600)


def version(state_dir: Path) -> int:
    return read_state(state_dir).version


def _check_keys(doc: dict[str, Any]) -> None:
    for table, body in doc.items():
        allowed = REMOTE_KEYS.get(table)
        if allowed is None:
            raise ConfigError(f"[{table}] is not remote-managed (allowed: {', '.join(sorted(REMOTE_KEYS))})")
        if not isinstance(body, dict):
            raise ConfigError(f"'{table}' must be a table")
        if allowed is not _ALL:
            for key in body:
                if key not in allowed:
                    raise ConfigError(f"'{table}.{key}' is not remote-managed")


def validate(document: str, base_files: list[Path], state_dir: Path) -> config.EdgeSettings:
    """The settings ``document`` makes with ``base_files``; ``ConfigError`` naming what is wrong."""
    try:
        doc = tomllib.loads(document)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    _check_keys(doc)
    candidate = state_dir / (FILE_NAME + ".check")
    blobs.write_atomic(candidate, document.encode(), mode=0o600)
    try:
        return config.load_edge([*base_files, candidate])
    finally:
        blobs.remove(candidate)


def stage(state_dir: Path, new_version: int, document: str, command_id: str) -> None:
    current = remote_file(state_dir)
    previous = state_dir / PREVIOUS_NAME
    if current.exists():
        blobs.write_atomic(previous, current.read_bytes(), mode=0o600)
    else:
        blobs.remove(previous)
    state = read_state(state_dir)
    _write_state(state_dir, replace(state, pending=command_id, pending_version=new_version, attempts=0))
    blobs.write_atomic(current, document.encode(), mode=0o600)


def starting(state_dir: Path) -> State:
    """At the edge's start, before its settings are read: count an attempt of a pending version,
    and roll back one that already had its attempt (it crashed the edge before the health check)."""
    state = read_state(state_dir)
    if not state.pending:
        return state
    if state.attempts >= 1:
        return roll_back(state_dir, "the edge did not start with the new settings")
    state = replace(state, attempts=state.attempts + 1)
    _write_state(state_dir, state)
    return state


def commit(state_dir: Path) -> State:
    state = read_state(state_dir)
    done = State(version=state.pending_version, previous_version=state.version, last_command=state.pending,
                 last_applied=True)
    _write_state(state_dir, done)
    blobs.remove(state_dir / PREVIOUS_NAME)
    return done


def roll_back(state_dir: Path, reason: str) -> State:
    state = read_state(state_dir)
    previous = state_dir / PREVIOUS_NAME
    if previous.exists():
        blobs.write_atomic(remote_file(state_dir), previous.read_bytes(), mode=0o600)
        blobs.remove(previous)
    else:
        blobs.remove(remote_file(state_dir))
    done = State(version=state.version, previous_version=state.previous_version, last_command=state.pending,
                 last_applied=False, last_rolled_back=True, last_reason=reason[:200])
    _write_state(state_dir, done)
    log.warning("remote configuration version %d rolled back: %s", state.pending_version, reason, extra={
        "MESSAGE_ID": MSG.CONFIG_ROLLED_BACK.value, "VERSION": state.pending_version,
        "RUNNING_VERSION": state.version})
    return done
