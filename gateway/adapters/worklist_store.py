"""The edge's Modality Worklist cache: SQLite ``worklist.db``, every patient attribute sealed.

The modality's worklist must keep working for days with the uplink down, so the box keeps the
scheduled procedure steps it was sent (``core.schema.WorklistUpdate``, from the cloud's feed over
MQTT, ``edge/worklist_feed.py``, or ``mgw edge worklist import``). PHI never sits in plaintext on disk: each
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
ignored whole (a replay, or an older update delivered late). A ``replace`` update is the whole
list: steps it does not name leave. A step the modality started (MPPS) stays done when upserted
again. Each row keeps the cloud's ``ref`` for the entry (random, not PHI: plain). The performed
statuses to report go to ``status_outbox`` by ref until the cloud acknowledges them; ``mpps_refs``
maps each MPPS instance (its SOP Instance UID HMAC'd like the row keys, never plain) to the refs
it performs, so its N-SET reports the same entries. ``synchronous=NORMAL``: the cache is
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
    # the feed over MQTT (docs/protocol.md, "Worklist feed"): each entry's ref, when the last update
    # applied, the performed statuses to report, and which refs each MPPS instance performs
    """
    ALTER TABLE worklist ADD COLUMN ref TEXT NOT NULL DEFAULT '';
    ALTER TABLE feed ADD COLUMN applied_at REAL;
    CREATE TABLE status_outbox (
        ref TEXT NOT NULL,
        status TEXT NOT NULL,
        at REAL NOT NULL,
        sent_at REAL,
        acked INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (ref, status)
    );
    CREATE INDEX status_outbox_due ON status_outbox(acked, sent_at);
    CREATE TABLE mpps_refs (
        mpps_key TEXT NOT NULL,
        ref TEXT NOT NULL,
        PRIMARY KEY (mpps_key, ref)
    )
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


@dataclass(frozen=True)
class PendingStatus:
    """A performed status the cloud has not acknowledged (``schema.WorklistStatus`` without the box)."""

    ref: str
    status: str
    at: float


class WorklistStore:
    """Thread-safe: one connection and one lock; each method is one transaction."""

    def __init__(self, db_path: Path, cache_key: bytes) -> None:
        if len(cache_key) != 32:
            raise ValueError("the cache key is 32 bytes")
        self._key = cache_key
        self._row_key = hmac.new(cache_key, b"mgw worklist step key v1", hashlib.sha256).digest()
        self._mpps_key = hmac.new(cache_key, b"mgw worklist mpps key v1", hashlib.sha256).digest()
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
        """Apply ``update``'s operations in order, in one transaction, if its ``seq`` is new. With
        ``replace``, every step its upserts do not name leaves the cache (counted as cancelled)."""
        with self._database.tx() as conn:
            last = _last_seq(conn)
            if update.seq <= last:
                return Applied(False, last_seq=last)
            upserted = cancelled = 0
            named: set[str] = set()
            for op in update.ops:
                if isinstance(op, WorklistUpsert):
                    named.add(self._upsert(conn, worklist.item_of(op.entry), op.entry.ref, update.seq, now))
                    upserted += 1
                elif isinstance(op, WorklistCancel):
                    key = self.step_key(op.step_id, op.accession_number)
                    named.discard(key)
                    cancelled += conn.execute("DELETE FROM worklist WHERE step_key = ?", (key,)).rowcount
            if update.replace:
                cancelled += sum(conn.execute("DELETE FROM worklist WHERE step_key = ?", (key,)).rowcount
                                 for (key,) in conn.execute("SELECT step_key FROM worklist").fetchall()
                                 if key not in named)
            conn.execute("INSERT INTO feed (name, seq, applied_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                         "SET seq = excluded.seq, applied_at = excluded.applied_at", (_FEED, update.seq, now))
            return Applied(True, upserted, cancelled, update.seq)

    def _upsert(self, conn: Connection, item: WorklistItem, ref: str, seq: int, now: float) -> str:
        """Insert or replace the step; one the modality already started stays done, with its status."""
        key = self.step_key(*item.key)
        step = item.step
        sealed = b"".join(atrest.seal_pieces(self._key, os.urandom(atrest.FILE_ID_BYTES),
                                             [key.encode() + b"\n" + worklist.document(item)]))
        conn.execute(
            "INSERT INTO worklist (step_key, modality, station_ae_title, scheduled_at, scheduled_epoch, status, "
            "done, applied_at, applied_seq, sealed, ref) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) "
            "ON CONFLICT (step_key) DO UPDATE SET modality = excluded.modality, "
            "station_ae_title = excluded.station_ae_title, scheduled_at = excluded.scheduled_at, "
            "scheduled_epoch = excluded.scheduled_epoch, "
            "status = CASE WHEN worklist.done = 1 THEN worklist.status ELSE excluded.status END, "
            "applied_at = excluded.applied_at, applied_seq = excluded.applied_seq, sealed = excluded.sealed, "
            "ref = excluded.ref",
            (key, step.modality.strip(), step.station_ae_title.strip(), _scheduled_at(step), _epoch(step),
             step.status.strip(), now, seq, sealed, ref))
        return key

    def mark_done(self, step_id: str, accession_number: str, status: str) -> bool:
        """MPPS reported the step IN PROGRESS, COMPLETED or DISCONTINUED: it leaves the worklist.
        False when the cache holds no such step."""
        if status not in _DONE:
            raise ValueError(f"not a performed procedure step status: {status}")
        with self._database.tx() as conn:
            cur = conn.execute("UPDATE worklist SET done = 1, status = ? WHERE step_key = ?",
                               (status, self.step_key(step_id, accession_number)))
            return cur.rowcount == 1

    # -- MPPS: performed steps and the statuses to report (by ref: no patient data) -------------------------
    def mpps_key(self, sop_instance_uid: str) -> str:
        """The MPPS instance's key in ``mpps_refs``: no UID readable in the file."""
        return hmac.new(self._mpps_key, sop_instance_uid.strip().encode(), hashlib.sha256).hexdigest()

    def perform(self, sop_instance_uid: str, steps: list[tuple[str, str]], now: float) -> tuple[int, int]:
        """MPPS N-CREATE (IN PROGRESS) of ``sop_instance_uid`` performs ``steps`` (step id, accession
        number): each cached one is done, remembered as this instance's, and IN PROGRESS is queued
        for its ref. ``(steps done, statuses queued)``."""
        mpps = self.mpps_key(sop_instance_uid)
        done = queued = 0
        with self._database.tx() as conn:
            for step_id, accession in steps:
                row = conn.execute("UPDATE worklist SET done = 1, status = ? WHERE step_key = ? RETURNING ref",
                                   (_DONE[0], self.step_key(step_id, accession))).fetchone()
                if row is None:
                    continue
                done += 1
                if row[0]:
                    conn.execute("INSERT INTO mpps_refs (mpps_key, ref) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                 (mpps, row[0]))
                    queued += _queue(conn, row[0], _DONE[0], now)
        return done, queued

    def performed(self, sop_instance_uid: str, status: str, now: float) -> int:
        """MPPS N-SET of ``sop_instance_uid`` to ``status`` (COMPLETED, DISCONTINUED): queued for
        every ref it performs; how many."""
        if status not in _DONE:
            raise ValueError(f"not a performed procedure step status: {status}")
        with self._database.tx() as conn:
            refs = [r for (r,) in conn.execute("SELECT ref FROM mpps_refs WHERE mpps_key = ? ORDER BY ref",
                                               (self.mpps_key(sop_instance_uid),)).fetchall()]
            for ref in refs:
                conn.execute("UPDATE worklist SET status = ? WHERE ref = ?", (status, ref))
            return sum(_queue(conn, ref, status, now) for ref in refs)

    def due_statuses(self, sent_before: float) -> list[PendingStatus]:
        """Statuses not acknowledged, never sent or last sent at or before ``sent_before``, oldest first."""
        rows = self._database.rows(
            "SELECT ref, status, at FROM status_outbox WHERE acked = 0 AND (sent_at IS NULL OR sent_at <= ?) "
            "ORDER BY at, rowid", (sent_before,))
        return [PendingStatus(str(r["ref"]), str(r["status"]), float(r["at"])) for r in rows]

    def mark_status_sent(self, ref: str, status: str, now: float) -> None:
        with self._database.tx() as conn:
            conn.execute("UPDATE status_outbox SET sent_at = ? WHERE ref = ? AND status = ?", (now, ref, status))

    def mark_status_acked(self, ref: str, status: str) -> bool:
        """The cloud acknowledged the status; False when there was no such report (a duplicate ack)."""
        with self._database.tx() as conn:
            cur = conn.execute("UPDATE status_outbox SET acked = 1 WHERE ref = ? AND status = ? AND acked = 0",
                               (ref, status))
            return cur.rowcount == 1

    def statuses_unacked(self) -> int:
        return int(self._database.rows("SELECT count(*) FROM status_outbox WHERE acked = 0")[0][0])

    def expire(self, now: float, keep_s: float) -> int:
        """Remove items scheduled more than ``keep_s`` ago (those without a start: applied that long
        ago). The scheduled time is the site's local time read as UTC: ``keep_s`` is a day or more,
        so the zone's hours do not matter."""
        with self._database.tx() as conn:
            cur = conn.execute("DELETE FROM worklist WHERE coalesce(scheduled_epoch, applied_at) < ?",
                               (now - keep_s,))
            conn.execute("DELETE FROM status_outbox WHERE acked = 1 AND at < ?", (now - keep_s,))
            conn.execute("DELETE FROM mpps_refs WHERE ref NOT IN (SELECT ref FROM worklist) "
                         "AND ref NOT IN (SELECT ref FROM status_outbox)")
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

    def last_applied_at(self) -> float | None:
        """When the last update applied (None: never, or before this column existed)."""
        rows = self._database.rows("SELECT applied_at FROM feed WHERE name = ?", (_FEED,))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def close(self) -> None:
        self._database.close()


def _queue(conn: Connection, ref: str, status: str, now: float) -> int:
    """Queue ``status`` for ``ref`` once (a repeated report of the same status is the same report)."""
    return int(conn.execute("INSERT INTO status_outbox (ref, status, at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                            (ref, status, now)).rowcount)


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
