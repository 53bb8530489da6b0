"""The SQLite side of the SQL layer: the one way the product opens a SQLite file.

Every database the product writes opens its file here: the edge's spool (``store.py``,
``commitment_store.py``), its exam records (``exam_store.py``), the cloud's archive index
(``sqlite_index.py``) and fleet store (``sqlite_fleet_store.py``), the fleet CA's registry.
One connection in autocommit mode, one re-entrant lock, WAL, a busy timeout, ``BEGIN
IMMEDIATE`` write transactions (taken up front, so two writers never deadlock upgrading a read
lock), and numbered migrations under ``PRAGMA user_version``. ``synchronous`` is FULL for
custody data and NORMAL where a power cut may lose the last second (it still survives a
process crash). Every ``sqlite3.Error`` leaves here as ``StorageError`` naming the database
(docs/development.md, "Errors").

This is also the SQLite dialect of the cloud's shared SQL (``gateway.cloud.sql``): rows as
dicts, ``?`` placeholders as written, the portable column types of a migration script
rendered as SQLite spells them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from gateway.core.errors import StorageError
from gateway.core.sqlscript import AppendOnly, statements

BUSY_TIMEOUT_S = 30.0
Connection = sqlite3.Connection  # what ``tx()`` yields; the stores name these, never import sqlite3
Row = sqlite3.Row  # a row by column name or position
# The portable column types a migration script may name (``{real}``): SQLite's spelling.
TYPES: dict[str, object] = {"real": "REAL", "bigint": "INTEGER", "id": "INTEGER PRIMARY KEY",
                             "append_only": AppendOnly("sqlite")}


class SqliteDatabase:
    """Thread-safe: one connection, one re-entrant lock, one transaction at a time.

    ``read_only`` opens an existing file without write access (``mode=ro``): no journal mode,
    no migrations; for a reader of another component's database.
    """

    skip_locked = ""  # no row locks to skip: SQLite serialises writers (BEGIN IMMEDIATE)

    def __init__(self, path: Path, what: str, *, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 read_only: bool = False) -> None:
        self.path = path
        self.where = str(path)
        self._what = what
        self.lock = threading.RLock()
        try:
            if read_only:
                self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                            timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_S,
                                            isolation_level=None)
                _enable_wal(self.conn)
                self.conn.execute(f"PRAGMA synchronous={synchronous}")
            self.conn.row_factory = sqlite3.Row
            # sqlite-utils on the same connection, for writes of a dict row: inside one of our
            # transactions its writes take a SAVEPOINT (never a COMMIT of ours).
            self._utils = sqlite_utils.Database(self.conn)
        except sqlite3.Error as exc:
            raise StorageError(f"{what} {path}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"{what} {path}: {exc.strerror or exc}") from exc

    @contextmanager
    def _guarded(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            try:
                yield self.conn
            except (sqlite3.Error, OverflowError) as exc:
                raise StorageError(f"{self._what} {self.path}: {exc}") from exc

    def schema_version(self) -> int:
        return int(self.rows("PRAGMA user_version")[0][0])

    def migrate(self, migrations: Sequence[str], *, newer_ok: bool = False) -> None:
        """``apply_migrations`` without a backup (the shared SQL's ``Database.migrate``)."""
        self.apply_migrations(migrations, newer_ok=newer_ok)

    def apply_migrations(self, migrations: Sequence[str], *, newer_ok: bool = False,
                         backup_to: Callable[[int], Path] | None = None) -> tuple[int, int] | None:
        """Apply the numbered scripts after ``PRAGMA user_version``, each in its own write
        transaction with the version read inside it (two processes may open a new file at the same
        moment). A database whose version is newer than ``migrations`` is refused, unless
        ``newer_ok``: the edge's, whose migrations are additive, so that the older slot of an A/B
        update that rolled back runs on the data partition the newer one migrated.

        With ``backup_to``, a database that holds data (version 1 or more) is first copied to
        ``backup_to(version)``, once per version, inside the first step's write transaction: no
        other process can migrate between the copy and the step, and a copy that fails leaves
        the file unmigrated (``StorageError``). Returns ``(from, to)`` of the steps this call
        applied, or None when it applied none."""
        first: int | None = None
        while True:
            with self.tx() as conn:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version > len(migrations) and not newer_ok:
                    raise StorageError(f"{self._what} {self.path} has schema {version}, newer than this software")
                if version >= len(migrations):
                    return None if first is None else (first, version)
                if first is None and backup_to is not None and version > 0:
                    self._backup_once(backup_to(version))
                first = version if first is None else first
                for statement in statements(migrations[version].format_map(TYPES)):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")

    def _backup_once(self, dest: Path) -> None:
        if dest.exists():
            return  # taken before a power cut ended the migration: the same version, the same data
        try:
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"backup of {self.path} to {dest}: {exc.strerror or exc}") from exc
        backup(self.path, dest, self._what)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the connection itself; rolled back if the body raises."""
        with self._guarded() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def transaction(self, lock_key: str = "") -> Iterator[SqliteDatabase]:
        """One write transaction for the shared SQL (``gateway.cloud.sql.Database``). ``lock_key``
        needs nothing here: ``BEGIN IMMEDIATE`` already serialises every writer of the file."""
        with self.tx():
            yield self

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._guarded() as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One statement, its rows as dicts (none for a statement without ``RETURNING``)."""
        return [dict(r) for r in self.rows(sql, params)]

    def insert(self, table: str, row: dict[str, Any]) -> int:
        """Insert one row given as a dict (column names are the caller's, values bound); its rowid.

        Inside ``tx()`` it is part of that transaction; outside, a transaction of its own."""
        with self._guarded():
            inserted = self._utils.table(table).insert(row)
            return int(inserted.last_rowid or 0)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._guarded() as conn:
            conn.executemany(sql, rows)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL. The switch needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy handler, while another process opens or migrates the same new
    file (two cloud workers starting together): retry, bounded by the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
        time.sleep(delay)  # another process holds the file for a moment: back off, try again
        delay = min(delay * 2, 0.5)


def backup(path: Path, dest: Path, what: str) -> None:
    """A consistent copy of ``path`` as it is (SQLite's online backup from a read-only connection:
    it reads pages, which a ``SqliteDatabase`` does not hand out), fsynced, renamed into place."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        source = SqliteDatabase(path, what, read_only=True)
        target = sqlite3.connect(tmp)  # a scratch file that only the backup API writes
        try:
            with source.lock:
                source.conn.backup(target)
        finally:
            target.close()
            source.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(dest)
    except (sqlite3.Error, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"backup of {path} to {dest}: {exc}") from exc
