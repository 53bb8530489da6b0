"""A systemd unit's state, as ``systemctl show`` reports it (the update commit gate's view of the edge).

``unit_state`` answers None where systemd is not the service manager (no
``/run/systemd/system``: a test machine, a container): the caller then relies on
what the service itself reports (``/run/gateway/edge.json``). A unit is healthy
for the gate when it is ``active``/``running``; ``NRestarts`` counts the restarts
systemd made (``Restart=on-failure``), so a rise means the service died in between
even if it is running again now.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.core.errors import LocalError

PROPERTIES = ("ActiveState", "SubState", "NRestarts", "MainPID")
SHOW_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class UnitState:
    active: str  # ActiveState: active, activating, deactivating, failed, inactive, reloading
    sub: str  # SubState: running, auto-restart, start, dead, ...
    restarts: int  # NRestarts
    main_pid: int  # MainPID, 0 while none

    @property
    def running(self) -> bool:
        return self.active == "active" and self.sub == "running"


def parse_show(text: str) -> UnitState:
    """``KEY=VALUE`` lines of ``systemctl show --property=...``; a missing or non-numeric count is 0."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def number(key: str) -> int:
        raw = values.get(key, "")
        return int(raw) if raw.isdigit() else 0

    return UnitState(values.get("ActiveState", ""), values.get("SubState", ""), number("NRestarts"),
                     number("MainPID"))


def unit_state(unit: str, system_root: Path = Path("/run/systemd/system")) -> UnitState | None:
    """The unit's state, or None when systemd does not manage this machine."""
    systemctl = shutil.which("systemctl")
    if not system_root.is_dir() or systemctl is None:
        return None
    try:
        out = subprocess.run([systemctl, "show", f"--property={','.join(PROPERTIES)}", unit],
                             capture_output=True, text=True, timeout=SHOW_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalError(f"systemctl show {unit}: {exc}") from exc
    if out.returncode != 0:
        raise LocalError(f"systemctl show {unit}: {out.stderr.strip()[:200]}")
    return parse_show(out.stdout)
