"""Which configuration files a command reads, and the settings and paths they give.

``--config`` (repeatable) names the files; without it the defaults for the service name
(``Paths.default_config_files``). Shared by every subcommand that loads a service's settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway import config
from gateway.core.errors import ConfigError
from gateway.i18n import _
from gateway.paths import Paths


def config_files(args: argparse.Namespace, name: str) -> list[Path]:
    files = [Path(p) for p in args.config] if args.config else Paths.from_env().default_config_files(name)
    if not files:
        raise ConfigError(_("no configuration: pass --config or create /etc/gateway/{name}.toml").format(name=name))
    return files


def edge_settings(args: argparse.Namespace, starting: bool = False) -> tuple[config.EdgeSettings, Paths]:
    """The edge's settings: its files, then the remote-managed ``<state_dir>/remote.toml`` if present
    (``edge/remote_config.py``; ``starting``: the edge service's start, which counts an attempt of a
    pending version and rolls back one that crashed it)."""
    from gateway.edge import remote_config

    files = config_files(args, "gateway")
    settings = config.load_edge(files)
    paths = Paths.from_env(settings.box.state_dir, base=files[0].parent)
    if starting:
        remote_config.starting(paths.state_dir)
    remote = remote_config.remote_file(paths.state_dir)
    if remote.exists():
        try:
            settings = config.load_edge([*files, remote])
        except ConfigError as exc:  # validated when applied: the site files changed under it since
            if not starting:
                raise
            remote_config.roll_back(paths.state_dir, str(exc))
            settings = config.load_edge([*files, remote]) if remote.exists() else settings
    return settings, paths


def cloud_settings(args: argparse.Namespace) -> tuple[config.CloudSettings, Paths]:
    files = config_files(args, "cloud")
    settings = config.load_cloud(files)
    return settings, Paths.from_env(settings.cloud.state_dir, base=files[0].parent)
