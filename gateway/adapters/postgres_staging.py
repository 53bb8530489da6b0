"""Staging in PostgreSQL: any worker on any machine may stage or assemble any transfer.

Chunks are rows of ``staged_chunks`` (a frame is at most 128 KiB), committed
before ``put`` returns (autocommit, ``synchronous_commit`` on). A transfer is
held with a session advisory lock on a 64-bit hash of ``box/transfer``; a
worker that dies holding it loses its session, and the server frees the lock.
``staged_transfers.touched_at`` is the transfer's last activity. The tables are ``TABLES``,
created by ``PostgresIndex``'s migration step 1 (one database, one schema version). This is
the only SQL of staging: ``FileStaging``, the other backend, is files and locks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.adapters.postgres_db import PostgresDatabase
from gateway.cloud.ingest.staging import Forget, StagedTransfer

TABLES = """
CREATE TABLE staged_chunks (
    box_id TEXT NOT NULL, transfer_id TEXT NOT NULL, seq INTEGER NOT NULL, frame bytea NOT NULL,
    PRIMARY KEY (box_id, transfer_id, seq)
);
CREATE TABLE staged_transfers (
    box_id TEXT NOT NULL, transfer_id TEXT NOT NULL, touched_at {real} NOT NULL,
    PRIMARY KEY (box_id, transfer_id)
);
CREATE INDEX staged_transfers_touched ON staged_transfers (touched_at)
"""


_KEY = "box_id = ? AND transfer_id = ?"
_LOCK = "hashtextextended(?, 0)"  # a transfer's session advisory lock, on "<box>/<transfer>"


class _RowTransfer:
    def __init__(self, db: PostgresDatabase, box_id: str, transfer_hex: str) -> None:
        self._db, self._key = db, (box_id, transfer_hex)

    def put(self, seq: int, raw: bytes) -> bool:
        return bool(self._db.execute(
            "INSERT INTO staged_chunks (box_id, transfer_id, seq, frame) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING seq", (*self._key, seq, raw)))

    def seqs(self) -> set[int]:
        return {int(r["seq"]) for r in self._db.execute(f"SELECT seq FROM staged_chunks WHERE {_KEY}", self._key)}  # noqa: S608

    def read(self, seq: int) -> bytes:
        rows = self._db.execute(f"SELECT frame FROM staged_chunks WHERE {_KEY} AND seq = ?", (*self._key, seq))  # noqa: S608
        return bytes(rows[0]["frame"]) if rows else b""  # missing: fails to parse, dropped and re-sent

    def drop(self, seq: int) -> None:
        self._db.execute(f"DELETE FROM staged_chunks WHERE {_KEY} AND seq = ?", (*self._key, seq))  # noqa: S608

    def clear(self) -> None:
        with self._db.transaction() as tx:
            tx.execute(f"DELETE FROM staged_chunks WHERE {_KEY}", self._key)  # noqa: S608
            tx.execute(f"DELETE FROM staged_transfers WHERE {_KEY}", self._key)  # noqa: S608


class PostgresStaging:
    """One connection; one holder at a time (one per ``Ingest``, as ``Ingest`` is per thread)."""

    def __init__(self, dsn: str) -> None:
        self._db = PostgresDatabase(dsn, "staging")
        self.where = self._db.where

    def present(self, box_id: str, transfer_hex: str) -> bool:
        return bool(self._db.execute(f"SELECT 1 AS staged FROM staged_transfers WHERE {_KEY}",  # noqa: S608
                                     (box_id, transfer_hex)))

    @contextmanager
    def hold(self, box_id: str, transfer_hex: str, now: float) -> Iterator[StagedTransfer]:
        key = f"{box_id}/{transfer_hex}"
        self._db.execute(f"SELECT pg_advisory_lock({_LOCK})", (key,))
        try:
            self._db.execute(
                "INSERT INTO staged_transfers (box_id, transfer_id, touched_at) VALUES (?, ?, ?)"
                " ON CONFLICT (box_id, transfer_id) DO UPDATE SET touched_at = excluded.touched_at",
                (box_id, transfer_hex, now))
            yield _RowTransfer(self._db, box_id, transfer_hex)
        finally:
            if not self._db.closed:  # a lost session has already lost its lock
                self._db.execute(f"SELECT pg_advisory_unlock({_LOCK})", (key,))

    def expire(self, cutoff: float, forget: Forget) -> int:
        expired = 0
        for row in self._db.execute("SELECT box_id, transfer_id FROM staged_transfers WHERE touched_at < ?",
                                    (cutoff,)):
            box_id, transfer_hex = row["box_id"], row["transfer_id"]
            key = f"{box_id}/{transfer_hex}"
            if not self._db.execute(f"SELECT pg_try_advisory_lock({_LOCK}) AS ok", (key,))[0]["ok"]:
                continue  # busy: someone is staging it right now
            try:
                if self._db.execute(f"SELECT 1 AS idle FROM staged_transfers WHERE {_KEY} AND touched_at < ?",  # noqa: S608
                                    (box_id, transfer_hex, cutoff)):
                    forget(box_id, transfer_hex)
                    _RowTransfer(self._db, box_id, transfer_hex).clear()
                    expired += 1
            finally:
                self._db.execute(f"SELECT pg_advisory_unlock({_LOCK})", (key,))
        return expired

    def chunk_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) AS n FROM staged_chunks")[0]["n"])

    def transfer_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) AS n FROM (SELECT DISTINCT box_id, transfer_id "
                                    "FROM staged_chunks) t")[0]["n"])

    def usage(self, box_id: str) -> tuple[int, int]:
        row = self._db.execute(
            "SELECT COUNT(DISTINCT transfer_id) AS transfers, COALESCE(SUM(octet_length(frame)), 0) AS size "
            "FROM staged_chunks WHERE box_id = ?", (box_id,))[0]
        return int(row["transfers"]), int(row["size"])

    def close(self) -> None:
        self._db.close()
