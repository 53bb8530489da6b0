"""Where things live. The only module that reads the environment.

systemd passes ``$CONFIGURATION_DIRECTORY``, ``$STATE_DIRECTORY`` and
``$RUNTIME_DIRECTORY``; without them we fall back to /etc, /var/lib and /run
``/gateway``. A ``state_dir`` in the configuration overrides (tests, demo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env_dir(name: str, fallback: str) -> Path:
    value = os.environ.get(name, "")
    # systemd may pass several colon-separated directories; the first is ours.
    return Path(value.split(":")[0]) if value else Path(fallback)


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    runtime_dir: Path

    @classmethod
    def from_env(cls, state_dir_override: str = "", base: Path | None = None) -> Paths:
        state = Path(state_dir_override) if state_dir_override else _env_dir("STATE_DIRECTORY", "/var/lib/gateway")
        if base is not None and not state.is_absolute():
            state = base / state
        return cls(
            config_dir=_env_dir("CONFIGURATION_DIRECTORY", "/etc/gateway"),
            state_dir=state,
            runtime_dir=_env_dir("RUNTIME_DIRECTORY", "/run/gateway"),
        )

    # edge
    @property
    def spool_db(self) -> Path:
        return self.state_dir / "spool.db"

    @property
    def worklist_db(self) -> Path:
        return self.state_dir / "worklist.db"

    @property
    def incoming_dir(self) -> Path:
        return self.state_dir / "spool" / "incoming"

    @property
    def blob_dir(self) -> Path:
        return self.state_dir / "spool" / "blobs"

    @property
    def outbox_dir(self) -> Path:
        return self.state_dir / "spool" / "outbox"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "spool" / "quarantine"

    # cloud
    @property
    def archive_dir(self) -> Path:
        return self.state_dir / "archive"

    @property
    def archive_db(self) -> Path:
        return self.state_dir / "archive.db"

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    def key_file(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.state_dir / path

    def default_config_files(self, name: str) -> list[Path]:
        """Site file then device file, the second overriding the first."""
        files = [self.config_dir / f"{name}.toml", self.state_dir / "device.toml"]
        return [f for f in files if f.exists()]
