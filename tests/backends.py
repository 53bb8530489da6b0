"""The cloud index/staging backends a test can run against: SQLite files, or a real PostgreSQL.

``pg_cluster`` (session scope, tests/conftest.py) starts one PostgreSQL server
from Debian's packages on a loopback port (``start_cluster``); each test gets its own database.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.adapters import ports
from gateway.adapters.postgres_cluster import PostgresCluster
from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud.archive.store import Archive
from gateway.cloud.fleet.store import FleetStore
from gateway.cloud.ingest.staging import FileStaging, Staging
from gateway.config import IndexSettings
from gateway.core.errors import LocalError, PortInUseError

_numbers = itertools.count()
CLUSTER_ROOTS: list[Path] = []  # every cluster this process started (under /tmp, not a pytest tmp dir)


def start_cluster() -> PostgresCluster:
    """A PostgreSQL cluster on a port picked free, and on another if that one was taken before
    postgres bound it (postgres cannot bind port 0 and tell)."""
    return ports.on_free_port(_cluster_on)


def _cluster_on(port: int) -> PostgresCluster:
    cluster = PostgresCluster(port)
    CLUSTER_ROOTS.append(cluster.root)
    try:
        cluster.start()
        # postgres's own pid file names the postmaster: it, not another server, must hold the port
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        if not ports.listens(postmaster, port):
            raise PortInUseError(f"postgres: another server answers on port {port}")
    except LocalError as exc:
        log = cluster.root / "postgres.log"
        said = log.read_text(errors="replace") if log.exists() else ""
        cluster.stop()
        if ports.IN_USE in said:
            raise PortInUseError(f"postgres: port {port} was taken") from exc
        raise
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class Backend:
    name: str  # "sqlite" or "postgres"
    cluster: PostgresCluster | None = None
    _dsn: str = field(default="", init=False)

    @property
    def dsn(self) -> str:
        """The test's own database (created on first use); "" for SQLite."""
        if self.cluster is not None and not self._dsn:
            self._dsn = self.cluster.create_database(f"t{os.getpid()}_{next(_numbers)}")
        return self._dsn

    def archive(self, root: Path) -> Archive:
        if self.cluster is None:
            return Archive(root / "archive", root / "index.db")
        from gateway.adapters.postgres_index import PostgresIndex

        return Archive(root / "archive", PostgresIndex(self.dsn))

    def fleet_store(self, root: Path) -> FleetStore:
        if self.cluster is None:
            return SqliteFleetStore(root / "fleet.db")
        from gateway.adapters.postgres_fleet_store import PostgresFleetStore

        return PostgresFleetStore(self.dsn)

    def index_settings(self) -> IndexSettings:
        """The cloud's ``[index]`` for this backend (the defaults for SQLite)."""
        return IndexSettings() if self.cluster is None else IndexSettings(backend="postgres", dsn=self.dsn)

    def staging(self, root: Path) -> Staging:
        if self.cluster is None:
            return FileStaging(root / "staging")
        from gateway.adapters.postgres_staging import PostgresStaging

        return PostgresStaging(self.dsn)

    def staged_names(self, root: Path) -> list[str]:
        """``<seq>.chunk`` for every staged chunk, sorted."""
        if self.cluster is None:
            staging = root / "staging"
            return sorted(p.name for p in staging.rglob("*.chunk")) if staging.exists() else []
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            return sorted(f"{seq}.chunk" for (seq,) in conn.execute("SELECT seq FROM staged_chunks"))

    def damage_staged(self, root: Path, box: str, transfer_hex: str, seq: int, how: str) -> None:
        """Flip the last bit of a staged chunk, or truncate it to 50 bytes (our disk going bad)."""
        def damaged(raw: bytes) -> bytes:
            flipped = raw[:-1] + bytes([raw[-1] ^ 0x01])
            return flipped if how == "flip" else flipped[:50]

        if self.cluster is None:
            victim = root / "staging" / box / transfer_hex / f"{seq}.chunk"
            victim.write_bytes(damaged(victim.read_bytes()))
            return
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            (raw,) = conn.execute("SELECT frame FROM staged_chunks WHERE seq = %s", [seq]).fetchone()
            conn.execute("UPDATE staged_chunks SET frame = %s WHERE seq = %s", [damaged(bytes(raw)), seq])
