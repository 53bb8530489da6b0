"""The archive index on SQLite: the default, embedded backend of ``Index``.

One file, WAL, ``synchronous=FULL``; every write is a ``BEGIN IMMEDIATE`` transaction, so
writers on one node are serialised. The contract, schema and queries are ``SqlIndex``'s
(``gateway.cloud.archive.index``); the file is opened, locked and migrated by
``SqliteDatabase``, where ``sqlite3.Error`` becomes ``StorageError``.
"""

from __future__ import annotations

from pathlib import Path

from gateway.adapters.sqlite_db import SqliteDatabase
from gateway.cloud.archive.index import SqlIndex


class SqliteIndex(SqlIndex):
    """The embedded index. Usable from any thread, one call at a time."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(SqliteDatabase(db_path, "archive index", synchronous="FULL"))
