"""Every database upgrades from the schema of the previous release (tests/fixtures/schemas/).

Each test builds one database from its fixture (the schema and a few rows as the previous
release left them), opens it with this code, and checks that every row survived, that the
stores read it, and that its schema is the one a new database gets (the migrations from
that release lead where a fresh install does). PostgreSQL runs on the real server of
tests/conftest.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.commitment_store import CommitmentStore
from gateway.adapters.exam_store import ExamStore
from gateway.adapters.postgres_cluster import PostgresCluster
from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.adapters.store import MIGRATIONS as SPOOL_MIGRATIONS
from gateway.adapters.store import SpoolStore
from gateway.cloud.archive.index import MIGRATIONS as INDEX_MIGRATIONS
from gateway.cloud.authority.ca import MIGRATIONS as REGISTRY_MIGRATIONS
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.fleet.store import MIGRATIONS as FLEET_MIGRATIONS
from gateway.core.errors import StorageError
from tests import schemas

SHA = "e" * 64


def _spool(path: Path) -> None:
    store = SpoolStore(path)
    commitments = CommitmentStore(path)
    try:
        assert store.schema_version == len(SPOOL_MIGRATIONS)
        item = store.get(1)
        assert item is not None
        assert (item.identity.sop_instance_uid, item.identity.size, item.priority) == ("1.2.3.1", 1000, 1)
        assert [c.transaction_uid for c in commitments.all()] == ["1.2.9"]
        assert store.counts()["received"]["bytes"] == 3000
    finally:
        commitments.close()
        store.close()


def _utilisation(path: Path) -> None:
    store = ExamStore(path, path.with_name("spool.db"))
    try:
        stored = store.get("k" * 16)
        assert stored is not None and (stored.study_uid, stored.exam.images, stored.closed) == ("1.2.3", 2, True)
        assert store.mpps_get("1.2.4") is not None
        assert store.last_study_per_modality() == {"CT": schemas.T0 + 2}
    finally:
        store.close()


def _archive(path: Path) -> None:
    index = SqliteIndex(path)
    try:
        assert index.schema_version() == len(INDEX_MIGRATIONS)
        instance = index.get_instance("1.2.3.1", SHA)
        assert instance is not None and instance["size"] == 1000
        assert instance["accession_hmac"] == ""  # archived before accession digests: none
        assert index.forward_counts() == {"stow:SENDING": 1, "cstore:PENDING": 1}
        assert index.path_taken("1.2.3/1.2.3.0/1.2.3.1_eeee.mgwc")
    finally:
        index.close()


def _fleet(path: Path) -> None:
    store = SqliteFleetStore(path)
    try:
        assert store.schema_version() == len(FLEET_MIGRATIONS)
        assert [(b.box_id, b.bd_seq) for b in store.load_boxes()] == [("box-1", 7)]
        assert [a.subject for a in store.alerts(open_only=True)] == ["disk"]
        assert [d.detail for d in store.dead_letters()] == ["bad"]
    finally:
        store.close()


def _registry(path: Path) -> None:
    authority = FleetAuthority(path.parent, clock=lambda: schemas.T0)
    try:
        assert schemas.sqlite_schema(path)["user_version"] == len(REGISTRY_MIGRATIONS)
        assert [r.subject for r in authority.records()] == ["broker.example"]
    finally:
        authority.close()


OPENERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "spool": ("spool.db", _spool),
    "utilisation": ("utilisation.db", _utilisation),
    "archive": ("archive.db", _archive),
    "fleet": ("fleet.db", _fleet),
    "registry": ("pki/registry.db", _registry),
}


def test_every_sqlite_fixture_has_an_upgrade_test_when_listed() -> None:
    fixtures = {p.stem for p in schemas.FIXTURES.glob("*.sql")} - {"postgres"}
    assert fixtures == set(OPENERS) == set(schemas.SQLITE_FIXTURES)


@pytest.mark.parametrize("name", sorted(OPENERS))
def test_sqlite_database_keeps_its_rows_and_gets_the_current_schema_when_opened_by_this_release(
        name: str, tmp_path: Path) -> None:
    relpath, open_and_check = OPENERS[name]
    old = tmp_path / "old" / relpath
    schemas.build_sqlite(name, old)
    before = schemas.sqlite_rows(old)
    assert any(before.values()), "the fixture holds rows to carry over"

    open_and_check(old)
    new = tmp_path / "new" / relpath
    create = {"spool": lambda p: (SpoolStore(p).close(), CommitmentStore(p).close()),
                            "utilisation": lambda p: ExamStore(p, p.with_name("spool.db")).close(),
                            "archive": lambda p: SqliteIndex(p).close(),
                            "fleet": lambda p: SqliteFleetStore(p).close(),
                            "registry": lambda p: FleetAuthority(p.parent).close()}[name]
    create(new)

    assert schemas.survived(before, schemas.sqlite_rows(old)) == []
    assert schemas.sqlite_schema(old) == schemas.sqlite_schema(new)


def test_spool_opens_unchanged_when_a_newer_release_migrated_it_and_the_update_rolled_back(
        tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    schemas.build_sqlite("spool", path)
    with sqlite3.connect(path) as conn:  # what the newer slot's additive migration left
        conn.execute("ALTER TABLE items ADD COLUMN later_note TEXT")
        conn.execute(f"PRAGMA user_version = {len(SPOOL_MIGRATIONS) + 1}")

    store, commitments = SpoolStore(path), CommitmentStore(path)
    try:
        assert store.schema_version == len(SPOOL_MIGRATIONS) + 1
        assert [i.identity.sop_instance_uid for i in store.by_sop_instance("1.2.3.2")] == ["1.2.3.2"]
        assert len(commitments.all()) == 1
    finally:
        commitments.close()
        store.close()


def test_cloud_database_is_refused_when_its_schema_is_newer_than_this_release(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    schemas.build_sqlite("fleet", path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(FLEET_MIGRATIONS) + 1}")
    with pytest.raises(StorageError, match="newer than this software"):
        SqliteFleetStore(path)


def _without_versions(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {t: r for t, r in rows.items() if not t.endswith("schema_version")}


def test_postgres_tables_keep_their_rows_and_get_the_current_schema_when_opened_by_this_release(
        pg_cluster: PostgresCluster) -> None:
    from gateway.adapters.postgres_fleet_store import PostgresFleetStore
    from gateway.adapters.postgres_index import PostgresIndex
    from gateway.adapters.postgres_staging import PostgresStaging

    old = pg_cluster.create_database("upgrade_old")
    schemas.build_postgres(old)
    before = _without_versions(schemas.postgres_rows(old))
    assert before["instances"] and before["staged_chunks"] and before["alerts"]

    index, staging, fleet = PostgresIndex(old), PostgresStaging(old), PostgresFleetStore(old)
    try:
        assert index.schema_version() == len(INDEX_MIGRATIONS)
        assert fleet.schema_version() == len(FLEET_MIGRATIONS)
        assert index.forward_counts() == {"stow:SENDING": 1, "cstore:PENDING": 1}
        assert {r["accession_hmac"] for r in index.list_instances()} == {""}  # old rows have none
        assert staging.present("box-1", "ab" * 16) and staging.usage("box-1")[0] == 1
        with staging.hold("box-1", "ab" * 16, schemas.T0) as held:
            assert held.seqs() == {0, 1} and held.read(1) == b"\x01chunk-1"
        assert fleet.raise_alert("box-1", fleet.alerts(open_only=True)[0].kind, "", "", schemas.T0).id == 3
    finally:
        fleet.close()
        staging.close()
        index.close()
    new = pg_cluster.create_database("upgrade_new")
    PostgresIndex(new).close()
    PostgresFleetStore(new).close()

    assert schemas.survived(before, schemas.postgres_rows(old)) == []
    assert schemas.postgres_schema(old) == schemas.postgres_schema(new)
