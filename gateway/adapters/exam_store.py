"""The edge's exam and MPPS records: SQLite ``utilisation.db`` beside ``spool.db``.

A separate file so utilisation never contends for the spool's write lock on the C-STORE
path. WAL with ``synchronous=NORMAL``: a power cut may lose the last fraction of a second
of exam bookkeeping (derived data), never an image. The study UID is kept here, on the
box, to find a study's spool items and MPPS; only ``study_key`` (a keyed hash) leaves it.
Read-only queries on ``spool.db`` (turnaround, backlog) use their own read-only
``SqliteDatabase``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.sqlite_db import Connection, Row, SqliteDatabase
from gateway.core.exam import Exam, ExamStatus, TimeSource

UTILISATION_DB = "utilisation.db"  # its name in the state directory
MIGRATIONS: list[str] = [
    """
    CREATE TABLE exams (
        study_key TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        modality TEXT NOT NULL,
        start REAL NOT NULL,
        end REAL NOT NULL,
        images INTEGER NOT NULL,
        series INTEGER NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        first_received_at REAL NOT NULL,
        last_received_at REAL NOT NULL,
        cloud_stored_at REAL,
        closed INTEGER NOT NULL DEFAULT 0,
        revision INTEGER NOT NULL DEFAULT 1,
        sent_revision INTEGER NOT NULL DEFAULT 0,
        sent_at REAL NOT NULL DEFAULT 0,
        acked_revision INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX exams_open ON exams(closed, last_received_at);
    CREATE TABLE exam_series (study_key TEXT NOT NULL, series_key TEXT NOT NULL, PRIMARY KEY (study_key, series_key));
    CREATE TABLE mpps (
        sop_instance_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        study_key TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    """,
]

_EXAM_FIELDS = ("study_key", "modality", "start", "end", "images", "series", "source", "status",
                "first_received_at", "last_received_at", "cloud_stored_at")
_DONE_STATES = ("acknowledged", "purged")
_BACKLOG_STATES = ("received", "packed", "sending")


@dataclass(frozen=True)
class StoredExam:
    exam: Exam
    study_uid: str
    closed: bool
    revision: int
    sent_revision: int
    sent_at: float
    acked_revision: int


@dataclass(frozen=True)
class Backlog:
    items: int
    bytes: int
    oldest_received_at: float | None
    quarantined: int
    spool_items: int  # RECEIVED: not yet packed
    outbox_items: int  # PACKED or SENDING: sealed, waiting for the cloud


def last_studies_read_only(db_path: Path) -> dict[str, float]:
    """Per modality, when its newest study's last instance arrived, read by another process
    (`mgw status`) without writing: {} before the edge made the database."""
    if not db_path.exists():
        return {}
    database = SqliteDatabase(db_path, "utilisation database", read_only=True)
    try:
        rows = database.rows("SELECT modality, MAX(last_received_at) FROM exams GROUP BY modality ORDER BY modality")
    finally:
        database.close()
    return {str(r[0]): float(r[1]) for r in rows}


def _exam(row: Row) -> Exam:
    values = {k: row[k] for k in _EXAM_FIELDS}
    values["source"], values["status"] = TimeSource(values["source"]), ExamStatus(values["status"])
    return Exam(**values)


class ExamStore:
    """Thread-safe: one connection and one lock; each method is one transaction."""

    def __init__(self, db_path: Path, spool_db: Path) -> None:
        self._database = SqliteDatabase(db_path, "utilisation database", synchronous="NORMAL")
        self._lock = self._database.lock
        self._spool_db = spool_db
        self._spool: SqliteDatabase | None = None
        self._database.migrate(MIGRATIONS, newer_ok=True)  # additive: an A/B rollback's older slot opens it

    def _tx(self) -> AbstractContextManager[Connection]:
        return self._database.tx()

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        return self._database.rows(sql, params)

    # -- exams ----------------------------------------------------------------------------------
    def get(self, study_key: str) -> StoredExam | None:
        rows = self._rows("SELECT * FROM exams WHERE study_key = ?", (study_key,))
        return self._stored(rows[0]) if rows else None

    @staticmethod
    def _stored(row: Row) -> StoredExam:
        return StoredExam(_exam(row), row["study_uid"], bool(row["closed"]), row["revision"], row["sent_revision"],
                          row["sent_at"], row["acked_revision"])

    def add_series(self, study_key: str, series_key: str) -> bool:
        """Record the series; True if it is new for the study."""
        with self._tx() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO exam_series VALUES (?, ?)", (study_key, series_key))
            return cur.rowcount == 1

    def save(self, exam: Exam, study_uid: str, *, closed: bool) -> None:
        """Insert or update; any change makes a new revision to send."""
        values = {k: getattr(exam, k) for k in _EXAM_FIELDS}
        values["source"], values["status"] = exam.source.value, exam.status.value
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO exams ({', '.join(_EXAM_FIELDS)}, study_uid, closed) "  # noqa: S608 - constant names
                f"VALUES ({', '.join('?' * (len(_EXAM_FIELDS) + 2))}) "
                f"ON CONFLICT(study_key) DO UPDATE SET "
                + ", ".join(f"{k} = excluded.{k}" for k in (*_EXAM_FIELDS[1:], "closed"))
                + ", revision = revision + 1",
                (*values.values(), study_uid, int(closed)))

    def open_quiet(self, received_before: float) -> list[StoredExam]:
        rows = self._rows("SELECT * FROM exams WHERE closed = 0 AND last_received_at < ?", (received_before,))
        return [self._stored(r) for r in rows]

    def awaiting_cloud(self, limit: int = 200) -> list[StoredExam]:
        rows = self._rows("SELECT * FROM exams WHERE closed = 1 AND cloud_stored_at IS NULL AND images > 0 "
                          "ORDER BY last_received_at LIMIT ?", (limit,))
        return [self._stored(r) for r in rows]

    def due(self, sent_before: float, limit: int = 100) -> list[StoredExam]:
        """Closed exams whose latest revision the cloud has not acknowledged, not sent since ``sent_before``."""
        rows = self._rows("SELECT * FROM exams WHERE closed = 1 AND acked_revision < revision "
                          "AND (sent_revision < revision OR sent_at < ?) ORDER BY last_received_at LIMIT ?",
                          (sent_before, limit))
        return [self._stored(r) for r in rows]

    def mark_sent(self, study_key: str, revision: int, now: float) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE exams SET sent_revision = ?, sent_at = ? WHERE study_key = ?",
                         (revision, now, study_key))

    def mark_acked(self, study_key: str, revision: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE exams SET acked_revision = MAX(acked_revision, ?) WHERE study_key = ?",
                         (revision, study_key))

    def unacked(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM exams WHERE acked_revision < revision AND closed = 1")[0][0])

    def last_study_per_modality(self) -> dict[str, float]:
        rows = self._rows("SELECT modality, MAX(last_received_at) FROM exams GROUP BY modality")
        return {r[0]: float(r[1]) for r in rows}

    # -- MPPS -------------------------------------------------------------------------------------
    def mpps_get(self, sop_instance_uid: str) -> tuple[str, ExamStatus] | None:
        """``(study UID, status)`` of a procedure step, or None."""
        rows = self._rows("SELECT study_uid, status FROM mpps WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return (rows[0][0], ExamStatus(rows[0][1])) if rows else None

    def mpps_put(self, sop_instance_uid: str, study_uid: str, study_key: str, status: ExamStatus,
                 now: float) -> bool:
        """Create (True) or update (False)."""
        with self._tx() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO mpps VALUES (?, ?, ?, ?, ?, ?)",
                               (sop_instance_uid, study_uid, study_key, status.value, now, now))
            if cur.rowcount == 1:
                return True
            conn.execute("UPDATE mpps SET status = ?, updated_at = ? WHERE sop_instance_uid = ?",
                         (status.value, now, sop_instance_uid))
            return False

    # -- counters -----------------------------------------------------------------------------------
    def next_counter(self, name: str) -> int:
        with self._tx() as conn:
            conn.execute("INSERT INTO counters VALUES (?, 0) ON CONFLICT(name) DO UPDATE SET value = value + 1",
                         (name,))
            return int(conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    # -- the spool, read only -----------------------------------------------------------------------
    def _spool_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock:
            if self._spool is None:  # opened on first use: the spool may not exist before the first C-STORE
                self._spool = SqliteDatabase(self._spool_db, "spool database (read only)", read_only=True)
            return self._spool.rows(sql, params)

    def study_stored_at(self, study_uid: str) -> float | None:
        """When the cloud acknowledged the study's last instance, once all are acknowledged."""
        marks = ",".join("?" * len(_DONE_STATES))
        rows = self._spool_rows(
            f"SELECT COUNT(*), SUM(state IN ({marks})), MAX(acked_at) FROM items WHERE study_instance_uid = ? "  # noqa: S608
            "AND state != 'quarantined'", (*_DONE_STATES, study_uid))
        total, done, last = rows[0]
        return float(last) if total and total == done and last is not None else None

    def backlog(self) -> Backlog:
        rows = self._spool_rows("SELECT state, COUNT(*), COALESCE(SUM(size), 0), MIN(received_at) FROM items "
                                "WHERE state IN ('received', 'packed', 'sending', 'quarantined') GROUP BY state")
        by_state = {r[0]: r[1:] for r in rows}
        backlog = [by_state[s] for s in _BACKLOG_STATES if s in by_state]
        oldest = min((r[2] for r in backlog), default=None)
        return Backlog(items=sum(r[0] for r in backlog), bytes=sum(r[1] for r in backlog),
                       oldest_received_at=None if oldest is None else float(oldest),
                       quarantined=int(by_state.get("quarantined", (0,))[0]),
                       spool_items=int(by_state.get("received", (0,))[0]),
                       outbox_items=sum(int(by_state[s][0]) for s in ("packed", "sending") if s in by_state))

    def close(self) -> None:
        with self._lock:
            self._database.close()
            if self._spool is not None:
                self._spool.close()


def mpps_in_progress(db_path: Path, updated_after: float) -> int:
    """Procedure steps IN PROGRESS last created or set after ``updated_after`` (read only; 0 without
    the file): the update hooks wait for them (an exam under way)."""
    if not db_path.exists():
        return 0
    db = SqliteDatabase(db_path, "utilisation database (read only)", read_only=True)
    try:
        rows = db.rows("SELECT COUNT(*) FROM mpps WHERE status = ? AND updated_at > ?",
                       (ExamStatus.IN_PROGRESS.value, updated_after))
        return int(rows[0][0])
    finally:
        db.close()
