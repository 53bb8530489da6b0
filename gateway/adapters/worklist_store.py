"""The edge's Modality Worklist cache: SQLite ``worklist.db``, every patient attribute sealed.

The modality's worklist must keep working for days with the uplink down, so the box keeps the
scheduled procedure steps it was sent (``core.schema.WorklistUpdate``, today from ``mgw edge
worklist import``, later from the cloud over MQTT). PHI never sits in plaintext on disk: each
item's whole attribute document is sealed with the box's cache key (``core.atrest``: AES-256-GCM,
a fresh file id per row, so a key of its own per row; erasing the cache key makes the cache
unreadable). The row is bound to its document: the sealed plaintext starts with the row's key, so
a document moved to another row fails to open.

Only what is needed to narrow a query and to expire items is plain: modality, Scheduled Station
AE Title, the scheduled start (date and time as the RIS wrote them, no patient), the step status
and whether it is done. The row's key is an HMAC of (Scheduled Procedure Step ID, Accession Number)
under a key derived from the cache key, so neither is readable either. Patient name and ID are
matched after the candidate rows (narrowed by the plain columns) are opened in memory.

Updates apply in order: each carries a sequence number, and one at or below the last applied is
ignored whole (a replay, or an older update delivered late). ``synchronous=NORMAL``: the cache is
refilled by the feed, a power cut may lose its last second.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters.sqlite_db import Connection, SqliteDatabase
from gateway.core import atrest, worklist
from gateway.core.errors import FrameError, IntegrityError, StorageError
from gateway.core.schema import WorklistCancel, WorklistUpdate, WorklistUpsert
from gateway.core.worklist import WorklistItem

MIGRATIONS: list[str] = [
    """
    CREATE TABLE worklist (
        step_key TEXT PRIMARY KEY,
        modality TEXT NOT NULL,
        station_ae_title TEXT NOT NULL,
        scheduled_at TEXT NOT NULL,
        scheduled_epoch REAL,
        status TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        applied_at REAL NOT NULL,
        applied_seq INTEGER NOT NULL,
        sealed BLOB NOT NULL
    );
    CREATE INDEX worklist_station ON worklist(done, station_ae_title);
    CREATE TABLE feed (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)
    """,
]
_FEED = "worklist"
_DONE = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")


@dataclass(frozen=True)
class Applied:
    """What one update did: ``applied`` False when its sequence number was not above the last."""

    applied: bool
    upserted: int = 0
    cancelled: int = 0
    last_seq: int = 0


class WorklistStore:
    """Thread-safe: one connection and one lock; each method is one transaction."""

    def __init__(self, db_path: Path, cache_key: bytes) -> None:
        if len(cache_key) != 32:
            raise ValueError("the cache key is 32 bytes")
        self._key = cache_key
        self._row_key = hmac.new(cache_key, b"mgw worklist step key v1", hashlib.sha256).digest()
        self._database = SqliteDatabase(db_path, "worklist database", synchronous="NORMAL")
        self._database.migrate(MIGRATIONS, newer_ok=True)  # additive: an A/B rollback's older slot opens it
        try:
            os.chmod(db_path, 0o600)
        except OSError as exc:
            raise StorageError(f"worklist database {db_path}: {exc.strerror or exc}") from exc

    @property
    def path(self) -> Path:
        return self._database.path

    def step_key(self, step_id: str, accession_number: str) -> str:
        """The row's key: no step id or accession number readable in the file."""
        message = f"{step_id.strip()}\x00{accession_number.strip()}".encode()
        return hmac.new(self._row_key, message, hashlib.sha256).hexdigest()

    # -- writes --------------------------------------------------------------------------------------------
    def apply(self, update: WorklistUpdate, now: float) -> Applied:
        """Apply ``update``'s operations in order, in one transaction, if its ``seq`` is new."""
        with self._database.tx() as conn:
            last = _last_seq(conn)
            if update.seq <= last:
                return Applied(False, last_seq=last)
            upserted = cancelled = 0
            for op in update.ops:
                if isinstance(op, WorklistUpsert):
                    self._upsert(conn, worklist.item_of(op.entry), update.seq, now)
                    upserted += 1
                elif isinstance(op, WorklistCancel):
                    cur = conn.execute("DELETE FROM worklist WHERE step_key = ?",
                                       (self.step_key(op.step_id, op.accession_number),))
                    cancelled += cur.rowcount
            conn.execute("INSERT INTO feed (name, seq) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET seq = "
                         "excluded.seq", (_FEED, update.seq))
            return Applied(True, upserted, cancelled, update.seq)

    def _upsert(self, conn: Connection, item: WorklistItem, seq: int, now: float) -> None:
        key = self.step_key(*item.key)
        step = item.step
        sealed = b"".join(atrest.seal_pieces(self._key, os.urandom(atrest.FILE_ID_BYTES),
                                             [key.encode() + b"\n" + worklist.document(item)]))
        conn.execute(
            "INSERT INTO worklist (step_key, modality, station_ae_title, scheduled_at, scheduled_epoch, status, "
            "done, applied_at, applied_seq, sealed) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?) "
            "ON CONFLICT (step_key) DO UPDATE SET modality = excluded.modality, "
            "station_ae_title = excluded.station_ae_title, scheduled_at = excluded.scheduled_at, "
            "scheduled_epoch = excluded.scheduled_epoch, status = excluded.status, done = 0, "
            "applied_at = excluded.applied_at, applied_seq = excluded.applied_seq, sealed = excluded.sealed",
            (key, step.modality.strip(), step.station_ae_title.strip(), _scheduled_at(step), _epoch(step),
             step.status.strip(), now, seq, sealed))

    def mark_done(self, step_id: str, accession_number: str, status: str) -> bool:
        """MPPS reported the step IN PROGRESS, COMPLETED or DISCONTINUED: it leaves the worklist.
        False when the cache holds no such step."""
        if status not in _DONE:
            raise ValueError(f"not a performed procedure step status: {status}")
        with self._database.tx() as conn:
            cur = conn.execute("UPDATE worklist SET done = 1, status = ? WHERE step_key = ?",
                               (status, self.step_key(step_id, accession_number)))
            return cur.rowcount == 1

    def expire(self, now: float, keep_s: float) -> int:
        """Remove items scheduled more than ``keep_s`` ago (those without a start: applied that long
        ago). The scheduled time is the site's local time read as UTC: ``keep_s`` is a day or more,
        so the zone's hours do not matter."""
        with self._database.tx() as conn:
            cur = conn.execute("DELETE FROM worklist WHERE coalesce(scheduled_epoch, applied_at) < ?",
                               (now - keep_s,))
            return cur.rowcount

    # -- reads ---------------------------------------------------------------------------------------------
    def candidates(self, station_ae_title: str | None, include_unassigned: bool = True,
                   modality: str | None = None) -> list[WorklistItem]:
        """Open items not done, scheduled at ``station_ae_title`` (None: any station; ``""`` steps too
        when ``include_unassigned``), of ``modality`` if given, by scheduled start."""
        station = None if station_ae_title is None else station_ae_title.strip()
        wanted = None if modality is None else modality.strip()
        rows = self._database.rows(
            "SELECT step_key, sealed FROM worklist WHERE done = 0 "
            "AND (? IS NULL OR station_ae_title = ? OR (? AND station_ae_title = '')) "
            "AND (? IS NULL OR modality = ?) ORDER BY scheduled_at, step_key",
            (station, station, int(include_unassigned), wanted, wanted))
        return [self._open(row["step_key"], bytes(row["sealed"])) for row in rows]

    def _open(self, step_key: str, sealed: bytes) -> WorklistItem:
        plain = b"".join(atrest.open_pieces(self._key, [sealed]))
        head, _, doc = plain.partition(b"\n")
        if head != step_key.encode():
            raise IntegrityError("worklist document belongs to another row")
        try:
            return worklist.from_document(doc)
        except FrameError as exc:
            raise IntegrityError(f"worklist document unreadable: {exc}") from exc

    def count(self) -> int:
        return int(self._database.rows("SELECT count(*) FROM worklist WHERE done = 0")[0][0])

    def last_seq(self) -> int:
        with self._database.tx() as conn:
            return _last_seq(conn)

    def close(self) -> None:
        self._database.close()


def _last_seq(conn: Connection) -> int:
    row = conn.execute("SELECT seq FROM feed WHERE name = ?", (_FEED,)).fetchone()
    return int(row[0]) if row else 0


def _scheduled_at(step: worklist.ScheduledStep) -> str:
    """YYYYMMDDHHMMSS of the scheduled start (sortable), ``""`` when there is no date."""
    if not step.start_date:
        return ""
    return step.start_date + (step.start_time.split(".")[0] + "000000")[:6]


def _epoch(step: worklist.ScheduledStep) -> float | None:
    at = _scheduled_at(step)
    if not at:
        return None
    try:
        return float(calendar.timegm(time.strptime(at, "%Y%m%d%H%M%S")))
    except ValueError:
        return None  # a date the calendar lacks (20261332): kept until applied_at + keep
