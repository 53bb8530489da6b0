"""The fleet database: boxes, health history, exams, alerts, silences, maintenance. The fleet's shared SQL.

``FleetStore`` is the narrow interface the fleet service and the API use. ``SqlFleetStore``
holds the schema (``MIGRATIONS``) and the statements, each written once for both backends in
the SQL of ``gateway.cloud.sql``; a backend's ``Database`` supplies the dialect: connection,
transactions, placeholders, column types and where the schema version lives.
``SqliteFleetStore`` (``gateway/adapters/sqlite_fleet_store.py``) keeps one SQLite file (WAL,
``synchronous=NORMAL``: registry rows are rebuilt from the next heartbeat, exam records are
re-sent by the edge until acknowledged, and the acknowledgement is sent only after the
commit). ``PostgresFleetStore`` (``gateway/adapters/postgres_fleet_store.py``) keeps the same
tables, with the same migration numbers, in the PostgreSQL database of ``[index]``
(version in ``fleet_schema_version``).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gateway.cloud.commands.store import COMMANDS_MIGRATION, CommandStore
from gateway.cloud.fleet.auth_store import AUTH_MIGRATION, AuthStore
from gateway.cloud.fleet.commission_store import COMMISSION_MIGRATION, CommissionStore
from gateway.cloud.sql import Database, Statements
from gateway.cloud.worklist.store import WORKLIST_MIGRATION, WorklistStore
from gateway.core.alerts import SEVERITY, Maintenance, Severity, Silence
from gateway.core.fleet import AlertKind, BoxState

MIGRATIONS: list[str] = [  # portable types: gateway.cloud.sql
    """
    CREATE TABLE boxes (
        box_id TEXT PRIMARY KEY, site TEXT NOT NULL, version TEXT NOT NULL, online INTEGER NOT NULL,
        bd_seq {bigint} NOT NULL, first_seen {real} NOT NULL, last_seen {real} NOT NULL, changed_at {real} NOT NULL,
        health TEXT NOT NULL
    );
    CREATE TABLE health_samples (
        box_id TEXT NOT NULL, at {real} NOT NULL, online INTEGER NOT NULL, backlog_items {bigint},
        backlog_bytes {bigint}, oldest_age_s {real}, disk_used_percent {real}, cpu_temp_c {real}, reconnects {bigint},
        PRIMARY KEY (box_id, at)
    );
    CREATE TABLE exams (
        box_id TEXT NOT NULL, study_key TEXT NOT NULL, revision INTEGER NOT NULL, site TEXT NOT NULL,
        modality TEXT NOT NULL, start {real} NOT NULL, "end" {real} NOT NULL, images INTEGER NOT NULL,
        series INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL, first_received_at {real} NOT NULL,
        last_received_at {real} NOT NULL, cloud_stored_at {real},
        PRIMARY KEY (box_id, study_key)
    );
    CREATE INDEX exams_by_modality ON exams (box_id, modality, start);
    CREATE INDEX exams_by_site ON exams (site, last_received_at);
    CREATE TABLE alerts (
        id {id}, box_id TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
        detail TEXT NOT NULL, raised_at {real} NOT NULL, cleared_at {real}
    );
    CREATE INDEX alerts_open ON alerts (cleared_at, box_id)
    """,
    """
    CREATE TABLE dead_letters (
        id {id}, box_id TEXT NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
        detail TEXT NOT NULL, at {real} NOT NULL, bytes {bigint} NOT NULL, messages {bigint} NOT NULL,
        service TEXT NOT NULL
    );
    CREATE INDEX dead_letters_by_box ON dead_letters (box_id, id);
    CREATE INDEX dead_letters_by_time ON dead_letters (at)
    """,
    # the alert lifecycle (gateway/core/alerts.py): severity, site, last seen, grouping under a
    # site alert, acknowledgement, suppression; silences and maintenance windows
    """
    ALTER TABLE alerts ADD COLUMN severity TEXT NOT NULL DEFAULT 'warning';
    ALTER TABLE alerts ADD COLUMN site TEXT NOT NULL DEFAULT '';
    ALTER TABLE alerts ADD COLUMN last_seen {real};
    ALTER TABLE alerts ADD COLUMN parent_id {bigint};
    ALTER TABLE alerts ADD COLUMN acked_at {real};
    ALTER TABLE alerts ADD COLUMN acked_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE alerts ADD COLUMN ack_note TEXT NOT NULL DEFAULT '';
    ALTER TABLE alerts ADD COLUMN suppressed_by TEXT NOT NULL DEFAULT '';
    UPDATE alerts SET last_seen = COALESCE(cleared_at, raised_at);
    UPDATE alerts SET severity = 'critical' WHERE kind IN ('box_offline', 'disk_full');
    UPDATE alerts SET severity = 'info' WHERE kind = 'modality_silent';
    UPDATE alerts SET site = COALESCE((SELECT b.site FROM boxes b WHERE b.box_id = alerts.box_id), '');
    CREATE INDEX alerts_by_parent ON alerts (parent_id);
    CREATE TABLE alert_silences (
        id {id}, box_id TEXT NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL, starts_at {real} NOT NULL,
        ends_at {real} NOT NULL, created_by TEXT NOT NULL, reason TEXT NOT NULL, created_at {real} NOT NULL
    );
    CREATE TABLE maintenance_windows (
        id {id}, site TEXT NOT NULL, box_id TEXT NOT NULL, starts_at {real} NOT NULL, ends_at {real} NOT NULL,
        created_by TEXT NOT NULL, reason TEXT NOT NULL, created_at {real} NOT NULL
    )
    """,
    # the console's accounts, sessions, API tokens, login throttling and audit log
    # (gateway/cloud/fleet/auth_store.py); the audit log refuses UPDATE and DELETE (core/sqlscript.py)
    AUTH_MIGRATION,
    # migration 5 (4 is accounts and audit): the leader lease of several fleet instances on one
    # database (docs/operations.md#running-two-fleet-processes). One row per lease; ``term`` counts
    # the changes of holder.
    """
    CREATE TABLE fleet_leases (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at {real} NOT NULL, term {bigint} NOT NULL
    );
    INSERT INTO fleet_leases (name, holder, expires_at, term) VALUES ('leader', '', 0, 0)
    """,
    # migration 6: boxes' signed commissioning reports (gateway/cloud/fleet/commission_store.py)
    COMMISSION_MIGRATION,
    # migration 7: the worklist feed (gateway/cloud/worklist/store.py): orders sealed at rest, routes,
    # per-box feed state, sources, and the outbox of performed statuses to the RIS
    WORKLIST_MIGRATION,
    # migration 8: remote commands (gateway/cloud/commands/store.py): per-box seq, commands with their
    # arguments sealed at rest, bundles, refusals, configuration versions sent, rollouts
    COMMANDS_MIGRATION,
]
EXAM_FIELDS = ("box_id", "study_key", "revision", "site", "modality", "start", "end", "images", "series", "source",
               "status", "first_received_at", "last_received_at", "cloud_stored_at")
_SAMPLE_FIELDS = ("box_id", "at", "online", "backlog_items", "backlog_bytes", "oldest_age_s", "disk_used_percent",
                  "cpu_temp_c", "reconnects")
_SAMPLE_INTEGERS = frozenset({"online", "backlog_items", "backlog_bytes", "reconnects"})
_BIGINT = 2**63


@dataclass(frozen=True)
class DeadLetter:
    """A message from a box that could not be processed (``messages`` > 1: coalesced repeats)."""

    box_id: str
    topic: str
    reason: str  # a DeadLetterReason value
    detail: str
    at: float
    bytes: int
    messages: int = 1
    service: str = ""
    id: int = 0


class AlertState(enum.StrEnum):
    """Which alerts a listing wants: open ones (all, acknowledged or not yet), resolved ones, or all."""

    OPEN = "open"
    UNACKED = "unacked"
    ACKED = "acked"
    RESOLVED = "resolved"
    ALL = "all"


@dataclass(frozen=True)
class Alert:
    """One alert: raised when its condition began, resolved (``cleared_at``) when it ended and
    kept for history. A site alert has ``box_id`` "" and its site as ``subject``; the box alerts
    grouped under it have its id as ``parent_id`` (and, in a grouped listing, are its ``children``)."""

    id: int
    box_id: str
    kind: AlertKind
    subject: str
    detail: str
    raised_at: float
    cleared_at: float | None
    severity: Severity = Severity.WARNING
    site: str = ""
    last_seen: float = 0.0  # the last time the condition was seen to hold
    parent_id: int | None = None
    acked_at: float | None = None
    acked_by: str = ""
    ack_note: str = ""
    suppressed_by: str = ""  # "", "silence:<id>" or "maintenance:<id>"
    children: tuple[Alert, ...] = ()

    @property
    def resolved_at(self) -> float | None:
        return self.cleared_at


@dataclass(frozen=True)
class Lease:
    """The leader lease as it stands after a take: who holds it, until when, and its term."""

    holder: str
    expires_at: float
    term: int

    def held_by(self, holder: str) -> bool:
        return self.holder == holder


class FleetStore(Protocol):
    where: str  # the file, or postgresql:<database>; never a password
    auth: AuthStore  # the console's accounts, sessions, tokens and audit log, in the same database
    commissions: CommissionStore  # the boxes' signed commissioning reports
    worklist: WorklistStore  # the worklist feed's orders, routes and feed state, in the same database
    commands: CommandStore  # remote commands: the queue, results, bundles, config versions, rollouts

    def schema_version(self) -> int: ...
    def save_boxes(self, states: Iterable[BoxState]) -> None: ...
    def load_boxes(self) -> list[BoxState]: ...
    def add_samples(self, rows: Iterable[dict[str, Any]]) -> None: ...
    def samples(self, box_id: str, since: float) -> list[dict[str, Any]]: ...
    def upsert_exam(self, record: dict[str, Any]) -> bool: ...
    def exams(self, *, box_id: str | None = None, modality: str | None = None, since: float = 0.0,
              until: float = 1e12, limit: int = 100_000) -> list[dict[str, Any]]: ...
    def modalities(self) -> list[dict[str, Any]]: ...
    def turnarounds(self, since: float) -> list[tuple[str, float]]: ...
    def turnarounds_by_modality(self, since: float) -> list[tuple[str, str, float]]: ...
    def exam_spans(self, *, since: float, until: float) -> list[dict[str, Any]]: ...
    def raise_alert(self, box_id: str, kind: AlertKind, subject: str, detail: str, at: float, *, site: str = "",
                    parent_id: int | None = None, suppressed_by: str = "") -> Alert: ...
    def clear_alert(self, alert_id: int, at: float) -> None: ...
    def alerts(self, *, open_only: bool, since: float = 0.0) -> list[Alert]: ...
    def alert(self, alert_id: int) -> Alert | None: ...
    def list_alerts(self, *, state: AlertState = AlertState.OPEN, severity: Severity | None = None,
                    site: str | None = None, kind: AlertKind | None = None, since: float = 0.0,
                    grouped: bool = True, limit: int = 1000) -> list[Alert]: ...
    def touch_alerts(self, seen: Sequence[tuple[int, str, float]]) -> None: ...
    def group_alerts(self, alert_ids: Sequence[int], parent_id: int | None) -> None: ...
    def suppress_alerts(self, marks: Sequence[tuple[int, str]]) -> None: ...
    def acknowledge(self, alert_id: int, who: str, note: str, at: float) -> None: ...
    def add_silence(self, box_id: str, site: str, kind: str, starts_at: float, ends_at: float, who: str,
                    reason: str, at: float) -> Silence: ...
    def expire_silence(self, silence_id: int, at: float) -> Silence | None: ...
    def silences(self, *, active_at: float | None = None) -> list[Silence]: ...
    def add_maintenance(self, site: str, box_id: str, starts_at: float, ends_at: float, who: str, reason: str,
                        at: float) -> Maintenance: ...
    def end_maintenance(self, window_id: int, at: float) -> Maintenance | None: ...
    def maintenance_windows(self, *, active_at: float | None = None) -> list[Maintenance]: ...
    def prune(self, before: float) -> None: ...
    def add_dead_letters(self, letters: Sequence[DeadLetter], keep_per_box: int, keep_total: int) -> None: ...
    def dead_letters(self, *, box_id: str | None = None, since: float = 0.0,
                     limit: int = 1000) -> list[DeadLetter]: ...
    def dead_letter_summary(self, since: float) -> list[DeadLetter]: ...
    def take_lease(self, holder: str, now: float, lease_s: float) -> Lease: ...
    def release_lease(self, holder: str) -> None: ...
    def close(self) -> None: ...


def _sample_value(key: str, value: Any) -> Any:
    """A health figure as its column holds it; anything else (a string, NaN, out of range) is None,
    so a box reporting nonsense loses that figure on both backends alike, never the whole batch."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if key in ("box_id", "at") else None
    if key in _SAMPLE_INTEGERS:
        return value if isinstance(value, int) and -_BIGINT <= value < _BIGINT else None
    return float(value) if math.isfinite(value) else None


def _quoted(name: str) -> str:
    return f'"{name}"'  # "end" is reserved in PostgreSQL


_UPSERT_EXAM = (
    f"INSERT INTO exams ({','.join(map(_quoted, EXAM_FIELDS))}) VALUES ({','.join('?' * len(EXAM_FIELDS))}) "  # noqa: S608
    "ON CONFLICT (box_id, study_key) DO UPDATE SET "
    + ", ".join(f"{_quoted(k)} = excluded.{_quoted(k)}" for k in EXAM_FIELDS[2:])
    + " WHERE excluded.revision > exams.revision")


class SqlFleetStore:
    """``FleetStore`` over a backend's ``Database``: the statements here, the dialect there.
    Thread-safe as the backend is (one connection, one lock, one transaction per call)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.where = db.where
        db.migrate(MIGRATIONS)
        self.auth = AuthStore(db)
        self.commissions = CommissionStore(db)
        self.worklist = WorklistStore(db)
        self.commands = CommandStore(db)

    def _tx(self) -> AbstractContextManager[Statements]:
        return self._db.transaction()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._db.execute(sql, params)

    def schema_version(self) -> int:
        return self._db.schema_version()

    def close(self) -> None:
        self._db.close()

    # -- boxes ----------------------------------------------------------------------------------------
    def save_boxes(self, states: Iterable[BoxState]) -> None:
        rows = [(s.box_id, s.site, s.version, int(s.online), s.bd_seq, s.first_seen, s.last_seen, s.changed_at,
                 json.dumps(s.health, separators=(",", ":"))) for s in states]
        if not rows:
            return
        with self._tx() as tx:
            tx.executemany(
                "INSERT INTO boxes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (box_id) DO UPDATE SET "
                "site = excluded.site, version = excluded.version, online = excluded.online, "
                "bd_seq = excluded.bd_seq, first_seen = excluded.first_seen, last_seen = excluded.last_seen, "
                "changed_at = excluded.changed_at, health = excluded.health", rows)

    def load_boxes(self) -> list[BoxState]:
        return [BoxState(r["box_id"], bool(r["online"]), r["bd_seq"], r["first_seen"], r["last_seen"],
                         r["changed_at"], json.loads(r["health"]), r["site"], r["version"])
                for r in self._read("SELECT * FROM boxes ORDER BY box_id")]

    def add_samples(self, rows: Iterable[dict[str, Any]]) -> None:
        values = [tuple(_sample_value(k, r.get(k)) for k in _SAMPLE_FIELDS) for r in rows]
        if values:
            with self._tx() as tx:
                marks = ",".join("?" * len(_SAMPLE_FIELDS))
                tx.executemany(f"INSERT INTO health_samples VALUES ({marks}) "  # noqa: S608 - constant names
                               "ON CONFLICT (box_id, at) DO NOTHING", values)

    def samples(self, box_id: str, since: float) -> list[dict[str, Any]]:
        return self._read("SELECT * FROM health_samples WHERE box_id = ? AND at >= ? ORDER BY at", (box_id, since))

    # -- exams ----------------------------------------------------------------------------------------
    def upsert_exam(self, record: dict[str, Any]) -> bool:
        """Store a record unless a later revision is already there; True if the stored revision is
        this one or later (the edge may then forget it)."""
        values = tuple(record.get(k) for k in EXAM_FIELDS)
        with self._tx() as tx:
            tx.execute(_UPSERT_EXAM, values)
            rows = tx.execute("SELECT revision FROM exams WHERE box_id = ? AND study_key = ?",
                              (record["box_id"], record["study_key"]))
        return bool(rows and rows[0]["revision"] >= record["revision"])

    def exams(self, *, box_id: str | None = None, modality: str | None = None, since: float = 0.0,
              until: float = 1e12, limit: int = 100_000) -> list[dict[str, Any]]:
        sql = "SELECT * FROM exams WHERE start >= ? AND start < ?"
        params: list[Any] = [since, until]
        if box_id is not None:
            sql, params = sql + " AND box_id = ?", [*params, box_id]
        if modality is not None:
            sql, params = sql + " AND modality = ?", [*params, modality]
        return self._read(sql + " ORDER BY start, box_id, study_key LIMIT ?", (*params, limit))

    def modalities(self) -> list[dict[str, Any]]:
        return self._read(
            'SELECT box_id, site, modality, COUNT(*) AS exams, SUM(images) AS images, MAX("end") AS last_exam_end, '
            "MIN(start) AS first_exam_start FROM exams GROUP BY box_id, site, modality ORDER BY box_id, modality")

    def turnarounds(self, since: float) -> list[tuple[str, float]]:
        rows = self._read("SELECT site, cloud_stored_at - last_received_at AS seconds FROM exams "
                          "WHERE cloud_stored_at IS NOT NULL AND last_received_at >= ?", (since,))
        return [(r["site"], max(0.0, float(r["seconds"]))) for r in rows]

    def turnarounds_by_modality(self, since: float) -> list[tuple[str, str, float]]:
        rows = self._read("SELECT site, modality, cloud_stored_at - last_received_at AS seconds FROM exams "
                          "WHERE cloud_stored_at IS NOT NULL AND last_received_at >= ?", (since,))
        return [(r["site"], r["modality"], max(0.0, float(r["seconds"]))) for r in rows]

    def exam_spans(self, *, since: float, until: float) -> list[dict[str, Any]]:
        """Every box's exams that started in ``[since, until)``, only what capacity needs (no limit:
        a week of a whole alliance is a few tens of thousands of narrow rows)."""
        return self._read('SELECT site, box_id, modality, start, "end", images, status FROM exams '
                          "WHERE start >= ? AND start < ? ORDER BY site, box_id, modality, start", (since, until))

    # -- alerts ---------------------------------------------------------------------------------------
    def raise_alert(self, box_id: str, kind: AlertKind, subject: str, detail: str, at: float, *, site: str = "",
                    parent_id: int | None = None, suppressed_by: str = "") -> Alert:
        severity = SEVERITY[kind]
        with self._tx() as tx:
            rows = tx.execute("INSERT INTO alerts (box_id, kind, subject, detail, raised_at, severity, site, "
                              "last_seen, parent_id, suppressed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                              (box_id, kind.value, subject, detail, at, severity.value, site, at, parent_id,
                               suppressed_by))
        return Alert(int(rows[0]["id"]), box_id, kind, subject, detail, at, None, severity, site, at, parent_id,
                     suppressed_by=suppressed_by)

    def clear_alert(self, alert_id: int, at: float) -> None:
        with self._tx() as tx:
            tx.execute("UPDATE alerts SET cleared_at = ? WHERE id = ? AND cleared_at IS NULL", (at, alert_id))

    def alerts(self, *, open_only: bool, since: float = 0.0) -> list[Alert]:
        where = "cleared_at IS NULL" if open_only else "(cleared_at IS NULL OR raised_at >= ?)"
        params: tuple[Any, ...] = () if open_only else (since,)
        return [_alert(r) for r in self._read(f"SELECT * FROM alerts WHERE {where} "  # noqa: S608 - constant
                                              "ORDER BY raised_at DESC, id DESC", params)]

    def alert(self, alert_id: int) -> Alert | None:
        rows = self._read("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        return _alert(rows[0]) if rows else None

    def list_alerts(self, *, state: AlertState = AlertState.OPEN, severity: Severity | None = None,
                    site: str | None = None, kind: AlertKind | None = None, since: float = 0.0,
                    grouped: bool = True, limit: int = 1000) -> list[Alert]:
        """Alerts newest first. ``state``: open (all, ``unacked`` or ``acked``), ``resolved`` or ``all``;
        resolved ones only if raised at or after ``since``. ``grouped``: the box alerts grouped under a
        site alert come as its ``children``, not as rows of their own (the filters pick the rows)."""
        where = {AlertState.OPEN: ["cleared_at IS NULL"],
                 AlertState.UNACKED: ["cleared_at IS NULL", "acked_at IS NULL"],
                 AlertState.ACKED: ["cleared_at IS NULL", "acked_at IS NOT NULL"],
                 AlertState.RESOLVED: ["cleared_at IS NOT NULL", "raised_at >= ?"],
                 AlertState.ALL: ["(cleared_at IS NULL OR raised_at >= ?)"]}[state]
        params: list[Any] = [since] if state in (AlertState.RESOLVED, AlertState.ALL) else []
        for column, value in (("severity", severity), ("site", site), ("kind", kind)):
            if value is not None:
                where, params = [*where, f"{column} = ?"], [*params, str(value)]
        if grouped:
            where = [*where, "parent_id IS NULL"]
        rows = [_alert(r) for r in self._read(
            f"SELECT * FROM alerts WHERE {' AND '.join(where)} ORDER BY raised_at DESC, id DESC LIMIT ?",  # noqa: S608
            (*params, limit))]
        parents = [a.id for a in rows if a.kind is AlertKind.SITE_OFFLINE]
        if not grouped or not parents:
            return rows
        children: dict[int, list[Alert]] = {}
        marks = ",".join("?" * len(parents))
        for r in self._read(f"SELECT * FROM alerts WHERE parent_id IN ({marks}) ORDER BY box_id, id",  # noqa: S608
                            parents):
            child = _alert(r)
            children.setdefault(child.parent_id or 0, []).append(child)
        return [replace(a, children=tuple(children.get(a.id, ()))) for a in rows]

    def touch_alerts(self, seen: Sequence[tuple[int, str, float]]) -> None:
        """Record that open alerts still hold: ``(id, detail, last_seen)``."""
        if seen:
            with self._tx() as tx:
                tx.executemany("UPDATE alerts SET detail = ?, last_seen = ? WHERE id = ? AND cleared_at IS NULL",
                               [(detail, at, alert_id) for alert_id, detail, at in seen])

    def group_alerts(self, alert_ids: Sequence[int], parent_id: int | None) -> None:
        if alert_ids:
            with self._tx() as tx:
                tx.executemany("UPDATE alerts SET parent_id = ? WHERE id = ?", [(parent_id, i) for i in alert_ids])

    def suppress_alerts(self, marks: Sequence[tuple[int, str]]) -> None:
        """Set what suppresses each alert (``(id, "silence:3")``, or "" for nothing any more)."""
        if marks:
            with self._tx() as tx:
                tx.executemany("UPDATE alerts SET suppressed_by = ? WHERE id = ?", [(by, i) for i, by in marks])

    def acknowledge(self, alert_id: int, who: str, note: str, at: float) -> None:
        with self._tx() as tx:
            tx.execute("UPDATE alerts SET acked_at = ?, acked_by = ?, ack_note = ? WHERE id = ?",
                       (at, who, note, alert_id))

    # -- silences and maintenance windows -------------------------------------------------------------
    def add_silence(self, box_id: str, site: str, kind: str, starts_at: float, ends_at: float, who: str,
                    reason: str, at: float) -> Silence:
        with self._tx() as tx:
            rows = tx.execute("INSERT INTO alert_silences (box_id, site, kind, starts_at, ends_at, created_by, reason, "
                              "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                              (box_id, site, kind, starts_at, ends_at, who, reason, at))
        return Silence(int(rows[0]["id"]), box_id, site, kind, starts_at, ends_at, who, reason, at)

    def expire_silence(self, silence_id: int, at: float) -> Silence | None:
        """End a silence now (if it would end later); the silence as stored after, None if unknown."""
        with self._tx() as tx:
            tx.execute("UPDATE alert_silences SET ends_at = CASE WHEN ends_at > ? THEN ? ELSE ends_at END "
                       "WHERE id = ?", (at, at, silence_id))
            rows = tx.execute("SELECT * FROM alert_silences WHERE id = ?", (silence_id,))
        return _silence(rows[0]) if rows else None

    def silences(self, *, active_at: float | None = None) -> list[Silence]:
        if active_at is None:
            return [_silence(r) for r in self._read("SELECT * FROM alert_silences ORDER BY id")]
        return [_silence(r) for r in self._read(
            "SELECT * FROM alert_silences WHERE starts_at <= ? AND ends_at > ? ORDER BY id", (active_at, active_at))]

    def add_maintenance(self, site: str, box_id: str, starts_at: float, ends_at: float, who: str, reason: str,
                        at: float) -> Maintenance:
        with self._tx() as tx:
            rows = tx.execute("INSERT INTO maintenance_windows (site, box_id, starts_at, ends_at, created_by, reason, "
                              "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                              (site, box_id, starts_at, ends_at, who, reason, at))
        return Maintenance(int(rows[0]["id"]), site, box_id, starts_at, ends_at, who, reason, at)

    def end_maintenance(self, window_id: int, at: float) -> Maintenance | None:
        """End a window now (if it would end later); the window as stored after, None if unknown."""
        with self._tx() as tx:
            tx.execute("UPDATE maintenance_windows SET ends_at = CASE WHEN ends_at > ? THEN ? ELSE ends_at END "
                       "WHERE id = ?", (at, at, window_id))
            rows = tx.execute("SELECT * FROM maintenance_windows WHERE id = ?", (window_id,))
        return _maintenance(rows[0]) if rows else None

    def maintenance_windows(self, *, active_at: float | None = None) -> list[Maintenance]:
        if active_at is None:
            return [_maintenance(r) for r in self._read("SELECT * FROM maintenance_windows ORDER BY id")]
        return [_maintenance(r) for r in self._read(
            "SELECT * FROM maintenance_windows WHERE starts_at <= ? AND ends_at > ? ORDER BY id",
            (active_at, active_at))]

    def prune(self, before: float) -> None:
        with self._tx() as tx:
            tx.execute("DELETE FROM health_samples WHERE at < ?", (before,))
            tx.execute("DELETE FROM alerts WHERE cleared_at IS NOT NULL AND cleared_at < ?", (before,))
            tx.execute("DELETE FROM alert_silences WHERE ends_at < ?", (before,))
            tx.execute("DELETE FROM maintenance_windows WHERE ends_at < ?", (before,))
            tx.execute("DELETE FROM dead_letters WHERE at < ?", (before,))

    # -- dead letters ---------------------------------------------------------------------------------
    def add_dead_letters(self, letters: Sequence[DeadLetter], keep_per_box: int, keep_total: int) -> None:
        """Record letters, then keep only the newest ``keep_per_box`` of each box and ``keep_total`` in all."""
        if not letters:
            return
        with self._tx() as tx:
            tx.executemany("INSERT INTO dead_letters (box_id, topic, reason, detail, at, bytes, messages, service) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(d.box_id, d.topic, d.reason, d.detail, d.at, d.bytes, d.messages, d.service)
                            for d in letters])
            for box_id in sorted({d.box_id for d in letters}):
                tx.execute("DELETE FROM dead_letters WHERE box_id = ? AND id NOT IN (SELECT id FROM dead_letters "
                           "WHERE box_id = ? ORDER BY id DESC LIMIT ?)", (box_id, box_id, keep_per_box))
            tx.execute("DELETE FROM dead_letters WHERE id NOT IN (SELECT id FROM dead_letters ORDER BY id DESC "
                       "LIMIT ?)", (keep_total,))

    def dead_letters(self, *, box_id: str | None = None, since: float = 0.0, limit: int = 1000) -> list[DeadLetter]:
        sql = "SELECT * FROM dead_letters WHERE at >= ?"
        params: list[Any] = [since]
        if box_id is not None:
            sql, params = sql + " AND box_id = ?", [*params, box_id]
        return [_dead_letter(r) for r in self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))]

    def dead_letter_summary(self, since: float) -> list[DeadLetter]:
        """Per box since ``since``: messages summed, and the latest letter's reason, detail and time."""
        rows = self._read(
            "SELECT d.*, s.total FROM dead_letters d JOIN (SELECT box_id, MAX(id) AS last, SUM(messages) AS total "
            "FROM dead_letters WHERE at >= ? GROUP BY box_id) s ON d.id = s.last ORDER BY d.box_id", (since,))
        return [replace(_dead_letter(r), messages=int(r["total"])) for r in rows]

    # -- the leader lease (several fleet instances on one database) --------------------------------------
    def take_lease(self, holder: str, now: float, lease_s: float) -> Lease:
        """Take or renew the leader lease for ``lease_s`` if ``holder`` holds it or it has expired;
        the lease as it stands after, in one transaction (a conditional UPDATE: of two instances
        asking at once, one gets it)."""
        with self._tx() as tx:
            tx.execute("UPDATE fleet_leases SET term = CASE WHEN holder = ? THEN term ELSE term + 1 END, "
                       "holder = ?, expires_at = ? WHERE name = 'leader' AND (holder = ? OR expires_at <= ?)",
                       (holder, holder, now + lease_s, holder, now))
            rows = tx.execute("SELECT holder, expires_at, term FROM fleet_leases WHERE name = 'leader'")
        return Lease(rows[0]["holder"], float(rows[0]["expires_at"]), int(rows[0]["term"]))

    def release_lease(self, holder: str) -> None:
        """Give the lease up now (a clean stop), if ``holder`` holds it: another instance takes it at once."""
        with self._tx() as tx:
            tx.execute("UPDATE fleet_leases SET expires_at = 0 WHERE name = 'leader' AND holder = ?", (holder,))


def _alert(r: dict[str, Any]) -> Alert:
    last_seen = r["last_seen"] if r["last_seen"] is not None else r["raised_at"]
    parent = None if r["parent_id"] is None else int(r["parent_id"])
    return Alert(int(r["id"]), r["box_id"], AlertKind(r["kind"]), r["subject"], r["detail"], r["raised_at"],
                 r["cleared_at"], Severity(r["severity"]), r["site"], last_seen, parent, r["acked_at"], r["acked_by"],
                 r["ack_note"], r["suppressed_by"])


def _silence(r: dict[str, Any]) -> Silence:
    return Silence(int(r["id"]), r["box_id"], r["site"], r["kind"], r["starts_at"], r["ends_at"], r["created_by"],
                   r["reason"], r["created_at"])


def _maintenance(r: dict[str, Any]) -> Maintenance:
    return Maintenance(int(r["id"]), r["site"], r["box_id"], r["starts_at"], r["ends_at"], r["created_by"],
                       r["reason"], r["created_at"])


def _dead_letter(r: dict[str, Any]) -> DeadLetter:
    return DeadLetter(r["box_id"], r["topic"], r["reason"], r["detail"], r["at"], int(r["bytes"]),
                      int(r["messages"]), r["service"], int(r["id"]))
