"""The worklist feed's tables in the fleet database: orders, routes, per-box feed state,
performed statuses and the outbox of statuses to the RIS. SQL only; the rules are ``feed.py``.

Written once for SQLite and PostgreSQL (``gateway.cloud.sql``), as migration 7 of the fleet
store (``fleet/store.MIGRATIONS``), so two fleet instances on one database share every order.
No patient data is stored in the clear: an order's entry (names, IDs, dates of birth) is one
sealed blob (``core.atrest``, under the feed's at-rest key); the plain columns are what routing
and the snapshot window need (modality, station AE title, station name, scheduled date and
time), the random ``ref`` the box reports by, and a keyed digest of the entry's content (an
order sent again unchanged is not rewritten). An order's key is an HMAC of its source, step
ID and accession number under that key (``feed.order_key``), so not even an accession number
is readable in the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cloud.sql import Database

WORKLIST_MIGRATION = """
    CREATE TABLE worklist_orders (
        order_key TEXT PRIMARY KEY, source TEXT NOT NULL, ref TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
        modality TEXT NOT NULL, station_ae TEXT NOT NULL, station_name TEXT NOT NULL, start_date TEXT NOT NULL,
        start_time TEXT NOT NULL, sealed TEXT NOT NULL, content TEXT NOT NULL, updated_at {real} NOT NULL,
        performed TEXT NOT NULL,
        performed_by TEXT NOT NULL, performed_at {real}
    );
    CREATE INDEX worklist_orders_open ON worklist_orders (state, modality);
    CREATE TABLE worklist_routes (
        box_id TEXT NOT NULL, modality TEXT NOT NULL, station_ae TEXT NOT NULL, station_name TEXT NOT NULL,
        created_at {real} NOT NULL, PRIMARY KEY (box_id, modality, station_ae)
    );
    CREATE TABLE worklist_feeds (
        box_id TEXT PRIMARY KEY, worklist_key TEXT NOT NULL, seq {bigint} NOT NULL, digest TEXT NOT NULL,
        sent_key TEXT NOT NULL, entries INTEGER NOT NULL, left_out INTEGER NOT NULL, published_at {real}
    );
    CREATE TABLE worklist_sources (
        source TEXT PRIMARY KEY, last_poll {real}, last_ok {real}, orders INTEGER NOT NULL,
        errors {bigint} NOT NULL, last_error TEXT NOT NULL
    );
    CREATE TABLE worklist_outbox (
        id {id}, ref TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL, at {real} NOT NULL,
        attempts INTEGER NOT NULL, next_at {real} NOT NULL, last_error TEXT NOT NULL, sent_at {real}
    );
    CREATE INDEX worklist_outbox_due ON worklist_outbox (sent_at, next_at)
"""

OPEN, CANCELLED = "open", "cancelled"


@dataclass(frozen=True)
class StoredOrder:
    order_key: str
    source: str
    ref: str
    state: str
    sealed: bytes
    content: str = ""  # keyed digest of the entry (feed: unchanged orders are not rewritten)
    performed: str = ""
    performed_by: str = ""


@dataclass(frozen=True)
class FeedState:
    box_id: str
    worklist_key: str  # hex, from the box's last birth; "" = none
    seq: int
    digest: str  # of the last snapshot published; "" = never, "cleared" = cleared
    sent_key: str  # the worklist key the last frame was sealed to
    entries: int
    left_out: int  # entries of the last snapshot that did not fit the frame
    published_at: float | None


@dataclass(frozen=True)
class RouteRow:
    box_id: str
    modality: str
    station_ae_title: str
    station_name: str
    created_at: float


@dataclass(frozen=True)
class OutboxItem:
    id: int
    ref: str
    source: str
    status: str
    at: float
    attempts: int
    last_error: str


def _order(r: dict[str, Any]) -> StoredOrder:
    return StoredOrder(r["order_key"], r["source"], r["ref"], r["state"], bytes.fromhex(r["sealed"]), r["content"],
                       r["performed"], r["performed_by"])


def _feed(r: dict[str, Any]) -> FeedState:
    return FeedState(r["box_id"], r["worklist_key"], int(r["seq"]), r["digest"], r["sent_key"], int(r["entries"]),
                     int(r["left_out"]), r["published_at"])


class WorklistStore:
    """The feed's statements on the fleet store's ``Database`` (one transaction per call)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- orders -------------------------------------------------------------------------------------------
    def upsert_order(self, order_key: str, source: str, ref: str, routing: tuple[str, str, str, str, str],
                     sealed: bytes, content: str, at: float) -> None:
        """Insert or replace an order's entry (open again if it was cancelled); its ref and performed
        status stay. An open order whose content is unchanged is left as it is (a poll rewrites nothing)."""
        modality, station_ae, station_name, start_date, start_time = routing
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO worklist_orders (order_key, source, ref, state, modality, station_ae, station_name, "
                "start_date, start_time, sealed, content, updated_at, performed, performed_by) "
                "VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, '', '') ON CONFLICT (order_key) DO UPDATE SET "
                "state = 'open', modality = excluded.modality, station_ae = excluded.station_ae, "
                "station_name = excluded.station_name, start_date = excluded.start_date, "
                "start_time = excluded.start_time, sealed = excluded.sealed, content = excluded.content, "
                "updated_at = excluded.updated_at "
                "WHERE worklist_orders.content <> excluded.content OR worklist_orders.state <> 'open'",
                (order_key, source, ref, modality, station_ae, station_name, start_date, start_time, sealed.hex(),
                 content, at))

    def cancel_orders(self, order_keys: Sequence[str], at: float) -> int:
        with self._db.transaction() as tx:
            for key in order_keys:
                tx.execute("UPDATE worklist_orders SET state = 'cancelled', updated_at = ? WHERE order_key = ? "
                           "AND state = 'open'", (at, key))
        return len(order_keys)

    def order_keys(self, source: str, state: str = OPEN) -> set[str]:
        rows = self._db.execute("SELECT order_key FROM worklist_orders WHERE source = ? AND state = ?",
                                (source, state))
        return {r["order_key"] for r in rows}

    def open_orders(self, modalities: Sequence[str], first_date: str, last_date: str) -> list[StoredOrder]:
        """Open, not yet performed orders of these modalities scheduled in the window (or undated)."""
        if not modalities:
            return []
        marks = ",".join("?" * len(modalities))
        return [_order(r) for r in self._db.execute(
            f"SELECT * FROM worklist_orders WHERE state = 'open' AND performed = '' AND modality IN ({marks}) "  # noqa: S608
            "AND (start_date = '' OR (start_date >= ? AND start_date <= ?)) ORDER BY start_date, start_time, ref",
            (*modalities, first_date, last_date))]

    def order_by_ref(self, ref: str) -> StoredOrder | None:
        rows = self._db.execute("SELECT * FROM worklist_orders WHERE ref = ?", (ref,))
        return _order(rows[0]) if rows else None

    def order_counts(self) -> dict[str, dict[str, int]]:
        """Per source: orders by state (and ``performed``)."""
        out: dict[str, dict[str, int]] = {}
        for r in self._db.execute("SELECT source, CASE WHEN performed <> '' THEN 'performed' ELSE state END AS s, "
                                  "COUNT(*) AS n FROM worklist_orders GROUP BY source, "
                                  "CASE WHEN performed <> '' THEN 'performed' ELSE state END"):
            out.setdefault(r["source"], {})[r["s"]] = int(r["n"])
        return out

    def prune_orders(self, before: float, before_date: str) -> None:
        """Forget cancelled and performed orders not changed since ``before``, open ones scheduled
        before ``before_date`` (DICOM date; never performed, never cancelled), and statuses the RIS
        took before ``before``."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM worklist_orders WHERE ((state <> 'open' OR performed <> '') AND updated_at < ?) "
                       "OR (start_date <> '' AND start_date < ?)", (before, before_date))
            tx.execute("DELETE FROM worklist_outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (before,))

    # -- performed status and the outbox to the RIS --------------------------------------------------------
    def record_status(self, ref: str, box_id: str, status: str, at: float, source: str, now: float) -> bool:
        """Store a performed status and queue it for the RIS; False (nothing queued) when the order
        already has this status (a box resending before it saw the ack) or a later one: a status only
        moves forward, from none to IN PROGRESS to COMPLETED or DISCONTINUED (a late IN PROGRESS after
        COMPLETED changes nothing)."""
        with self._db.transaction() as tx:
            rows = tx.execute("UPDATE worklist_orders SET performed = ?, performed_by = ?, performed_at = ?, "
                              "updated_at = ? WHERE ref = ? AND (performed = '' OR "
                              "(performed = 'IN PROGRESS' AND ? <> 'IN PROGRESS')) RETURNING ref",
                              (status, box_id, at, now, ref, status))
            if not rows:
                return False
            tx.execute("INSERT INTO worklist_outbox (ref, source, status, at, attempts, next_at, last_error) "
                       "VALUES (?, ?, ?, ?, 0, ?, '')", (ref, source, status, at, now))
        return True

    def due(self, now: float, sources: Sequence[str], limit: int = 50) -> list[OutboxItem]:
        """Statuses of ``sources`` to send now, oldest first."""
        if not sources:
            return []
        marks = ",".join("?" * len(sources))
        return [OutboxItem(int(r["id"]), r["ref"], r["source"], r["status"], r["at"], int(r["attempts"]),
                           r["last_error"])
                for r in self._db.execute(
                    f"SELECT * FROM worklist_outbox WHERE sent_at IS NULL AND next_at <= ? AND source IN ({marks}) "  # noqa: S608
                    "ORDER BY id LIMIT ?", (now, *sources, limit))]

    def sent(self, item_id: int, at: float) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE worklist_outbox SET sent_at = ?, attempts = attempts + 1, last_error = '' "
                       "WHERE id = ?", (at, item_id))

    def failed(self, item_id: int, error: str, next_at: float) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE worklist_outbox SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE id = ?",
                       (error[:500], next_at, item_id))

    def was_sent(self, ref: str, status: str) -> bool:
        """Whether the RIS took ``status`` for ``ref`` already (MPPS: the instance exists)."""
        return bool(self._db.execute("SELECT 1 AS one FROM worklist_outbox WHERE ref = ? AND status = ? "
                                     "AND sent_at IS NOT NULL", (ref, status)))

    def outbox_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT COUNT(*) AS pending, MAX(attempts) AS attempts FROM worklist_outbox "
                                "WHERE sent_at IS NULL")
        sent = self._db.execute("SELECT COUNT(*) AS n FROM worklist_outbox WHERE sent_at IS NOT NULL")
        return {"pending": int(rows[0]["pending"] or 0), "max_attempts": int(rows[0]["attempts"] or 0),
                "sent": int(sent[0]["n"] or 0)}

    # -- routes -------------------------------------------------------------------------------------------
    def add_route(self, box_id: str, modality: str, station_ae: str, station_name: str, at: float) -> bool:
        with self._db.transaction() as tx:
            rows = tx.execute("INSERT INTO worklist_routes VALUES (?, ?, ?, ?, ?) "
                              "ON CONFLICT (box_id, modality, station_ae) DO NOTHING RETURNING box_id",
                              (box_id, modality, station_ae, station_name, at))
        return bool(rows)

    def remove_route(self, box_id: str, modality: str, station_ae: str) -> bool:
        with self._db.transaction() as tx:
            rows = tx.execute("DELETE FROM worklist_routes WHERE box_id = ? AND modality = ? AND station_ae = ? "
                              "RETURNING box_id", (box_id, modality, station_ae))
        return bool(rows)

    def routes(self, box_id: str | None = None) -> list[RouteRow]:
        sql, params = "SELECT * FROM worklist_routes", ()  # type: tuple[str, tuple[str, ...]]
        if box_id is not None:
            sql, params = sql + " WHERE box_id = ?", (box_id,)
        return [RouteRow(r["box_id"], r["modality"], r["station_ae"], r["station_name"], r["created_at"])
                for r in self._db.execute(sql + " ORDER BY box_id, modality, station_ae", params)]

    # -- per-box feed state -------------------------------------------------------------------------------
    def note_key(self, box_id: str, worklist_key: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO worklist_feeds (box_id, worklist_key, seq, digest, sent_key, entries, left_out) "
                       "VALUES (?, ?, 0, '', '', 0, 0) ON CONFLICT (box_id) DO UPDATE SET "
                       "worklist_key = excluded.worklist_key", (box_id, worklist_key))

    def feed(self, box_id: str) -> FeedState | None:
        rows = self._db.execute("SELECT * FROM worklist_feeds WHERE box_id = ?", (box_id,))
        return _feed(rows[0]) if rows else None

    def feeds(self) -> list[FeedState]:
        return [_feed(r) for r in self._db.execute("SELECT * FROM worklist_feeds ORDER BY box_id")]

    def published(self, box_id: str, seq: int, digest: str, sent_key: str, entries: int, left_out: int,
                  at: float) -> bool:
        """Record a frame as published with ``seq``, if the stored seq is still ``seq - 1`` (another
        instance that led for a moment may have published it): True when this one took the seq."""
        with self._db.transaction() as tx:
            rows = tx.execute("UPDATE worklist_feeds SET seq = ?, digest = ?, sent_key = ?, entries = ?, "
                              "left_out = ?, published_at = ? WHERE box_id = ? AND seq = ? RETURNING box_id",
                              (seq, digest, sent_key, entries, left_out, at, box_id, seq - 1))
        return bool(rows)

    # -- sources ------------------------------------------------------------------------------------------
    def source_polled(self, source: str, at: float, orders: int, error: str = "") -> None:
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO worklist_sources VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
                       "last_poll = excluded.last_poll, "
                       "last_ok = CASE WHEN excluded.last_error = '' THEN excluded.last_ok "
                       "ELSE worklist_sources.last_ok END, "
                       "orders = CASE WHEN excluded.last_error = '' THEN excluded.orders "
                       "ELSE worklist_sources.orders END, "
                       "errors = worklist_sources.errors + excluded.errors, last_error = excluded.last_error",
                       (source, at, None if error else at, orders, 1 if error else 0, error[:500]))

    def sources(self) -> list[dict[str, Any]]:
        return self._db.execute("SELECT * FROM worklist_sources ORDER BY source")
