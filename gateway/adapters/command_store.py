"""The box's record of remote commands: SQLite ``commands.db`` (docs/operations.md, "Remote operations").

A command is recorded here when the box accepts it, before it runs: its id, seq, kind and state,
in one ``BEGIN IMMEDIATE`` transaction that checks again that its seq is above every seq already
accepted, so two deliveries of one frame can never both be accepted and a replay never runs. The
row then keeps the command's last result (the ``schema.CommandResult`` JSON the box published),
which answers a redelivery of the same command (same id and seq) without running it again.

Nothing here is patient data: arguments are not stored (a Study Instance UID or a configuration
stays in the sealed frame), results carry no PHI by their contract. ``synchronous=FULL``: an
accepted command must survive a power cut, or its seq could be accepted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.sqlite_db import SqliteDatabase
from gateway.core.errors import StorageError

MIGRATIONS: list[str] = [
    """
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        accepted_at REAL NOT NULL,
        finished_at REAL,
        result BLOB,
        published INTEGER NOT NULL DEFAULT 0
    )
    """,
]
FINISHED = ("succeeded", "failed")


@dataclass(frozen=True)
class StoredCommand:
    id: str
    seq: int
    kind: str
    state: str  # received, running, succeeded, failed
    accepted_at: float
    result: bytes | None  # the last CommandResult published, as JSON


class AlreadyAccepted(StorageError):
    """The seq is not above the last accepted (a replay that raced the check)."""


class CommandStore:
    """One connection and lock; safe from the telemetry thread and the command worker alike."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteDatabase(path, "command database", synchronous="FULL")
        self._db.apply_migrations(MIGRATIONS, newer_ok=True)

    def close(self) -> None:
        self._db.close()

    def last_seq(self) -> int:
        return int(self._db.rows("SELECT coalesce(max(seq), 0) FROM commands")[0][0])

    def get(self, command_id: str) -> StoredCommand | None:
        rows = self._db.rows("SELECT id, seq, kind, state, accepted_at, result FROM commands WHERE id = ?",
                             (command_id,))
        return None if not rows else _stored(rows[0])

    def accept(self, command_id: str, seq: int, kind: str, now: float) -> None:
        """Record a command as received; ``AlreadyAccepted`` if its seq is not above the last."""
        with self._db.tx() as conn:
            last = int(conn.execute("SELECT coalesce(max(seq), 0) FROM commands").fetchone()[0])
            if seq <= last:
                raise AlreadyAccepted(f"seq {seq} is not above {last}, the last accepted")
            conn.execute("INSERT INTO commands (id, seq, kind, state, accepted_at) VALUES (?, ?, ?, 'received', ?)",
                         (command_id, seq, kind, now))

    def record(self, command_id: str, state: str, result: bytes, now: float) -> None:
        """The command's new state and the result published for it."""
        finished = now if state in FINISHED else None
        with self._db.tx() as conn:
            conn.execute("UPDATE commands SET state = ?, result = ?, published = 0, "
                         "finished_at = coalesce(?, finished_at) WHERE id = ?", (state, result, finished, command_id))

    def mark_published(self, command_id: str, result: bytes) -> None:
        """The result ``result`` reached the broker (a later state recorded since stays unpublished)."""
        with self._db.tx() as conn:
            conn.execute("UPDATE commands SET published = 1 WHERE id = ? AND result = ?", (command_id, result))

    def unpublished(self) -> list[StoredCommand]:
        """Finished commands whose last result never reached the broker (the edge stopped first)."""
        rows = self._db.rows("SELECT id, seq, kind, state, accepted_at, result FROM commands "
                             "WHERE published = 0 AND state IN ('succeeded', 'failed') ORDER BY seq")
        return [_stored(r) for r in rows]

    def unfinished(self) -> list[StoredCommand]:
        """Commands accepted but not finished (the edge stopped while one was waiting or running)."""
        rows = self._db.rows("SELECT id, seq, kind, state, accepted_at, result FROM commands "
                             "WHERE state NOT IN ('succeeded', 'failed') ORDER BY seq")
        return [_stored(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self._db.rows("SELECT state, count(*) FROM commands GROUP BY state")}


def _stored(row: Sequence[Any]) -> StoredCommand:
    r = tuple(row)
    return StoredCommand(str(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]), None if r[5] is None else bytes(r[5]))
