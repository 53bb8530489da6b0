"""The archive index: its contract, its schema and its queries, written once for both backends.

``Archive`` keeps files; an ``Index`` keeps the rows that say which files are durable and what
each transfer came to. ``SqlIndex`` implements it over a ``gateway.cloud.sql.Database``, whose
dialect supplies what differs between the two backends:

* ``SqliteIndex`` (``gateway.adapters.sqlite_index``, the default): one file, WAL,
  ``synchronous=FULL``; every write is a ``BEGIN IMMEDIATE`` transaction, so writers on one
  node are serialised.
* ``PostgresIndex`` (``gateway.adapters.postgres_index``): for workers on several machines; a
  transaction may name an object key, and writers of the same key are serialised with a
  transaction-scoped advisory lock; forward claims skip rows another worker holds.

Rows travel as plain dicts with the column names below. Both backends apply the same numbered
``MIGRATIONS`` (the PostgreSQL one adds the shared staging's tables to step 1, see
``gateway.adapters.postgres_staging``).

Tables (v1): ``instances`` (pk sop_instance_uid, sha256; unique path),
``transfers`` (pk box_id, transfer_id). v2: ``forwards``, the durable PACS
forward queue (pk sop_instance_uid, sha256, destination), filled in the same
transaction that files an instance. v3: ``instances.edge_item_id`` and ``superseded_at``,
the versions of an instance (``Archive.store``: which one is current). v4: ``instances.accession_hmac``,
the accession number as a keyed digest (``core.accession``), looked up by ``studies_by_accession``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from gateway.cloud.sql import Database

Row = dict[str, Any]

MIGRATIONS: tuple[str, ...] = (  # portable types: gateway.cloud.sql
    """
    CREATE TABLE instances (
        sop_instance_uid TEXT NOT NULL, sha256 TEXT NOT NULL, study_instance_uid TEXT NOT NULL,
        series_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, transfer_syntax TEXT NOT NULL,
        size {bigint} NOT NULL, path TEXT NOT NULL UNIQUE, box_id TEXT NOT NULL, transfer_id TEXT NOT NULL,
        stored_at {real} NOT NULL, PRIMARY KEY (sop_instance_uid, sha256)
    );
    CREATE INDEX instances_study ON instances (study_instance_uid);
    CREATE TABLE transfers (
        box_id TEXT NOT NULL, transfer_id TEXT NOT NULL, state TEXT NOT NULL, reason INTEGER NOT NULL DEFAULT 0,
        sha256 TEXT NOT NULL DEFAULT '', sop_instance_uid TEXT NOT NULL DEFAULT '',
        chunks INTEGER NOT NULL DEFAULT 0, updated_at {real} NOT NULL, PRIMARY KEY (box_id, transfer_id)
    );
    CREATE INDEX transfers_state ON transfers (state, updated_at)
    """,
    """
    CREATE TABLE forwards (
        sop_instance_uid TEXT NOT NULL, sha256 TEXT NOT NULL, destination TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at {real} NOT NULL,
        lease_owner TEXT NOT NULL DEFAULT '', lease_until {real} NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '', updated_at {real} NOT NULL,
        PRIMARY KEY (sop_instance_uid, sha256, destination)
    );
    CREATE INDEX forwards_due ON forwards (destination, state, next_attempt_at)
    """,
    # 3: versions of an instance (the same SOP Instance UID with other bytes): the edge's spool row
    # id orders a box's versions; superseded_at is set on every version but the current one
    """
    ALTER TABLE instances ADD COLUMN edge_item_id {bigint} NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN superseded_at {real}
    """,
    # 4: the instance's accession number as a keyed digest only (core.accession: HMAC of box id and
    # accession, never the value); '' for rows archived before it, and for objects without one
    """
    ALTER TABLE instances ADD COLUMN accession_hmac TEXT NOT NULL DEFAULT '';
    CREATE INDEX instances_accession ON instances (accession_hmac, box_id)
    """,
)
_TRANSFER_FIELDS = ("box_id", "transfer_id", "state", "reason", "sha256", "sop_instance_uid", "chunks", "updated_at")
_UPSERT_TRANSFER = (
    f"INSERT INTO transfers ({', '.join(_TRANSFER_FIELDS)}) VALUES ({', '.join('?' * len(_TRANSFER_FIELDS))}) "  # noqa: S608
    "ON CONFLICT (box_id, transfer_id) DO UPDATE SET "
    "state = excluded.state, reason = excluded.reason, sha256 = excluded.sha256, "
    "sop_instance_uid = excluded.sop_instance_uid, "
    "chunks = CASE WHEN excluded.chunks > transfers.chunks THEN excluded.chunks ELSE transfers.chunks END, "
    "updated_at = excluded.updated_at "
    "WHERE transfers.state = 'STAGING'")  # terminal states (STORED, REJECTED) are never left
_CLAIM = (
    "UPDATE forwards SET state = 'SENDING', lease_owner = ?, lease_until = ?, updated_at = ? "
    "WHERE (sop_instance_uid, sha256, destination) IN ("
    "SELECT sop_instance_uid, sha256, destination FROM forwards WHERE destination = ? "
    "AND ((state = 'PENDING' AND next_attempt_at <= ?) OR (state = 'SENDING' AND lease_until < ?)) "
    "ORDER BY next_attempt_at LIMIT ?{skip_locked}) RETURNING *")


class Index(Protocol):
    """What ``Archive`` and the forwarder need from an index backend."""

    where: str  # for error messages: a path or a database name, never a password

    def transaction(self, lock_key: str = "") -> AbstractContextManager[None]: ...
    def schema_version(self) -> int: ...
    def get_transfer(self, box_id: str, transfer_hex: str) -> Row | None: ...
    def upsert_transfer(self, row: Row) -> None: ...
    def delete_staging_transfer(self, box_id: str, transfer_hex: str) -> None: ...
    def get_instance(self, sop_instance_uid: str, sha256: str) -> Row | None: ...
    def path_taken(self, rel: str) -> bool: ...
    def versions(self, sop_instance_uid: str) -> list[Row]: ...
    def study_versions(self, study_instance_uid: str, limit: int) -> list[Row]: ...
    def supersede(self, sop_instance_uid: str, sha256s: list[str], at: float) -> None: ...
    def studies_by_accession(self, box_id: str, accession_hmac: str, limit: int) -> list[str]: ...
    def insert_instance(self, row: Row) -> None: ...
    def list_instances(self) -> list[Row]: ...
    def move_instance(self, sop_instance_uid: str, sha256: str, rel: str) -> None: ...
    def count_instances(self) -> int: ...
    def enqueue_forwards(self, sop_instance_uid: str, sha256: str, destinations: tuple[str, ...],
                         now: float) -> None: ...
    def claim_forwards(self, destination: str, owner: str, now: float, lease_s: float,
                       limit: int) -> list[Row]: ...
    def finish_forward(self, row: Row, state: str, attempts: int, next_attempt_at: float,
                       error: str, now: float) -> None: ...
    def forward_counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class SqlIndex:
    """``Index`` over a backend's ``Database``. Usable from any thread, one call at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.where = db.where
        db.migrate(self.migrations())
        self._claim = _CLAIM.format(skip_locked=db.skip_locked)

    def migrations(self) -> tuple[str, ...]:
        """The numbered scripts this backend applies (a backend may add its own tables to a step)."""
        return MIGRATIONS

    @contextmanager
    def transaction(self, lock_key: str = "") -> Iterator[None]:
        """One write transaction; with ``lock_key``, serialised against every writer of that key."""
        with self._db.transaction(lock_key):
            yield

    def schema_version(self) -> int:
        return self._db.schema_version()

    def _one(self, sql: str, params: tuple[Any, ...]) -> Row | None:
        rows = self._db.execute(sql, params)
        return rows[0] if rows else None

    def get_transfer(self, box_id: str, transfer_hex: str) -> Row | None:
        return self._one("SELECT * FROM transfers WHERE box_id = ? AND transfer_id = ?", (box_id, transfer_hex))

    def upsert_transfer(self, row: Row) -> None:
        self._db.execute(_UPSERT_TRANSFER, tuple(row[k] for k in _TRANSFER_FIELDS))

    def delete_staging_transfer(self, box_id: str, transfer_hex: str) -> None:
        self._db.execute("DELETE FROM transfers WHERE box_id = ? AND transfer_id = ? AND state = 'STAGING'",
                         (box_id, transfer_hex))

    def get_instance(self, sop_instance_uid: str, sha256: str) -> Row | None:
        return self._one("SELECT * FROM instances WHERE sop_instance_uid = ? AND sha256 = ?",
                         (sop_instance_uid, sha256))

    def versions(self, sop_instance_uid: str) -> list[Row]:
        """Every archived version of an instance, oldest stored first."""
        return self._db.execute("SELECT * FROM instances WHERE sop_instance_uid = ? ORDER BY stored_at, sha256",
                                (sop_instance_uid,))

    def study_versions(self, study_instance_uid: str, limit: int) -> list[Row]:
        """Every archived version of every instance of a study, by instance then oldest stored first."""
        return self._db.execute("SELECT * FROM instances WHERE study_instance_uid = ? "
                                "ORDER BY sop_instance_uid, stored_at, sha256 LIMIT ?", (study_instance_uid, limit))

    def studies_by_accession(self, box_id: str, accession_hmac: str, limit: int) -> list[str]:
        """The Study Instance UIDs archived from ``box_id`` whose accession digest is ``accession_hmac``."""
        if not accession_hmac:
            return []
        rows = self._db.execute("SELECT DISTINCT study_instance_uid FROM instances WHERE accession_hmac = ? "
                                "AND box_id = ? AND study_instance_uid <> '' ORDER BY study_instance_uid LIMIT ?",
                                (accession_hmac, box_id, limit))
        return [str(r["study_instance_uid"]) for r in rows]

    def supersede(self, sop_instance_uid: str, sha256s: list[str], at: float) -> None:
        self._db.executemany("UPDATE instances SET superseded_at = ? WHERE sop_instance_uid = ? AND sha256 = ? "
                             "AND superseded_at IS NULL", [(at, sop_instance_uid, sha) for sha in sha256s])

    def path_taken(self, rel: str) -> bool:
        return self._one("SELECT 1 AS taken FROM instances WHERE path = ?", (rel,)) is not None

    def insert_instance(self, row: Row) -> None:
        self._db.execute(f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608 - column names are Archive's
                         tuple(row.values()))

    def move_instance(self, sop_instance_uid: str, sha256: str, rel: str) -> None:
        self._db.execute("UPDATE instances SET path = ? WHERE sop_instance_uid = ? AND sha256 = ?",
                         (rel, sop_instance_uid, sha256))

    def list_instances(self) -> list[Row]:
        return self._db.execute("SELECT * FROM instances ORDER BY stored_at, path")

    def count_instances(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) AS n FROM instances")[0]["n"])

    def enqueue_forwards(self, sop_instance_uid: str, sha256: str, destinations: tuple[str, ...],
                         now: float) -> None:
        if destinations:
            self._db.executemany(
                "INSERT INTO forwards (sop_instance_uid, sha256, destination, state, next_attempt_at, updated_at)"
                " VALUES (?, ?, ?, 'PENDING', ?, ?) ON CONFLICT DO NOTHING",
                [(sop_instance_uid, sha256, destination, now, now) for destination in destinations])

    def claim_forwards(self, destination: str, owner: str, now: float, lease_s: float,
                       limit: int) -> list[Row]:
        with self._db.transaction() as tx:
            return tx.execute(self._claim, (owner, now + lease_s, now, destination, now, now, limit))

    def finish_forward(self, row: Row, state: str, attempts: int, next_attempt_at: float,
                       error: str, now: float) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE forwards SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
                " lease_owner = '', lease_until = 0, updated_at = ?"
                " WHERE sop_instance_uid = ? AND sha256 = ? AND destination = ? AND lease_owner = ?",
                (state, attempts, next_attempt_at, error[:500], now, row["sop_instance_uid"], row["sha256"],
                 row["destination"], row["lease_owner"]))

    def forward_counts(self) -> dict[str, int]:
        return {f"{r['destination']}:{r['state']}": int(r["n"]) for r in self._db.execute(
            "SELECT destination, state, COUNT(*) AS n FROM forwards GROUP BY destination, state")}

    def close(self) -> None:
        self._db.close()
