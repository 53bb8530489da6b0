"""The archive index on PostgreSQL (psycopg 3), for ingest workers on several machines.

Same tables and semantics as ``SqliteIndex`` (contract: ``gateway.cloud.archive.index``).
Concurrency: a transaction that names a ``lock_key`` first takes
``pg_advisory_xact_lock`` on a 64-bit hash of it, so two workers filing the same
SOP Instance UID are serialised exactly as ``BEGIN IMMEDIATE`` serialises them
on SQLite; unrelated objects commit in parallel. Forward claims use
``FOR UPDATE SKIP LOCKED``. Migrations run in one transaction under a fixed
advisory lock, so workers starting together migrate once.

``psycopg.Error`` becomes ``StorageError`` here; the DSN's password, if any,
never reaches a message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.cloud.archive.index import Row
from gateway.core.errors import StorageError

MIGRATION_LOCK = 0x6D67_7769_6478  # "mgwidx"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # v1: as SqliteIndex v1
        """CREATE TABLE instances (
             sop_instance_uid text NOT NULL, sha256 text NOT NULL, study_instance_uid text NOT NULL,
             series_instance_uid text NOT NULL, sop_class_uid text NOT NULL, transfer_syntax text NOT NULL,
             size bigint NOT NULL, path text NOT NULL UNIQUE, box_id text NOT NULL, transfer_id text NOT NULL,
             stored_at double precision NOT NULL, PRIMARY KEY (sop_instance_uid, sha256))""",
        "CREATE INDEX instances_study ON instances (study_instance_uid)",
        """CREATE TABLE transfers (
             box_id text NOT NULL, transfer_id text NOT NULL, state text NOT NULL, reason integer NOT NULL DEFAULT 0,
             sha256 text NOT NULL DEFAULT '', sop_instance_uid text NOT NULL DEFAULT '',
             chunks integer NOT NULL DEFAULT 0, updated_at double precision NOT NULL,
             PRIMARY KEY (box_id, transfer_id))""",
        "CREATE INDEX transfers_state ON transfers (state, updated_at)",
        # Shared staging (gateway.cloud.ingest.staging.PostgresStaging): any worker may hold any chunk.
        """CREATE TABLE staged_chunks (
             box_id text NOT NULL, transfer_id text NOT NULL, seq integer NOT NULL, frame bytea NOT NULL,
             PRIMARY KEY (box_id, transfer_id, seq))""",
        """CREATE TABLE staged_transfers (
             box_id text NOT NULL, transfer_id text NOT NULL, touched_at double precision NOT NULL,
             PRIMARY KEY (box_id, transfer_id))""",
        "CREATE INDEX staged_transfers_touched ON staged_transfers (touched_at)",
    ),
    (  # v2: the durable PACS forward queue
        """CREATE TABLE forwards (
             sop_instance_uid text NOT NULL, sha256 text NOT NULL, destination text NOT NULL, state text NOT NULL,
             attempts integer NOT NULL DEFAULT 0, next_attempt_at double precision NOT NULL,
             lease_owner text NOT NULL DEFAULT '', lease_until double precision NOT NULL DEFAULT 0,
             last_error text NOT NULL DEFAULT '', updated_at double precision NOT NULL,
             PRIMARY KEY (sop_instance_uid, sha256, destination))""",
        "CREATE INDEX forwards_due ON forwards (destination, state, next_attempt_at)",
    ),
)

_UPSERT_TRANSFER = """
INSERT INTO transfers (box_id, transfer_id, state, reason, sha256, sop_instance_uid, chunks, updated_at)
VALUES (%(box_id)s, %(transfer_id)s, %(state)s, %(reason)s, %(sha256)s, %(sop_instance_uid)s, %(chunks)s,
        %(updated_at)s)
ON CONFLICT (box_id, transfer_id) DO UPDATE SET
  state = excluded.state, reason = excluded.reason, sha256 = excluded.sha256,
  sop_instance_uid = excluded.sop_instance_uid, chunks = GREATEST(transfers.chunks, excluded.chunks),
  updated_at = excluded.updated_at
WHERE transfers.state = 'STAGING'
"""

_CLAIM = """
UPDATE forwards SET state = 'SENDING', lease_owner = %(owner)s, lease_until = %(lease_until)s, updated_at = %(now)s
WHERE (sop_instance_uid, sha256, destination) IN (
  SELECT sop_instance_uid, sha256, destination FROM forwards
  WHERE destination = %(destination)s
    AND ((state = 'PENDING' AND next_attempt_at <= %(now)s) OR (state = 'SENDING' AND lease_until < %(now)s))
  ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING *
"""


def connect(dsn: str, what: str) -> psycopg.Connection[Any]:
    """An autocommit connection with dict rows; ``StorageError`` naming ``what`` if it fails."""
    try:
        return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
    except psycopg.Error as exc:
        raise StorageError(f"{what}: cannot connect to PostgreSQL: {exc}") from exc


def database_name(dsn: str) -> str:
    try:
        return "postgresql:" + str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "?")
    except psycopg.Error:
        return "postgresql:?"


class PostgresIndex:
    """The index on PostgreSQL. Usable from any thread, one call at a time."""

    def __init__(self, dsn: str) -> None:
        self.where = database_name(dsn)
        self._lock = threading.RLock()
        self._conn = connect(dsn, f"archive index {self.where}")
        self._migrate()

    @contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except psycopg.Error as exc:
                raise StorageError(f"archive index {self.where}: {what}: {exc}") from exc

    @contextmanager
    def transaction(self, lock_key: str = "") -> Iterator[None]:
        with self._guarded("transaction"), self._conn.transaction():
            if lock_key:
                self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [lock_key])
            yield

    def _migrate(self) -> None:
        with self.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
            self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            row = self._conn.execute("SELECT version FROM schema_version").fetchone()
            version = int(row["version"]) if row else 0
            if row is None:
                self._conn.execute("INSERT INTO schema_version VALUES (0)")
            if version > len(MIGRATIONS):
                raise StorageError(f"archive index {self.where} has schema {version}, newer than this software")
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    self._conn.execute(statement)
                self._conn.execute("UPDATE schema_version SET version = %s", [number])

    def schema_version(self) -> int:
        with self._guarded("schema version"):
            row = self._conn.execute("SELECT version FROM schema_version").fetchone()
            return int(row["version"]) if row else 0

    def get_transfer(self, box_id: str, transfer_hex: str) -> Row | None:
        with self._guarded("lookup transfer"):
            return self._conn.execute("SELECT * FROM transfers WHERE box_id = %s AND transfer_id = %s",
                                      [box_id, transfer_hex]).fetchone()

    def upsert_transfer(self, row: Row) -> None:
        with self._guarded("upsert transfer"):
            self._conn.execute(_UPSERT_TRANSFER, row)

    def delete_staging_transfer(self, box_id: str, transfer_hex: str) -> None:
        with self._guarded("forget staging"):
            self._conn.execute("DELETE FROM transfers WHERE box_id = %s AND transfer_id = %s AND state = 'STAGING'",
                               [box_id, transfer_hex])

    def get_instance(self, sop_instance_uid: str, sha256: str) -> Row | None:
        with self._guarded("lookup instance"):
            return self._conn.execute("SELECT * FROM instances WHERE sop_instance_uid = %s AND sha256 = %s",
                                      [sop_instance_uid, sha256]).fetchone()

    def path_taken(self, rel: str) -> bool:
        with self._guarded("path lookup"):
            return self._conn.execute("SELECT 1 FROM instances WHERE path = %s", [rel]).fetchone() is not None

    def insert_instance(self, row: Row) -> None:
        with self._guarded("insert instance"):
            self._conn.execute(
                "INSERT INTO instances (" + ", ".join(row) + ") VALUES ("  # noqa: S608 - fixed column names
                + ", ".join(f"%({k})s" for k in row) + ")", row)

    def move_instance(self, sop_instance_uid: str, sha256: str, rel: str) -> None:
        with self._guarded("move instance"):
            self._conn.execute("UPDATE instances SET path = %s WHERE sop_instance_uid = %s AND sha256 = %s",
                               [rel, sop_instance_uid, sha256])

    def list_instances(self) -> list[Row]:
        with self._guarded("list instances"):
            return self._conn.execute("SELECT * FROM instances ORDER BY stored_at, path").fetchall()

    def count_instances(self) -> int:
        with self._guarded("count instances"):
            row = self._conn.execute("SELECT COUNT(*) AS n FROM instances").fetchone()
            return int(row["n"]) if row else 0

    def enqueue_forwards(self, sop_instance_uid: str, sha256: str, destinations: tuple[str, ...],
                         now: float) -> None:
        with self._guarded("enqueue forwards"):
            for destination in destinations:
                self._conn.execute(
                    "INSERT INTO forwards (sop_instance_uid, sha256, destination, state, next_attempt_at, updated_at)"
                    " VALUES (%s, %s, %s, 'PENDING', %s, %s) ON CONFLICT DO NOTHING",
                    [sop_instance_uid, sha256, destination, now, now])

    def claim_forwards(self, destination: str, owner: str, now: float, lease_s: float,
                       limit: int) -> list[Row]:
        with self.transaction():
            return self._conn.execute(_CLAIM, {
                "owner": owner, "lease_until": now + lease_s, "now": now, "destination": destination,
                "limit": limit}).fetchall()

    def finish_forward(self, row: Row, state: str, attempts: int, next_attempt_at: float,
                       error: str, now: float) -> None:
        with self.transaction():
            self._conn.execute(
                "UPDATE forwards SET state = %s, attempts = %s, next_attempt_at = %s, last_error = %s,"
                " lease_owner = '', lease_until = 0, updated_at = %s"
                " WHERE sop_instance_uid = %s AND sha256 = %s AND destination = %s AND lease_owner = %s",
                [state, attempts, next_attempt_at, error[:500], now, row["sop_instance_uid"], row["sha256"],
                 row["destination"], row["lease_owner"]])

    def forward_counts(self) -> dict[str, int]:
        with self._guarded("count forwards"):
            return {f"{r['destination']}:{r['state']}": int(r["n"]) for r in self._conn.execute(
                "SELECT destination, state, COUNT(*) AS n FROM forwards GROUP BY destination, state").fetchall()}

    def close(self) -> None:
        with self._guarded("close"):
            self._conn.close()


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` added (libpq quoting); the result must not be logged."""
    return psycopg.conninfo.make_conninfo(dsn, password=password)
