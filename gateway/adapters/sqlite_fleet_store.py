"""The fleet store on SQLite: one file beside the fleet service's state (WAL, ``synchronous=NORMAL``).

The statements, migrations and rules are ``SqlFleetStore``'s (``gateway.cloud.fleet.store``);
this module supplies the connection, the transactions and ``PRAGMA user_version`` as the schema
version. ``sqlite3.Error`` becomes ``StorageError``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.cloud.fleet.store import MIGRATIONS, SqlFleetStore, Statements
from gateway.core.errors import StorageError


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


class _SqliteStatements:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SqliteFleetStore(SqlFleetStore):
    """``FleetStore`` on SQLite. Thread-safe: one connection, one lock, one transaction per call."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0, isolation_level=None)
            self._conn.row_factory = _dict_row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (sqlite3.Error, OverflowError) as exc:
            raise StorageError(f"fleet database {path}: {exc}") from exc

    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0]["user_version"])

    def _migrate(self) -> None:
        """Each numbered migration in its own write transaction, the version read inside it: the
        ingest workers and the fleet service may open a new fleet.db at the same moment."""
        while True:
            self._conn.execute("BEGIN IMMEDIATE")
            version = self._conn.execute("PRAGMA user_version").fetchone()["user_version"]
            if version > len(MIGRATIONS):
                self._conn.execute("ROLLBACK")
                raise StorageError(f"fleet database {self.where} has schema {version}, newer than this software")
            if version == len(MIGRATIONS):
                self._conn.execute("COMMIT")
                return
            try:
                for statement in filter(str.strip, MIGRATIONS[version].split(";")):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={version + 1}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _tx(self) -> Iterator[Statements]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _SqliteStatements(self._conn)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OverflowError) as exc:
                raise StorageError(f"fleet database: {exc}") from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"fleet database: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
