"""The databases of a release, as fixtures: capture them, build them again, compare schemas.

``tests/fixtures/schemas/`` holds, for every database the product writes, its schema and a
few representative rows as the release before this one left them: SQLite files as
``<db>.sql`` (``iterdump`` plus ``PRAGMA user_version``), the PostgreSQL tables of the index,
staging and fleet store as ``postgres.sql`` (``pg_dump --inserts``).
``tests/test_schema_upgrade.py`` builds each database from its fixture, opens it with this
code, and checks that every row survived and the schema equals a freshly created one.

At a release, capture the release's databases for the next one to upgrade from (a deliberate
command; it writes rows through the product's own stores, so it follows their APIs):

    python -m tests.schemas --capture
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "schemas"
SQLITE_FIXTURES = ("spool", "utilisation", "archive", "fleet", "registry")
T0 = 1_700_000_000.0  # the rows' timestamps: fixed, so a capture is reproducible
_PG_NOISE = re.compile(r"^(--|\\|SET |SELECT pg_catalog\.set_config)")


# -- capture -----------------------------------------------------------------------------------------
def _fill_spool(path: Path) -> None:
    from gateway.adapters.commitment_store import CommitmentStore
    from gateway.adapters.store import SpoolStore
    from gateway.core.commitment import Reference

    store = SpoolStore(path)
    for n in range(1, 3):
        meta = {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": f"1.2.3.{n}",
                "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.0",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1", "calling_ae": "CT1", "size": 1000 * n,
                "sha256": f"{n:064x}"}
        store.add_received(meta, f"blob-{n}", T0 + n, priority=n)
        store.note_study("1.2.3", "CT1", n, T0 + n)
    store.close()
    commitments = CommitmentStore(path)
    commitments.add("1.2.9", "PACS", "127.0.0.1:104", [Reference("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1")], T0)
    commitments.close()


def _fill_utilisation(path: Path, spool: Path) -> None:
    from gateway.adapters.exam_store import ExamStore
    from gateway.core.exam import Exam, ExamStatus, TimeSource

    store = ExamStore(path, spool)
    exam = Exam("k" * 16, "CT", T0, T0 + 60, 2, 1, TimeSource.HEADER, ExamStatus.COMPLETED, T0 + 1, T0 + 2)
    store.save(exam, "1.2.3", closed=True)
    store.add_series("k" * 16, "s" * 16)
    store.mpps_put("1.2.4", "1.2.3", "k" * 16, ExamStatus.IN_PROGRESS, T0)
    store.next_counter("exams")
    store.close()


def _fill_index(index: Any) -> None:
    """Rows in ``instances``, ``transfers`` and ``forwards`` through the index API (either backend)."""
    index.upsert_transfer({"box_id": "box-1", "transfer_id": "ab" * 16, "state": "STAGING", "reason": 0,
                           "sha256": "", "sop_instance_uid": "", "chunks": 3, "updated_at": T0})
    index.upsert_transfer({"box_id": "box-1", "transfer_id": "cd" * 16, "state": "STORED", "reason": 0,
                           "sha256": "e" * 64, "sop_instance_uid": "1.2.3.1", "chunks": 2, "updated_at": T0})
    with index.transaction(lock_key="1.2.3.1"):
        index.insert_instance({
            "sop_instance_uid": "1.2.3.1", "sha256": "e" * 64, "study_instance_uid": "1.2.3",
            "series_instance_uid": "1.2.3.0", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "transfer_syntax": "1.2.840.10008.1.2.1", "size": 1000, "path": "1.2.3/1.2.3.0/1.2.3.1_eeee.mgwc",
            "box_id": "box-1", "transfer_id": "cd" * 16, "stored_at": T0})
        index.enqueue_forwards("1.2.3.1", "e" * 64, ("stow", "cstore"), T0)
    index.claim_forwards("stow", "worker-1", T0 + 1, 30.0, 10)


def _fill_fleet(store: Any) -> None:
    from gateway.cloud.fleet.store import DeadLetter
    from gateway.core.fleet import AlertKind, BoxState

    store.save_boxes([BoxState("box-1", True, 7, T0, T0 + 5, T0, {"backlog_items": 3}, "site-a", "1.0")])
    store.add_samples([{"box_id": "box-1", "at": T0, "online": 1, "backlog_items": 3, "backlog_bytes": 3000,
                        "oldest_age_s": 1.5, "disk_used_percent": 12.5, "cpu_temp_c": 40.0, "reconnects": 0}])
    store.upsert_exam({"box_id": "box-1", "study_key": "k" * 16, "revision": 1, "site": "site-a",
                       "modality": "CT", "start": T0, "end": T0 + 60, "images": 2, "series": 1,
                       "source": "acquisition", "status": "completed", "first_received_at": T0 + 1,
                       "last_received_at": T0 + 2, "cloud_stored_at": None})
    alert = store.raise_alert("box-1", AlertKind.BACKLOG_AGE, "backlog", "3 items", T0)
    store.raise_alert("box-1", AlertKind.DISK_FULL, "disk", "91 %", T0 + 1)
    store.clear_alert(alert.id, T0 + 2)
    store.add_dead_letters([DeadLetter("box-1", "mgw/v1/box-1/exam", "schema", "bad", T0, 12)], 100, 1000)


def _fill_registry(pki: Path) -> None:
    from gateway.cloud.authority.ca import FleetAuthority

    authority = FleetAuthority(pki, clock=lambda: T0)
    authority.create_token("box-1", "site-a", "CT", 3600)
    authority.issue_with_key("broker.example", 30, ["127.0.0.1"])
    authority.close()


def _dump_sqlite(path: Path, target: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        lines = [f"PRAGMA user_version={version};", *conn.iterdump()]
    finally:
        conn.close()
    target.write_text("\n".join(lines) + "\n")


def capture(work: Path) -> None:
    """Write every fixture from the databases this code creates."""
    from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
    from gateway.adapters.sqlite_index import SqliteIndex

    FIXTURES.mkdir(parents=True, exist_ok=True)
    _fill_spool(work / "spool.db")
    _fill_utilisation(work / "utilisation.db", work / "spool.db")
    index = SqliteIndex(work / "archive.db")
    _fill_index(index)
    index.close()
    fleet = SqliteFleetStore(work / "fleet.db")
    _fill_fleet(fleet)
    fleet.close()
    _fill_registry(work / "pki")
    for name, path in (("spool", "spool.db"), ("utilisation", "utilisation.db"), ("archive", "archive.db"),
                       ("fleet", "fleet.db"), ("registry", "pki/registry.db")):
        _dump_sqlite(work / path, FIXTURES / f"{name}.sql")
    _capture_postgres()


def _capture_postgres() -> None:
    from gateway.adapters.postgres_cluster import PostgresCluster
    from gateway.adapters.postgres_fleet_store import PostgresFleetStore
    from gateway.adapters.postgres_index import PostgresIndex
    from gateway.adapters.postgres_staging import PostgresStaging

    cluster = PostgresCluster()
    cluster.start()
    try:
        dsn = cluster.create_database("capture")
        index = PostgresIndex(dsn)
        _fill_index(index)
        index.close()
        staging = PostgresStaging(dsn)
        with staging.hold("box-1", "ab" * 16, T0) as held:
            held.put(0, b"\x00chunk-0")
            held.put(1, b"\x01chunk-1")
        staging.close()
        fleet = PostgresFleetStore(dsn)
        _fill_fleet(fleet)
        fleet.close()
        dump = subprocess.run(
            [str(cluster.bindir / "pg_dump"), "--inserts", "--no-owner", "--no-privileges", "--no-comments",
             "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "capture"],
            capture_output=True, text=True, check=True).stdout
    finally:
        cluster.stop()
    kept = [line for line in dump.splitlines() if line.strip() and not _PG_NOISE.match(line)]
    (FIXTURES / "postgres.sql").write_text("\n".join(kept) + "\n")


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", action="store_true", help="write tests/fixtures/schemas/ from this code")
    if parser.parse_args().capture:
        with tempfile.TemporaryDirectory() as tmp:
            capture(Path(tmp))
        print(f"wrote {sorted(p.name for p in FIXTURES.iterdir())}")
