"""Staging in PostgreSQL: any worker on any machine may stage or assemble any transfer.

Chunks are rows of ``staged_chunks`` (a frame is at most 128 KiB), committed
before ``put`` returns (autocommit, ``synchronous_commit`` on). A transfer is
held with a session advisory lock on a 64-bit hash of ``box/transfer``; a
worker that dies holding it loses its session, and the server frees the lock.
``staged_transfers.touched_at`` is the transfer's last activity. The tables are
created by ``PostgresIndex``'s migrations (one schema, one version).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from gateway.adapters.postgres_index import connect, database_name
from gateway.cloud.ingest.staging import Forget, StagedTransfer
from gateway.core.errors import StorageError


class _RowTransfer:
    def __init__(self, conn: psycopg.Connection[Any], box_id: str, transfer_hex: str) -> None:
        self._conn, self._key = conn, (box_id, transfer_hex)

    def put(self, seq: int, raw: bytes) -> bool:
        cur = self._conn.execute(
            "INSERT INTO staged_chunks (box_id, transfer_id, seq, frame) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING", [*self._key, seq, raw])
        return cur.rowcount == 1

    def seqs(self) -> set[int]:
        rows = self._conn.execute("SELECT seq FROM staged_chunks WHERE box_id = %s AND transfer_id = %s",
                                  list(self._key)).fetchall()
        return {int(r["seq"]) for r in rows}

    def read(self, seq: int) -> bytes:
        row = self._conn.execute(
            "SELECT frame FROM staged_chunks WHERE box_id = %s AND transfer_id = %s AND seq = %s",
            [*self._key, seq]).fetchone()
        return bytes(row["frame"]) if row else b""  # missing: fails to parse, dropped and re-sent

    def drop(self, seq: int) -> None:
        self._conn.execute("DELETE FROM staged_chunks WHERE box_id = %s AND transfer_id = %s AND seq = %s",
                           [*self._key, seq])

    def clear(self) -> None:
        with self._conn.transaction():
            self._conn.execute("DELETE FROM staged_chunks WHERE box_id = %s AND transfer_id = %s", list(self._key))
            self._conn.execute("DELETE FROM staged_transfers WHERE box_id = %s AND transfer_id = %s",
                               list(self._key))


class PostgresStaging:
    """One connection; one holder at a time (one per ``Ingest``, as ``Ingest`` is per thread)."""

    def __init__(self, dsn: str) -> None:
        self.where = database_name(dsn)
        self._conn = connect(dsn, f"staging {self.where}")

    @contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise StorageError(f"staging {self.where}: {what}: {exc}") from exc

    def present(self, box_id: str, transfer_hex: str) -> bool:
        with self._guarded("lookup"):
            return self._conn.execute(
                "SELECT 1 FROM staged_transfers WHERE box_id = %s AND transfer_id = %s",
                [box_id, transfer_hex]).fetchone() is not None

    @contextmanager
    def hold(self, box_id: str, transfer_hex: str, now: float) -> Iterator[StagedTransfer]:
        key = f"{box_id}/{transfer_hex}"
        with self._guarded("hold"):
            self._conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
        try:
            with self._guarded("stage"):
                self._conn.execute(
                    "INSERT INTO staged_transfers (box_id, transfer_id, touched_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (box_id, transfer_id) DO UPDATE SET touched_at = excluded.touched_at",
                    [box_id, transfer_hex, now])
                yield _RowTransfer(self._conn, box_id, transfer_hex)
        finally:
            with self._guarded("release"):
                if not self._conn.closed:
                    self._conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])

    def expire(self, cutoff: float, forget: Forget) -> int:
        expired = 0
        with self._guarded("expire"):
            idle = self._conn.execute("SELECT box_id, transfer_id FROM staged_transfers WHERE touched_at < %s",
                                      [cutoff]).fetchall()
            for row in idle:
                box_id, transfer_hex = row["box_id"], row["transfer_id"]
                key = f"{box_id}/{transfer_hex}"
                got = self._conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS ok",
                                         [key]).fetchone()
                if not got or not got["ok"]:
                    continue  # busy: someone is staging it right now
                try:
                    still = self._conn.execute(
                        "SELECT 1 FROM staged_transfers WHERE box_id = %s AND transfer_id = %s AND touched_at < %s",
                        [box_id, transfer_hex, cutoff]).fetchone()
                    if still:
                        forget(box_id, transfer_hex)
                        _RowTransfer(self._conn, box_id, transfer_hex).clear()
                        expired += 1
                finally:
                    self._conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
        return expired

    def chunk_count(self) -> int:
        with self._guarded("count"):
            row = self._conn.execute("SELECT COUNT(*) AS n FROM staged_chunks").fetchone()
            return int(row["n"]) if row else 0

    def usage(self, box_id: str) -> tuple[int, int]:
        with self._guarded("usage"):
            row = self._conn.execute(
                "SELECT COUNT(DISTINCT transfer_id) AS transfers, COALESCE(SUM(octet_length(frame)), 0) AS size "
                "FROM staged_chunks WHERE box_id = %s", [box_id]).fetchone()
        assert row is not None
        return int(row["transfers"]), int(row["size"])

    def close(self) -> None:
        with self._guarded("close"):
            self._conn.close()
