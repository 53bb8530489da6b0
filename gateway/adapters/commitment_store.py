"""Pending Storage Commitment requests, persisted in the edge spool database.

The table is part of the spool database's schema (``store.MIGRATIONS``): whichever of
``SpoolStore`` and ``CommitmentStore`` opens the file first migrates it. This module keeps its
own ``SqliteDatabase`` (WAL lets it read while the spool writes) so that the commitment
reporter thread never waits on the spool's lock. Each method is one transaction; SQLite's
errors become StorageError there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters import store as spool_store
from gateway.adapters.sqlite_db import Connection, SqliteDatabase
from gateway.core.commitment import CommitmentState, Reference, SpooledCopy
from gateway.core.spool import ItemState

_COLUMNS = ("id, transaction_uid, calling_ae, peer_address, refs, requested_at, state, attempts, next_attempt_at,"
            " reported_at, last_error")
_IN_BATCH = 500  # bound parameters per IN (...) query


@dataclass(frozen=True)
class PendingCommitment:
    id: int
    transaction_uid: str
    calling_ae: str
    peer_address: str
    refs: tuple[Reference, ...]
    requested_at: float
    state: CommitmentState
    attempts: int
    next_attempt_at: float
    reported_at: float | None
    last_error: str | None


class CommitmentStore:
    def __init__(self, db_path: Path) -> None:
        self.path = db_path
        self._database = SqliteDatabase(db_path, "spool database", synchronous="FULL")
        spool_store.migrate_spool(self._database)  # as SpoolStore: backup first, whoever opens first

    def _tx(self) -> AbstractContextManager[Connection]:
        return self._database.tx()

    def add(self, transaction_uid: str, calling_ae: str, peer_address: str, refs: Sequence[Reference],
            now: float) -> int:
        """Persist a request (committed before the N-ACTION is answered). A repeated request
        (same calling AE and Transaction UID) that is still pending is not added twice."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id FROM commitments WHERE calling_ae = ? AND transaction_uid = ? AND state = ?",
                (calling_ae, transaction_uid, CommitmentState.PENDING.value)).fetchone()
            if row is not None:
                return int(row[0])
            cur = conn.execute(
                "INSERT INTO commitments (transaction_uid, calling_ae, peer_address, refs, requested_at, state,"
                " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (transaction_uid, calling_ae, peer_address,
                 json.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in refs]), now,
                 CommitmentState.PENDING.value, now))
            return int(cur.lastrowid or 0)

    def due(self, now: float, limit: int = 50) -> list[PendingCommitment]:
        return self._select("WHERE state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                            (CommitmentState.PENDING.value, now, limit))

    def all(self, limit: int = 10_000) -> list[PendingCommitment]:
        return self._select("ORDER BY id LIMIT ?", (limit,))

    def _select(self, where: str, params: tuple[object, ...]) -> list[PendingCommitment]:
        rows = self._database.rows(f"SELECT {_COLUMNS} FROM commitments {where}", params)  # noqa: S608 - fixed SQL
        return [PendingCommitment(
            id=r[0], transaction_uid=r[1], calling_ae=r[2], peer_address=r[3],
            refs=tuple(Reference(c, i) for c, i in json.loads(r[4])), requested_at=r[5],
            state=CommitmentState(r[6]), attempts=r[7], next_attempt_at=r[8], reported_at=r[9],
            last_error=r[10]) for r in rows]

    def copies(self, sop_instance_uids: Sequence[str]) -> dict[str, list[SpooledCopy]]:
        """Every spool item holding one of ``sop_instance_uids``."""
        out: dict[str, list[SpooledCopy]] = {}
        uids = sorted(set(sop_instance_uids))
        for start in range(0, len(uids), _IN_BATCH):
            batch = uids[start:start + _IN_BATCH]
            marks = ", ".join("?" for _ in batch)
            sql = f"SELECT sop_instance_uid, sop_class_uid, state FROM items WHERE sop_instance_uid IN ({marks})"  # noqa: S608 - marks only
            for uid, sop_class, state in self._database.rows(sql, batch):
                out.setdefault(uid, []).append(SpooledCopy(sop_class, ItemState(state)))
        return out

    def reported(self, commitment_id: int, committed: int, failed: int, now: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE commitments SET state = ?, reported_at = ?, committed_count = ?, failed_count = ?,"
                " attempts = attempts + 1, last_error = NULL WHERE id = ?",
                (CommitmentState.REPORTED.value, now, committed, failed, commitment_id))

    def delivery_failed(self, commitment_id: int, state: CommitmentState, next_attempt_at: float,
                        error: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE commitments SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?", (state.value, next_attempt_at, error[:500], commitment_id))

    def postpone(self, commitment_id: int, next_attempt_at: float) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE commitments SET next_attempt_at = ? WHERE id = ?", (next_attempt_at, commitment_id))

    def counts(self) -> dict[str, int]:
        rows = self._database.rows("SELECT state, COUNT(*) FROM commitments GROUP BY state")
        return {state: int(n) for state, n in rows}

    def close(self) -> None:
        self._database.close()
