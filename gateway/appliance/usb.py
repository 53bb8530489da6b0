"""What a USB stick means to the box, decided without hardware.

udev starts ``mgw-usb@<dev>.service`` for each USB filesystem; it mounts the
stick read-only (``adapters.udev_watch.mounted``: vfat or exFAT only) and calls
``handle_stick`` with the mount point:

1. anything named ``MGW-PROVISION.bundle`` at the root: run ``mgw provision
   --bundle <it>`` (which refuses a link or special file, verifies and applies
   it), then restart the edge service so it runs with the new identity.
2. else, if the uplink has been down at least ``appliance.export_after_down_s``:
   remount the stick read-write and write the emergency export
   (``appliance.export``) onto it.
3. else: nothing (logged), the stick is unmounted untouched.
"""

from __future__ import annotations

import enum
import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from gateway.adapters import safefs
from gateway.appliance import status
from gateway.appliance.export import MANIFEST_NAME, export_unacked
from gateway.config import EdgeSettings
from gateway.core.errors import ConfigError, LocalError
from gateway.logs import MSG, escape
from gateway.paths import Paths

log = logging.getLogger(__name__)
PROVISION_BUNDLE = "MGW-PROVISION.bundle"
PROVISION_TIMEOUT_S = 600.0


class StickAction(enum.Enum):
    PROVISION = "provision"
    EXPORT = "export"
    IGNORE = "ignore"


def decide(mountpoint: Path, uplink: status.UplinkState | None, export_after_down_s: float | None,
           now: float) -> StickAction:
    """Pure but for one lstat: what to do with the stick mounted at ``mountpoint``.

    A bundle name that is a link or a special file still means provisioning: the provisioning
    command refuses it and says so, rather than the stick being silently used for an export."""
    if os.path.lexists(mountpoint / PROVISION_BUNDLE):
        return StickAction.PROVISION
    if uplink is not None and export_after_down_s is not None and uplink.down_for_s(now) >= export_after_down_s:
        return StickAction.EXPORT
    return StickAction.IGNORE


def handle_stick(mountpoint: Path, load_settings: Callable[[], EdgeSettings], paths: Paths,
                 provision_command: Sequence[str], restart_command: Sequence[str] | None,
                 now: float | None = None, make_writable: Callable[[], None] = lambda: None) -> StickAction:
    """Act on a mounted stick; ``LocalError`` if provisioning fails or the export is incomplete.

    ``make_writable`` remounts the (read-only) stick read-write, for the export only."""
    now = time.time() if now is None else now
    try:
        settings: EdgeSettings | None = load_settings()
    except ConfigError as exc:  # an unprovisioned box: only a bundle means anything
        settings = None
        log.info("no usable configuration; only provisioning is possible", extra={"ERROR": str(exc)})
    after = settings.appliance.export_after_down_s if settings is not None else None
    action = decide(mountpoint, status.read_uplink(paths.state_dir), after, now)
    try:
        if action is StickAction.PROVISION:
            _provision(mountpoint / PROVISION_BUNDLE, provision_command, restart_command)
        elif action is StickAction.EXPORT:
            assert settings is not None
            make_writable()
            _export(settings, paths, mountpoint, now)
        else:
            log.info("USB stick ignored: no bundle, uplink not down long enough", extra={
                "MESSAGE_ID": MSG.USB_STICK_IGNORED.value})
    finally:
        hand_over(paths.state_dir)
    return action


def _export(settings: EdgeSettings, paths: Paths, mountpoint: Path, now: float) -> None:
    summary = export_unacked(settings, paths, mountpoint, now)
    if not summary.complete:
        raise LocalError(f"emergency export incomplete: {len(summary.failed)} item(s) not written; "
                         f"{MANIFEST_NAME} on the stick lists what is there")


def hand_over(state_dir: Path) -> int:
    """Give what we (root) created under the state directory to its owner, the service user.

    The handler runs as root (it mounts); provisioning writes keys and device.toml, and
    opening the spool database can create its -wal/-shm files. Left root-owned, the
    edge (User=mgw) could not read them. The service user can change that folder while we
    walk it, so nothing is followed (``safefs.hand_over``). Returns how many entries changed.
    """
    return safefs.hand_over(state_dir)


def _provision(bundle: Path, provision_command: Sequence[str], restart_command: Sequence[str] | None) -> None:
    cmd = [*provision_command, "--bundle", str(bundle)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PROVISION_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _failed(f"cannot run {cmd[0]}: {exc}")
    if result.returncode != 0:
        _failed((result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1])
    log.info("provisioning bundle applied", extra={"MESSAGE_ID": MSG.USB_PROVISION_APPLIED.value})
    if restart_command:
        subprocess.run(list(restart_command), check=False, timeout=120)


def _failed(reason: str) -> NoReturn:
    log.error("provisioning bundle not applied", extra={"MESSAGE_ID": MSG.USB_PROVISION_FAILED.value,
                                                        "REASON": reason})
    raise LocalError(f"provisioning failed: {escape(reason)}")
