"""The fleet store on PostgreSQL (psycopg 3), in the database of ``[index]`` beside the archive index.

The schema, statements and migration numbers are ``SqlFleetStore``'s (``gateway.cloud.fleet.store``);
``PostgresDatabase`` is the dialect, with the schema version in ``fleet_schema_version`` (the
archive index has its own ``schema_version``). A connection the server dropped is replaced on
the next call: that call fails with ``StorageError`` (the exam record stays unacknowledged and
the edge re-sends it), the following ones succeed.
"""

from __future__ import annotations

from gateway.adapters.postgres_db import PostgresDatabase
from gateway.cloud.fleet.store import SqlFleetStore


class PostgresFleetStore(SqlFleetStore):
    """``FleetStore`` on PostgreSQL. Thread-safe: one connection, one lock, one transaction per call."""

    def __init__(self, dsn: str) -> None:
        super().__init__(PostgresDatabase(dsn, "fleet database", version_table="fleet_schema_version"))
