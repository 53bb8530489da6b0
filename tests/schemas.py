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
    from gateway.core.instance import InstanceIdentity

    store = SpoolStore(path)
    for n in range(1, 3):
        identity = InstanceIdentity(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=f"1.2.3.{n}", study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.0", transfer_syntax_uid="1.2.840.10008.1.2.1", size=1000 * n,
            sha256=f"{n:064x}")
        store.add_received(identity, "CT1", f"blob-{n}", T0 + n, priority=n)
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


# -- build and compare -------------------------------------------------------------------------------
def build_sqlite(name: str, path: Path) -> None:
    """The SQLite database of fixture ``name`` at ``path``, as the previous release left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript((FIXTURES / f"{name}.sql").read_text())
    finally:
        conn.close()


def _affinity(declared: str) -> str:
    """SQLite's column affinity of a declared type: all that the declared type decides."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if any(k in t for k in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not t or "BLOB" in t:
        return "BLOB"
    if any(k in t for k in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _default(text: str | None) -> object:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def sqlite_schema(path: Path) -> dict[str, Any]:
    """What a SQLite file's schema means: per table, each column's affinity, NOT NULL, default and
    primary-key position, and each index as its columns and uniqueness. Declared type names and
    index names are left out: SQLite acts on neither (the archive index of the release before
    the shared schema carries sqlite-utils' ``idx_...`` names)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        schema: dict[str, Any] = {}
        for table in tables:
            columns = [(c[1], _affinity(c[2]), c[3], _default(c[4]), c[5])
                       for c in conn.execute(f"PRAGMA table_info({table})")]
            indexes = sorted(
                (tuple(i[2] for i in conn.execute(f"PRAGMA index_info({ix[1]})")), bool(ix[2]))
                for ix in conn.execute(f"PRAGMA index_list({table})") if ix[3] != "pk")
            schema[table] = {"columns": columns, "indexes": indexes}
        schema["user_version"] = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    return schema


def sqlite_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in tables}  # noqa: S608
    finally:
        conn.close()


def build_postgres(dsn: str) -> None:
    """The PostgreSQL tables of the fixture in the (empty) database of ``dsn``."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((FIXTURES / "postgres.sql").read_text().encode())


_PG_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position
"""
_PG_INDEXES = """
SELECT t.relname AS table_name, c.relname AS index_name, i.indisunique, i.indisprimary,
       array_agg(a.attname ORDER BY k.n) AS columns
FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace ns ON ns.oid = t.relnamespace
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE ns.nspname = 'public' GROUP BY t.relname, c.relname, i.indisunique, i.indisprimary ORDER BY 1, 2
"""


def postgres_schema(dsn: str) -> dict[str, Any]:
    """Every column (type, nullability, default, identity) and index (name, columns, unique,
    primary) of the public schema, exactly as PostgreSQL reports them."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {"columns": conn.execute(_PG_COLUMNS).fetchall(), "indexes": conn.execute(_PG_INDEXES).fetchall()}


def postgres_rows(dsn: str) -> dict[str, list[dict[str, Any]]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        tables = [r["tablename"] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {t: sorted((dict(r) for r in conn.execute(f"SELECT * FROM {t}")), key=repr)  # noqa: S608
                for t in tables}


def survived(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Rows of ``before`` missing from ``after``, each compared on the columns it had (a later
    migration may add columns, never lose a row or change a value)."""
    lost = []
    for table, rows in before.items():
        for row in rows:
            if not any(all(new.get(k, object()) == v for k, v in row.items()) for new in after.get(table, [])):
                lost.append(f"{table}: {row}")
    return lost


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", action="store_true", help="write tests/fixtures/schemas/ from this code")
    if parser.parse_args().capture:
        with tempfile.TemporaryDirectory() as tmp:
            capture(Path(tmp))
        print(f"wrote {sorted(p.name for p in FIXTURES.iterdir())}")
