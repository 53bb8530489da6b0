"""The seam between the cloud's shared SQL and a database backend.

The archive index (``gateway.cloud.archive.index.SqlIndex``) and the fleet store
(``gateway.cloud.fleet.store.SqlFleetStore``) write each table's schema and each query once,
in SQL that SQLite and PostgreSQL both run: ``?`` placeholders, ``INSERT ... ON CONFLICT ... DO
UPDATE/NOTHING``, ``RETURNING``, row values, ``CASE`` instead of ``max``/``GREATEST``, reserved
words quoted (``"end"``), no backend-only function. What differs lives in one small dialect
per backend, ``SqliteDatabase`` (``gateway/adapters/sqlite_db.py``) and ``PostgresDatabase``
(``gateway/adapters/postgres_db.py``), which both satisfy ``Database``:

* placeholders (``?`` stays, or becomes ``%s``);
* the column types a migration script names as ``{real}``, ``{bigint}`` and ``{id}`` (an
  integer key the database assigns);
* locking: a transaction's ``lock_key`` (an advisory lock on PostgreSQL; SQLite already
  serialises writers), and ``skip_locked``, the clause that lets concurrent claimers pass over
  rows another transaction holds;
* connections, transactions, and where the schema version lives (``PRAGMA user_version``, or a
  one-row table); both apply the same numbered migration scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol


class Statements(Protocol):
    """Run one statement (its rows as dicts), or one per row."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Database(Statements, Protocol):
    """One backend's connection: statements outside a transaction commit on their own."""

    where: str  # the file, or postgresql:<database>; never a password
    skip_locked: str  # "" or " FOR UPDATE SKIP LOCKED", appended to a claiming sub-select

    def transaction(self, lock_key: str = "") -> AbstractContextManager[Statements]: ...
    def migrate(self, migrations: Sequence[str]) -> None: ...
    def schema_version(self) -> int: ...
    def close(self) -> None: ...
