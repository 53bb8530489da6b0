"""Installing an update bundle into the inactive slot: ``rauc install`` (the appliance image).

The thin seam of the ``update`` remote command. In the image, ``rauc install BUNDLE`` writes the
inactive slot (RAUC checks the bundle's signature against the image's keyring) and the update
hooks (``appliance/update.py``) gate it: ``pre_install`` before, the commit gate after the reboot
into it, rolling back on failure. The reboot is the installer's to arrange in the image. Outside the
image RAUC cannot run: ``MGW_UPDATE_INSTALLER`` (set in the unit's environment, never from a
command) names another program called the same way, with the bundle's path as its one argument;
with neither, the installation fails with its reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gateway.core.errors import LocalError

INSTALL_TIMEOUT_S = 1800.0
ENV = "MGW_UPDATE_INSTALLER"


def install(bundle: Path) -> None:
    program = os.environ.get(ENV) or shutil.which("rauc")
    if not program:
        raise LocalError("no installer on this box (RAUC runs in the appliance image only)")
    args = [program, str(bundle)] if os.environ.get(ENV) else [program, "install", str(bundle)]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalError(f"installer failed: {exc}") from exc
    if out.returncode != 0:
        raise LocalError(f"installer exited {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]}")
