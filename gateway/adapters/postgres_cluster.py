"""A throwaway PostgreSQL cluster on a loopback port (tests, benchmarks, the demo).

Debian's server binaries (``/usr/lib/postgresql/<v>/bin``) are run directly:
``initdb`` into a fresh directory, ``postgres`` listening on 127.0.0.1 only,
trust authentication for loopback (the cluster lives and dies with its owner).
PostgreSQL refuses to run as root, so as root the cluster runs as the
``postgres`` system user (created by Debian's package).
Production uses a managed or packaged PostgreSQL; see docs/deployment.md.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.adapters.ports import free_port
from gateway.core.errors import LocalError

DATABASE = "mgw"


def server_bin_dir() -> Path | None:
    """Newest Debian PostgreSQL server bin dir, or None if the server is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    def __init__(self, port: int = 0) -> None:
        bindir = server_bin_dir()
        if bindir is None:
            raise LocalError("the PostgreSQL server is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.port = port or free_port()
        # Under /tmp, not a pytest tmp_path: the postgres user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="mgw-pg-"))
        self.data = self.root / "data"
        self._user = "postgres" if os.geteuid() == 0 else ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE} user=postgres connect_timeout=10"

    def _owner(self) -> dict[str, object]:
        """Popen arguments that run a server binary as the cluster's owner (never as root)."""
        if not self._user:
            return {}
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
                "env": {"PATH": "/usr/bin:/bin", "HOME": str(self.root), "LC_ALL": "C.UTF-8"}}

    def start(self, timeout_s: float = 60.0) -> None:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        init = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            capture_output=True, text=True, check=False, **self._owner())  # type: ignore[call-overload]
        if init.returncode != 0:
            raise LocalError(f"initdb failed: {init.stderr.strip()[-400:]}")
        self._proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "postgres.log", "ab"),  # noqa: SIM115
            **self._owner())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalError(f"postgres exited with {self._proc.returncode}; see {self.root}/postgres.log")
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False)
            if ready.returncode == 0:
                made = subprocess.run(
                    [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                     DATABASE], capture_output=True, text=True, check=False)
                if made.returncode != 0:
                    raise LocalError(f"createdb failed: {made.stderr.strip()}")
                return
            time.sleep(0.1)
        raise LocalError(f"postgres did not accept connections within {timeout_s} s")

    def create_database(self, name: str) -> str:
        """A fresh database on this cluster; returns its DSN."""
        made = subprocess.run(
            [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise LocalError(f"createdb {name} failed: {made.stderr.strip()}")
        return f"host=127.0.0.1 port={self.port} dbname={name} user=postgres connect_timeout=10"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGQUIT)  # immediate shutdown: the cluster is thrown away
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
