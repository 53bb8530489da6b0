"""The fleet store on SQLite: one file beside the fleet service's state (WAL, ``synchronous=NORMAL``).

The schema, statements and rules are ``SqlFleetStore``'s (``gateway.cloud.fleet.store``); the
file is opened, locked and migrated by ``SqliteDatabase`` (``PRAGMA user_version``).
"""

from __future__ import annotations

from pathlib import Path

from gateway.adapters.sqlite_db import SqliteDatabase
from gateway.cloud.fleet.store import SqlFleetStore


class SqliteFleetStore(SqlFleetStore):
    """``FleetStore`` on SQLite. Thread-safe: one connection, one lock, one transaction per call."""

    def __init__(self, path: Path) -> None:
        super().__init__(SqliteDatabase(path, "fleet database", synchronous="NORMAL"))
