"""One SQLite file shared by threads: a connection, a lock, numbered migrations, transactions.

The edge's side databases (exam records, Storage Commitment requests) and the cloud's fleet
store each open one of these instead of repeating the same connection code. Every
``sqlite3.Error`` leaves here as ``StorageError`` naming the database (docs/development.md, "Errors").
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from gateway.core.errors import StorageError


class SqliteDatabase:
    """Thread-safe: one connection in autocommit mode, one re-entrant lock, ``BEGIN IMMEDIATE``
    transactions. ``synchronous`` is FULL for custody data and NORMAL where the last second
    may be lost on a power cut (it still survives a process crash)."""

    def __init__(self, path: Path, what: str, *, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 wal: bool = True) -> None:
        self.path = path
        self._what = what
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            if wal:
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
        except sqlite3.Error as exc:
            raise StorageError(f"{what} {path}: {exc}") from exc

    @property
    def schema_version(self) -> int:
        return int(self.rows("PRAGMA user_version")[0][0])

    def migrate(self, migrations: Sequence[str]) -> None:
        """Apply the scripts after ``PRAGMA user_version``, each in its own transaction."""
        for number, script in enumerate(migrations[self.schema_version:], start=self.schema_version + 1):
            with self.tx() as conn:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back if the body raises."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"{self._what} {self.path}: {exc}") from exc

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self.lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self._what} {self.path}: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()
