"""Small state files the edge service leaves for the appliance tools.

* ``<state>/uplink.json``: is the uplink up, and since when (wall clock). On the
  data partition, so an outage that spans a reboot keeps its start; the USB
  handler reads it to decide on an emergency export.
* ``<runtime>/edge.json``: pid and version of the running edge service, written
  once it is ready; the update commit gate checks the NEW version is the one
  that came up.

Writers are observers: a failure is logged and swallowed, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters import blobs
from gateway.core.errors import GatewayError

log = logging.getLogger(__name__)
UPLINK_FILE = "uplink.json"
EDGE_STATUS_FILE = "edge.json"


@dataclass(frozen=True)
class UplinkState:
    up: bool
    since: float

    def down_for_s(self, now: float) -> float:
        """Seconds the uplink has been down (0 while it is up)."""
        return 0.0 if self.up else max(0.0, now - self.since)


def read_uplink(state_dir: Path) -> UplinkState | None:
    try:
        doc = json.loads((state_dir / UPLINK_FILE).read_text())
        return UplinkState(bool(doc["up"]), float(doc["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_uplink(state_dir: Path, up: bool, now: float, at_start: bool = False) -> None:
    """Record a change; at start a recorded outage keeps its beginning."""
    previous = read_uplink(state_dir)
    if previous is not None and previous.up == up and (at_start or not up):
        return
    _write(state_dir / UPLINK_FILE, {"up": up, "since": now})


def record_edge_ready(runtime_dir: Path, version: str, now: float) -> None:
    _write(runtime_dir / EDGE_STATUS_FILE, {"pid": os.getpid(), "version": version, "ready_at": now})


def read_edge_status(runtime_dir: Path) -> dict[str, Any] | None:
    """The running edge's status, or None if absent or its process is gone.

    A reader that may not signal the edge (another user, without CAP_KILL: the update gate's
    unit) still learns that it exists: the kernel answers EPERM for a process, ESRCH for none."""
    try:
        doc = json.loads((runtime_dir / EDGE_STATUS_FILE).read_text())
        if not isinstance(doc, dict):
            return None
        pid = int(doc["pid"])
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except PermissionError:
            pass  # it exists, and is not ours to signal
        return doc
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        blobs.write_atomic(path, json.dumps(doc).encode(), mode=0o644)
    except (OSError, GatewayError) as exc:
        log.warning("cannot write a status file", extra={"PATH": str(path), "ERROR": str(exc)})
