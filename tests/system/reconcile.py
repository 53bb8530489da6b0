"""Reconciliation after a run: what the modality was told against what the cloud holds."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from gateway.cloud.archive.store import KEY_FILE, original_sha256
from gateway.loopback import LoopbackDeployment


@dataclass(frozen=True)
class Reconciliation:
    sent: int
    archived_rows: int
    matched: int
    lost: int
    corrupt: int
    duplicated: int

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.corrupt == 0 and self.duplicated == 0 and self.matched == self.sent


def archive_rows(d: LoopbackDeployment) -> list[tuple[str, str]]:
    if d.index_dsn:
        import psycopg

        with psycopg.connect(d.index_dsn) as conn:
            return [(sha, path) for sha, path in conn.execute("SELECT sha256, path FROM instances")]
    db = d.cloud_dir / "archive.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [(sha, path) for sha, path in conn.execute("SELECT sha256, path FROM instances")]


def frame_sizes(d: LoopbackDeployment) -> list[int]:
    """The chunk frame size each edge item was packed with."""
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        return [int(n) for (n,) in conn.execute("SELECT frame_bytes FROM items WHERE frame_bytes IS NOT NULL")]


def forward_states(d: LoopbackDeployment) -> dict[str, int]:
    """PACS forward queue entries per state (SQLite index)."""
    db = d.cloud_dir / "archive.db"
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            return dict(conn.execute("SELECT state, COUNT(*) FROM forwards GROUP BY state").fetchall())
        except sqlite3.OperationalError:  # not migrated yet
            return {}


def staged_chunks(d: LoopbackDeployment) -> int:
    """Chunks staged in the cloud right now (shared staging: files, or PostgreSQL rows)."""
    if d.index_dsn:
        import psycopg

        with psycopg.connect(d.index_dsn) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM staged_chunks").fetchone()[0])
    staging = d.cloud_dir / "staging"
    return sum(1 for _ in staging.rglob("*.chunk")) if staging.exists() else 0


def acknowledged_count(d: LoopbackDeployment, edge_dir: Path | None = None) -> int:
    db = (edge_dir or d.edge_dir) / "spool.db"
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM items WHERE state IN ('acknowledged', 'purged')").fetchone()
    return int(row[0])


def state_count(d: LoopbackDeployment, state: str) -> int:
    db = d.edge_dir / "spool.db"
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM items WHERE state = ?", (state,)).fetchone()[0])


def edge_items(d: LoopbackDeployment, edge_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """``(sop_instance_uid, transfer_syntax_uid, sha256)`` of every instance the edge answered success for."""
    with sqlite3.connect(f"file:{(edge_dir or d.edge_dir) / 'spool.db'}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT sop_instance_uid, transfer_syntax_uid, sha256 FROM items"))


def reconcile(d: LoopbackDeployment, sent: list[Path], edge_dir: Path | None = None) -> Reconciliation:
    """Every instance the modality was told "stored" is in the archive once, byte-identical.

    The reference is the SHA-256 the edge computed over the bytes it received
    before answering 0x0000 (DCMTK storescu may re-encode a file on the way, so
    the sender's file is not); each sent file must map to one such instance.
    ``edge_dir``: another box of the deployment (default: its own edge).
    """
    items = edge_items(d, edge_dir)
    rows = archive_rows(d)
    by_sha: dict[str, int] = {}
    corrupt = 0
    for sha, rel in rows:
        if original_sha256(d.cloud_dir / "archive" / rel, d.cloud_dir / KEY_FILE) != sha:  # decrypted in memory
            corrupt += 1
        by_sha[sha] = by_sha.get(sha, 0) + 1
    received = {(uid, ts): sha for uid, ts, sha in items}
    matched = duplicated = 0
    lost = sum(1 for _, _, sha in items if sha not in by_sha)  # told "stored", not in the cloud
    for f in sent:
        meta = dcmread(f, stop_before_pixels=True)
        sha = received.get((str(meta.SOPInstanceUID), str(meta.file_meta.TransferSyntaxUID)))
        n = by_sha.get(sha, 0) if sha else 0
        matched += n == 1
        lost += sha is None  # never reached the edge at all
        duplicated += max(0, n - 1)
    return Reconciliation(len(sent), len(rows), matched, lost, corrupt, duplicated)
