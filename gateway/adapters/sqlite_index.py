"""The archive index on SQLite (sqlite-utils): the default, embedded backend of ``Index``.

One file, WAL, ``synchronous=FULL``; every write is a ``BEGIN IMMEDIATE`` transaction, so
writers on one node are serialised. The contract, tables and row shapes are in
``gateway.cloud.archive.index``; ``sqlite3.Error`` becomes ``StorageError`` here.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from gateway.cloud.archive.index import Row
from gateway.core.errors import StorageError

BUSY_TIMEOUT_S = 30.0


def _v1_initial(db: Database) -> None:
    db.table("instances").create(
        {"sop_instance_uid": str, "sha256": str, "study_instance_uid": str,
         "series_instance_uid": str, "sop_class_uid": str, "transfer_syntax": str,
         "size": int, "path": str, "box_id": str, "transfer_id": str, "stored_at": float},
        pk=("sop_instance_uid", "sha256"),
        not_null={"sop_instance_uid", "sha256", "study_instance_uid", "series_instance_uid",
                  "sop_class_uid", "transfer_syntax", "size", "path", "box_id", "transfer_id",
                  "stored_at"},
    )
    db.table("instances").create_index(["path"], unique=True)
    db.table("instances").create_index(["study_instance_uid"])
    db.table("transfers").create(
        {"box_id": str, "transfer_id": str, "state": str, "reason": int, "sha256": str,
         "sop_instance_uid": str, "chunks": int, "updated_at": float},
        pk=("box_id", "transfer_id"),
        not_null={"box_id", "transfer_id", "state", "reason", "sha256", "sop_instance_uid",
                  "chunks", "updated_at"},
        defaults={"reason": 0, "sha256": "", "sop_instance_uid": "", "chunks": 0},
    )
    db.table("transfers").create_index(["state", "updated_at"])


def _v2_forwards(db: Database) -> None:
    db.table("forwards").create(
        {"sop_instance_uid": str, "sha256": str, "destination": str, "state": str, "attempts": int,
         "next_attempt_at": float, "lease_owner": str, "lease_until": float, "last_error": str,
         "updated_at": float},
        pk=("sop_instance_uid", "sha256", "destination"),
        not_null={"sop_instance_uid", "sha256", "destination", "state", "attempts", "next_attempt_at",
                  "lease_owner", "lease_until", "last_error", "updated_at"},
        defaults={"attempts": 0, "lease_owner": "", "lease_until": 0.0, "last_error": ""},
    )
    db.table("forwards").create_index(["destination", "state", "next_attempt_at"])


MIGRATIONS: tuple[Callable[[Database], None], ...] = (_v1_initial, _v2_forwards)

_UPSERT_TRANSFER = """
INSERT INTO transfers (box_id, transfer_id, state, reason, sha256, sop_instance_uid, chunks, updated_at)
VALUES (:box_id, :transfer_id, :state, :reason, :sha256, :sop_instance_uid, :chunks, :updated_at)
ON CONFLICT (box_id, transfer_id) DO UPDATE SET
  state = excluded.state, reason = excluded.reason, sha256 = excluded.sha256,
  sop_instance_uid = excluded.sop_instance_uid, chunks = max(chunks, excluded.chunks),
  updated_at = excluded.updated_at
WHERE transfers.state = 'STAGING'
"""  # terminal states (STORED, REJECTED) are never left

_CLAIM_SQLITE = """
UPDATE forwards SET state = 'SENDING', lease_owner = :owner, lease_until = :lease_until, updated_at = :now
WHERE rowid IN (
  SELECT rowid FROM forwards
  WHERE destination = :destination
    AND ((state = 'PENDING' AND next_attempt_at <= :now) OR (state = 'SENDING' AND lease_until < :now))
  ORDER BY next_attempt_at LIMIT :limit)
RETURNING *
"""


class SqliteIndex:
    """The embedded index. Usable from any thread, one call at a time."""

    def __init__(self, db_path: Path) -> None:
        self.where = str(db_path)
        self._lock = threading.RLock()
        with self._guarded("open"):
            db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            self._db = Database(conn, execute_plugins=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.enable_wal()
            self._db.execute("PRAGMA synchronous = FULL")
            self._migrate()

    @contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StorageError(f"archive index {self.where}: {what}: {exc}") from exc
            except OSError as exc:
                raise StorageError(f"archive index {self.where}: {what}: {exc.strerror or exc}") from exc

    @contextmanager
    def transaction(self, lock_key: str = "") -> Iterator[None]:
        """One write transaction that takes the write lock up front (no upgrade deadlock)."""
        with self._guarded("transaction"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.rollback()
                raise

    def _migrate(self) -> None:
        with self.transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StorageError(f"archive index {self.where} has schema {version}, newer than this software")
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                step(self._db)
                self._db.execute(f"PRAGMA user_version = {number}")

    def schema_version(self) -> int:
        with self._guarded("schema version"):
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def get_transfer(self, box_id: str, transfer_hex: str) -> Row | None:
        with self._guarded("lookup transfer"):
            return next(self._db.table("transfers").rows_where(
                "box_id = ? AND transfer_id = ?", [box_id, transfer_hex]), None)

    def upsert_transfer(self, row: Row) -> None:
        with self._guarded("upsert transfer"):
            self._db.execute(_UPSERT_TRANSFER, row)

    def delete_staging_transfer(self, box_id: str, transfer_hex: str) -> None:
        with self._guarded("forget staging"):
            self._db.execute("DELETE FROM transfers WHERE box_id = ? AND transfer_id = ? AND state = 'STAGING'",
                             [box_id, transfer_hex])

    def get_instance(self, sop_instance_uid: str, sha256: str) -> Row | None:
        with self._guarded("lookup instance"):
            return next(self._db.table("instances").rows_where(
                "sop_instance_uid = ? AND sha256 = ?", [sop_instance_uid, sha256]), None)

    def path_taken(self, rel: str) -> bool:
        with self._guarded("path lookup"):
            return bool(self._db.table("instances").count_where("path = ?", [rel]))

    def insert_instance(self, row: Row) -> None:
        with self._guarded("insert instance"):
            self._db.table("instances").insert(row)

    def move_instance(self, sop_instance_uid: str, sha256: str, rel: str) -> None:
        with self._guarded("move instance"):
            self._db.execute("UPDATE instances SET path = ? WHERE sop_instance_uid = ? AND sha256 = ?",
                             [rel, sop_instance_uid, sha256])

    def list_instances(self) -> list[Row]:
        with self._guarded("list instances"):
            return list(self._db.table("instances").rows_where(order_by="stored_at, path"))

    def count_instances(self) -> int:
        with self._guarded("count instances"):
            return self._db.table("instances").count

    def enqueue_forwards(self, sop_instance_uid: str, sha256: str, destinations: tuple[str, ...],
                         now: float) -> None:
        with self._guarded("enqueue forwards"):
            for destination in destinations:
                self._db.execute(
                    "INSERT INTO forwards (sop_instance_uid, sha256, destination, state, next_attempt_at, updated_at)"
                    " VALUES (?, ?, ?, 'PENDING', ?, ?) ON CONFLICT DO NOTHING",
                    [sop_instance_uid, sha256, destination, now, now])

    def claim_forwards(self, destination: str, owner: str, now: float, lease_s: float,
                       limit: int) -> list[Row]:
        with self.transaction():
            cursor = self._db.execute(_CLAIM_SQLITE, {
                "owner": owner, "lease_until": now + lease_s, "now": now, "destination": destination,
                "limit": limit})
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def finish_forward(self, row: Row, state: str, attempts: int, next_attempt_at: float,
                       error: str, now: float) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE forwards SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
                " lease_owner = '', lease_until = 0, updated_at = ?"
                " WHERE sop_instance_uid = ? AND sha256 = ? AND destination = ? AND lease_owner = ?",
                [state, attempts, next_attempt_at, error[:500], now, row["sop_instance_uid"], row["sha256"],
                 row["destination"], row["lease_owner"]])

    def forward_counts(self) -> dict[str, int]:
        with self._guarded("count forwards"):
            return {f"{d}:{s}": int(n) for d, s, n in self._db.execute(
                "SELECT destination, state, COUNT(*) FROM forwards GROUP BY destination, state").fetchall()}

    def close(self) -> None:
        with self._guarded("close"):
            self._db.close()
