"""The archive index on PostgreSQL (psycopg 3), for ingest workers on several machines.

The contract, schema and queries are ``SqlIndex``'s (``gateway.cloud.archive.index``);
``PostgresDatabase`` is the dialect: a transaction that names a ``lock_key`` first takes
``pg_advisory_xact_lock`` on a 64-bit hash of it, so two workers filing the same SOP Instance
UID are serialised exactly as ``BEGIN IMMEDIATE`` serialises them on SQLite, while unrelated
objects commit in parallel; forward claims use ``FOR UPDATE SKIP LOCKED``; migrations run in
one transaction under an advisory lock, so workers starting together migrate once. Step 1
also creates the shared staging's tables (``postgres_staging.TABLES``): one database, one
schema version.
"""

from __future__ import annotations

from gateway.adapters.postgres_db import PostgresDatabase
from gateway.adapters.postgres_staging import TABLES as STAGING_TABLES
from gateway.cloud.archive.index import MIGRATIONS, SqlIndex


class PostgresIndex(SqlIndex):
    """The index on PostgreSQL. Usable from any thread, one call at a time."""

    def __init__(self, dsn: str) -> None:
        super().__init__(PostgresDatabase(dsn, "archive index"))

    def migrations(self) -> tuple[str, ...]:
        return (MIGRATIONS[0] + ";" + STAGING_TABLES, *MIGRATIONS[1:])
