"""The edge spool index: ``spool.db``, opened by ``SqliteDatabase`` (WAL, synchronous=FULL).

Every state change goes through ``core.spool.step`` inside one transaction, so the database
never holds a state the table does not allow, and a restart resumes from exactly what is
committed. ``MIGRATIONS`` is the whole file's schema, the Storage Commitment table
(``commitment_store.py``) included: whichever of the two opens the file first migrates it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

from gateway.adapters.sqlite_db import Connection, SqliteDatabase
from gateway.core import spool
from gateway.core.errors import StorageError
from gateway.core.instance import InstanceIdentity
from gateway.core.spool import Effect, ItemState
from gateway.logs import MSG

log = logging.getLogger(__name__)
BACKUP_DIR = "update"  # beside spool.db: copies taken before a migration, spool-schema<N>.db

MIGRATIONS: list[str] = [
    """
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        series_instance_uid TEXT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        blob_name TEXT NOT NULL,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        transfer_id TEXT UNIQUE,
        final_seq INTEGER,
        frame0_bytes INTEGER,
        frame_bytes INTEGER,
        packed_bytes INTEGER,
        ack_key BLOB,
        acked_ranges TEXT NOT NULL DEFAULT '[]',
        pack_attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        acked_at REAL
    );
    CREATE INDEX items_queue ON items(state, priority DESC, id);
    """,
    # issue 5: utilisation finds a study's items (turnaround: all acknowledged?) without a scan
    """
    CREATE INDEX items_study ON items(study_instance_uid);
    """,
    # 3: Storage Commitment requests awaiting their N-EVENT-REPORT (gateway/adapters/commitment_store.py)
    """
    CREATE TABLE commitments (
        id INTEGER PRIMARY KEY,
        transaction_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        peer_address TEXT NOT NULL,
        refs TEXT NOT NULL,
        requested_at REAL NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        reported_at REAL,
        committed_count INTEGER,
        failed_count INTEGER,
        last_error TEXT
    );
    CREATE INDEX commitments_due ON commitments(state, next_attempt_at);
    CREATE INDEX items_sop_instance ON items(sop_instance_uid);
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        study_instance_uid TEXT NOT NULL UNIQUE,
        calling_ae TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        instances INTEGER NOT NULL DEFAULT 0,
        first_received_at REAL NOT NULL,
        last_received_at REAL NOT NULL,
        completed_at REAL
    );
    CREATE INDEX studies_open ON studies(completed_at, last_received_at);
    """,
]


_ITEM_COLUMNS = ("sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
                 "transfer_syntax_uid", "size", "sha256", "calling_ae", "blob_name", "received_at", "updated_at",
                 "priority", "state")
_INSERT_ITEM = (f"INSERT INTO items ({', '.join(_ITEM_COLUMNS)})"  # noqa: S608 - column names are ours
                f" VALUES ({', '.join(':' + c for c in _ITEM_COLUMNS)})")
_NOTE_STUDY = (
    "INSERT INTO studies (study_instance_uid, calling_ae, priority, instances, first_received_at,"
    " last_received_at) VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(study_instance_uid) DO UPDATE SET"
    " instances = instances + 1, last_received_at = excluded.last_received_at, completed_at = NULL,"
    " priority = MAX(priority, excluded.priority)")


@dataclass(frozen=True)
class SpoolItem:
    id: int
    state: ItemState
    priority: int
    identity: InstanceIdentity  # columns of the same names
    calling_ae: str
    blob_name: str
    received_at: float
    updated_at: float
    transfer_id: str | None
    final_seq: int | None
    frame0_bytes: int | None
    frame_bytes: int | None
    packed_bytes: int | None
    ack_key: bytes | None
    acked_ranges: tuple[tuple[int, int], ...]
    pack_attempts: int
    reason: str | None
    acked_at: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SpoolItem:
        row = dict(row)
        row["state"] = ItemState(row["state"])
        row["acked_ranges"] = tuple(tuple(r) for r in json.loads(row["acked_ranges"]))
        row["identity"] = InstanceIdentity(**{f.name: row[f.name] for f in fields(InstanceIdentity)})
        return cls(**{f.name: row[f.name] for f in fields(cls)})


class SpoolStore:
    """Thread-safe: one connection, one lock; each method is one transaction."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        self.db = SqliteDatabase(db_path, "spool database", synchronous="FULL")
        migrate_spool(self.db)
        self._group = GroupCommit(self._commit_received)

    @property
    def schema_version(self) -> int:
        return self.db.schema_version()

    def _tx(self) -> AbstractContextManager[Connection]:
        return self.db.tx()

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[SpoolItem]:
        return [SpoolItem.from_row(dict(r)) for r in self.db.rows(sql, params)]

    def add_received(self, identity: InstanceIdentity, calling_ae: str, blob_name: str, now: float,
                     priority: int = 0) -> int:
        """Commit a received instance (its blob is already durable)."""
        row = dict(asdict(identity), calling_ae=calling_ae, blob_name=blob_name, received_at=now, updated_at=now,
                   priority=priority, state=ItemState.RECEIVED.value)
        with self._tx():
            return self.db.insert("items", row)

    def add_received_in_study(self, identity: InstanceIdentity, calling_ae: str, blob_name: str, now: float,
                              priority: int = 0) -> int:
        """``add_received`` and ``note_study`` in one transaction; durable when it returns.

        Group commit: rows that threads add while another thread's commit is under way wait and
        are then committed together, in one transaction (one WAL fsync for all of them), by the
        first of them to get the commit lock; each caller returns once its own row is durable
        (or raises that commit's error). One caller alone commits at once. Study bookkeeping
        never fails an instance: its statement runs in a savepoint, rolled back alone (and
        logged) if it fails."""
        row = dict(asdict(identity), calling_ae=calling_ae, blob_name=blob_name, received_at=now, updated_at=now,
                   priority=priority, state=ItemState.RECEIVED.value)
        return self._group.commit(row)

    def _commit_received(self, rows: list[dict[str, Any]]) -> list[int]:
        with self._tx() as conn:
            ids = [int(conn.execute(_INSERT_ITEM, row).lastrowid or 0) for row in rows]
            for row in rows:
                if row["study_instance_uid"]:
                    _note_study_in(conn, row)
        return ids

    def note_study(self, study_instance_uid: str, calling_ae: str, priority: int, now: float) -> None:
        """Count one more instance of a study; a new instance reopens a completed study."""
        with self._tx() as conn:
            conn.execute(_NOTE_STUDY, (study_instance_uid, calling_ae, priority, now, now))

    def complete_stable_studies(self, cutoff: float, now: float) -> list[tuple[int, str, int, int, float]]:
        """Mark complete every open study with no instance since ``cutoff``; return
        ``(study row id, calling AE, instances, priority, first_received_at)`` of each."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id, calling_ae, instances, priority, first_received_at FROM studies"
                " WHERE completed_at IS NULL AND last_received_at <= ?", (cutoff,)).fetchall()
            conn.executemany("UPDATE studies SET completed_at = ? WHERE id = ?", [(now, r[0]) for r in rows])
        return [(int(r[0]), str(r[1]), int(r[2]), int(r[3]), float(r[4])) for r in rows]

    def get(self, item_id: int) -> SpoolItem | None:
        items = self._query("SELECT * FROM items WHERE id = ?", (item_id,))
        return items[0] if items else None

    def by_transfer(self, transfer_hex: str) -> SpoolItem | None:
        items = self._query("SELECT * FROM items WHERE transfer_id = ?", (transfer_hex,))
        return items[0] if items else None

    def in_study(self, study_instance_uid: str) -> list[SpoolItem]:
        """Every item of a study, whatever its state (the ``resend`` remote command)."""
        return self._query("SELECT * FROM items WHERE study_instance_uid = ? ORDER BY id", (study_instance_uid,))

    def in_state(self, *states: ItemState, limit: int = 1000) -> list[SpoolItem]:
        marks = ", ".join("?" for _ in states)
        return self._query(
            f"SELECT * FROM items WHERE state IN ({marks}) ORDER BY priority DESC, id LIMIT ?",  # noqa: S608 - column names are ours, values bound
            (*(s.value for s in states), limit),
        )

    def unacknowledged_packed_bytes(self) -> int:
        """Sealed bytes packed and not yet acknowledged (PACKED and SENDING items): the uplink's queue."""
        rows = self.db.rows("SELECT coalesce(sum(packed_bytes), 0) FROM items WHERE state IN (?, ?)",
                            (ItemState.PACKED.value, ItemState.SENDING.value))
        return int(rows[0][0])

    def acked_before(self, cutoff: float, limit: int = 100) -> list[SpoolItem]:
        return self._query(
            "SELECT * FROM items WHERE state = ? AND acked_at <= ? ORDER BY acked_at LIMIT ?",
            (ItemState.ACKNOWLEDGED.value, cutoff, limit),
        )

    def transition(
        self, item_id: int, event: spool.Event, now: float, **columns: object
    ) -> tuple[SpoolItem, tuple[Effect, ...]]:
        """Apply ``event`` in one transaction; extra ``columns`` are written with it."""
        with self._tx() as conn:
            row = conn.execute("SELECT state FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise StorageError(f"spool item {item_id} does not exist")
            result = spool.step(ItemState(row[0]), event)
            updates = dict(columns, state=result.state.value, updated_at=now)
            if Effect.RECORD_ACK_TIME in result.effects:
                updates["acked_at"] = now
            if Effect.RECORD_REASON in result.effects:
                updates["reason"] = getattr(event, "reason", None)
            sets = ", ".join(f"{k} = ?" for k in updates)
            conn.execute(f"UPDATE items SET {sets} WHERE id = ?", (*updates.values(), item_id))  # noqa: S608 - column names are ours, values bound
        item = self.get(item_id)
        assert item is not None
        return item, result.effects

    def record_progress(self, item_id: int, ranges: tuple[tuple[int, int], ...], now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE items SET acked_ranges = ?, updated_at = ? WHERE id = ?",
                (json.dumps([list(r) for r in ranges]), now, item_id),
            )

    def note_pack_failure(self, item_id: int, now: float) -> int:
        with self._tx() as conn:
            conn.execute(
                "UPDATE items SET pack_attempts = pack_attempts + 1, updated_at = ? WHERE id = ?",
                (now, item_id),
            )
            return int(conn.execute("SELECT pack_attempts FROM items WHERE id = ?", (item_id,)).fetchone()[0])

    def counts(self) -> dict[str, dict[str, float]]:
        return _counts(self.db)

    def blob_names(self, predicate: Callable[[ItemState], bool]) -> set[str]:
        rows = self.db.rows("SELECT state, blob_name FROM items")
        return {name for state, name in rows if predicate(ItemState(state))}

    def rename_blob(self, old_name: str, new_name: str) -> None:
        """Point the row of blob ``old_name`` at ``new_name`` (its plaintext was sealed)."""
        with self._tx() as conn:
            conn.execute("UPDATE items SET blob_name = ? WHERE blob_name = ?", (new_name, old_name))

    def by_sop_instance(self, sop_instance_uid: str) -> list[SpoolItem]:
        return self._query("SELECT * FROM items WHERE sop_instance_uid = ? ORDER BY id", (sop_instance_uid,))

    def last_received_at(self) -> float:
        """When the newest instance arrived (0.0 for an empty spool)."""
        return float(self.db.rows("SELECT COALESCE(MAX(received_at), 0) FROM items")[0][0])

    def integrity_ok(self) -> bool:
        return bool(self.db.rows("PRAGMA integrity_check")[0][0] == "ok")

    def close(self) -> None:
        self.db.close()


def _note_study_in(conn: Connection, row: dict[str, Any]) -> None:
    """Count the row's instance in its study, inside the caller's transaction, in a savepoint."""
    conn.execute("SAVEPOINT study")
    try:
        conn.execute(_NOTE_STUDY, (row["study_instance_uid"], row["calling_ae"], row["priority"], row["received_at"],
                                   row["received_at"]))
    except Exception:
        conn.execute("ROLLBACK TO study")
        log.exception("study bookkeeping failed (the instance itself is stored)")
    conn.execute("RELEASE study")


class _Entry:
    __slots__ = ("row", "done", "item_id", "error")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row, self.done, self.item_id, self.error = row, False, 0, cast(BaseException | None, None)


class GroupCommit:
    """Leader and followers over one commit function: ``commit(row)`` queues the row, then takes
    the commit lock; whoever holds it commits every row queued so far in one call, so rows that
    arrived during a commit share the next one. Returns once the caller's own row is committed."""

    def __init__(self, commit_rows: Callable[[list[dict[str, Any]]], list[int]]) -> None:
        self._commit_rows = commit_rows
        self._queue: list[_Entry] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self.commits = 0  # transactions committed (for tests and metrics)

    def commit(self, row: dict[str, Any]) -> int:
        entry = _Entry(row)
        with self._queue_lock:
            self._queue.append(entry)
        with self._commit_lock:
            if not entry.done:  # nobody took it while we waited: lead a commit of all queued rows
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if entry.error is not None:
            raise entry.error
        return entry.item_id

    def _commit(self, batch: list[_Entry]) -> None:
        try:
            ids = self._commit_rows([e.row for e in batch])
        except BaseException as exc:  # the whole transaction rolled back: every row in it failed
            for e in batch:
                e.error, e.done = exc, True
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        for e, item_id in zip(batch, ids, strict=True):
            e.item_id, e.done = item_id, True


def backup_path(db_path: Path, version: int) -> Path:
    """Where the spool database is copied before a migration from ``version``."""
    return db_path.parent / BACKUP_DIR / f"spool-schema{version}.db"


def migrate_spool(db: SqliteDatabase) -> None:
    """The one migration of the spool database, whoever opens it first (``SpoolStore``,
    ``CommitmentStore``, the edge service on the first boot of a new slot): a copy of the file at
    its older schema first (``backup_path``), then the steps, all under the write lock. Additive
    (``newer_ok``): an A/B rollback's older slot opens a file the newer one migrated."""
    applied = db.apply_migrations(MIGRATIONS, newer_ok=True, backup_to=lambda version: backup_path(db.path, version))
    if applied is not None and applied[0] > 0:
        log.info("spool database backed up and migrated", extra={
            "MESSAGE_ID": MSG.UPDATE_MIGRATED.value, "SCHEMA_FROM": applied[0], "SCHEMA_TO": applied[1],
            "BACKUP": str(backup_path(db.path, applied[0]))})


def integrity_ok_of(db_path: Path) -> bool:
    """``PRAGMA integrity_check`` of a spool database, read only (no migration)."""
    db = SqliteDatabase(db_path, "spool database", read_only=True)
    try:
        return bool(db.rows("PRAGMA integrity_check")[0][0] == "ok")
    finally:
        db.close()


def schema_version_of(db_path: Path) -> int:
    """``user_version`` of a spool database, read only (no migration)."""
    db = SqliteDatabase(db_path, "spool database", read_only=True)
    try:
        return db.schema_version()
    finally:
        db.close()


_COUNTS_SQL = "SELECT state, COUNT(*), COALESCE(SUM(size), 0), MIN(received_at) FROM items GROUP BY state"


def _counts(db: SqliteDatabase) -> dict[str, dict[str, float]]:
    return {state: {"items": n, "bytes": b, "oldest_received_at": oldest or 0.0}
            for state, n, b, oldest in db.rows(_COUNTS_SQL)}


def counts_read_only(db_path: Path) -> dict[str, dict[str, float]]:
    """``SpoolStore.counts`` read by another process (`mgw status`) without writing or migrating:
    a newer program must not migrate the spool before the update hook's backup does."""
    db = SqliteDatabase(db_path, "spool database", read_only=True)
    try:
        return _counts(db)
    finally:
        db.close()
