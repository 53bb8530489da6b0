"""Reconciliation after a run: what the modality was told against what the cloud holds."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.core.part10 import dataset_offset
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
    db = d.cloud_dir / "archive.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [(sha, path) for sha, path in conn.execute("SELECT sha256, path FROM instances")]


def acknowledged_count(d: LoopbackDeployment) -> int:
    db = d.edge_dir / "spool.db"
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


def reconcile(d: LoopbackDeployment, sent: list[Path]) -> Reconciliation:
    """Every sent file must be archived once, with the modality's dataset bytes exactly."""
    rows = archive_rows(d)
    archive_root = d.cloud_dir / "archive"
    datasets: dict[bytes, int] = {}
    corrupt = 0
    for sha, rel in rows:
        data = (archive_root / rel).read_bytes() if not Path(rel).is_absolute() else Path(rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            corrupt += 1
            continue
        key = hashlib.sha256(data[dataset_offset(data):]).digest()
        datasets[key] = datasets.get(key, 0) + 1
    matched = lost = duplicated = 0
    for f in sent:
        data = f.read_bytes()
        n = datasets.get(hashlib.sha256(data[dataset_offset(data):]).digest(), 0)
        matched += n >= 1
        lost += n == 0
        duplicated += max(0, n - 1)
    return Reconciliation(len(sent), len(rows), matched, lost, corrupt, duplicated)
