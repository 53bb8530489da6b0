"""The fleet store on both backends: a real SQLite file and a real PostgreSQL (Debian's server,
tests/conftest.py). The same statements, migrations and results on each."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.postgres_cluster import PostgresCluster
from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud.fleet import store as fleet_store
from gateway.cloud.fleet.store import AlertState, FleetStore
from gateway.core.alerts import Severity
from gateway.core.errors import StorageError
from gateway.core.fleet import AlertKind, BoxState
from tests.backends import Backend


@pytest.fixture
def store(tmp_path: Path, backend: Backend) -> Iterator[FleetStore]:
    s = backend.fleet_store(tmp_path)
    yield s
    s.close()


def exam(**fields: Any) -> dict[str, Any]:
    record = {"box_id": "box-1", "study_key": "ab" * 16, "revision": 1, "site": "clinic", "modality": "CT",
              "start": 1000.0, "end": 1600.0, "images": 300, "series": 3, "source": "header", "status": "completed",
              "first_received_at": 1010.0, "last_received_at": 1620.0, "cloud_stored_at": 1650.0}
    return {**record, **fields}


def test_box_is_updated_in_place_when_saved_again(store: FleetStore) -> None:
    first = BoxState("box-1", True, 3, 10.0, 20.0, 10.0, {"disk": {"used_percent": 40.0}}, "clinic", "1.0")
    store.save_boxes([first, BoxState("box-2", False, 1, 5.0, 6.0, 6.0, {}, "clinic", "1.0")])
    store.save_boxes([BoxState("box-1", False, 2**40, 10.0, 30.0, 30.0, {"reconnects": 2}, "clinic-b", "1.1")])
    assert store.load_boxes() == [
        BoxState("box-1", False, 2**40, 10.0, 30.0, 30.0, {"reconnects": 2}, "clinic-b", "1.1"),
        BoxState("box-2", False, 1, 5.0, 6.0, 6.0, {}, "clinic", "1.0")]


def test_exam_keeps_the_later_revision_when_an_older_one_arrives_late(store: FleetStore) -> None:
    assert store.upsert_exam(exam(revision=2, images=300))
    assert store.upsert_exam(exam(revision=1, images=1))  # acknowledged: a later revision is stored
    assert store.upsert_exam(exam(study_key="cd" * 16, start=2000.0, end=2100.0, images=2**31 - 1,
                                  cloud_stored_at=None))
    stored = store.exams(box_id="box-1", modality="CT")
    assert [(e["study_key"], e["revision"], e["images"], e["end"]) for e in stored] == [
        ("ab" * 16, 2, 300, 1600.0), ("cd" * 16, 1, 2**31 - 1, 2100.0)]
    assert store.exams(since=1500.0, until=3000.0, limit=1)[0]["study_key"] == "cd" * 16
    assert store.exams(modality="MR") == []
    assert store.modalities() == [{"box_id": "box-1", "site": "clinic", "modality": "CT", "exams": 2,
                                   "images": 300 + 2**31 - 1, "last_exam_end": 2100.0, "first_exam_start": 1000.0}]
    assert store.turnarounds(since=0.0) == [("clinic", 30.0)]
    assert store.turnarounds(since=1621.0) == []
    assert store.turnarounds_by_modality(since=0.0) == [("clinic", "CT", 30.0)]
    assert store.exam_spans(since=1500.0, until=3000.0) == [
        {"site": "clinic", "box_id": "box-1", "modality": "CT", "start": 2000.0, "end": 2100.0,
         "images": 2**31 - 1, "status": "completed"}]


def test_health_figures_keep_their_types_when_a_box_reports_nonsense(store: FleetStore) -> None:
    good = {"box_id": "box-1", "at": 100.0, "online": 1, "backlog_items": 3, "backlog_bytes": 2**40,
            "oldest_age_s": 12, "disk_used_percent": 55.5, "cpu_temp_c": None, "reconnects": 0}
    bad = {**good, "at": 101.0, "backlog_items": "many", "backlog_bytes": 2**70, "oldest_age_s": float("nan"),
           "disk_used_percent": True, "reconnects": 1.5}
    store.add_samples([good, bad])
    store.add_samples([{**good, "backlog_items": 99}])  # the same instant again: kept as first stored
    assert store.samples("box-1", since=0.0) == [
        {**good, "oldest_age_s": 12.0},
        {**good, "at": 101.0, "backlog_items": None, "backlog_bytes": None, "oldest_age_s": None,
         "disk_used_percent": None, "reconnects": None}]
    assert store.samples("box-1", since=100.5)[0]["at"] == 101.0
    store.prune(before=100.5)
    assert [s["at"] for s in store.samples("box-1", since=0.0)] == [101.0]


def test_alert_is_listed_until_cleared_and_pruned_when_old(store: FleetStore) -> None:
    disk = store.raise_alert("box-1", AlertKind.DISK_FULL, "", "97 %", at=100.0)
    silent = store.raise_alert("box-1", AlertKind.MODALITY_SILENT, "CT", "no exam for 8 h", at=200.0)
    assert disk.id != silent.id
    assert [a.id for a in store.alerts(open_only=True)] == [silent.id, disk.id]  # newest first
    store.clear_alert(disk.id, at=300.0)
    store.clear_alert(disk.id, at=400.0)  # clearing again changes nothing
    assert store.alerts(open_only=True) == [silent]
    cleared = [a for a in store.alerts(open_only=False, since=0.0) if a.id == disk.id]
    assert [(a.kind, a.cleared_at) for a in cleared] == [(AlertKind.DISK_FULL, 300.0)]
    store.prune(before=350.0)
    assert store.alerts(open_only=False, since=0.0) == [silent]  # open alerts are never pruned


def test_box_alerts_are_listed_under_their_site_alert_when_grouped(store: FleetStore) -> None:
    site = store.raise_alert("", AlertKind.SITE_OFFLINE, "clinic", "2 boxes offline: box-1, box-2", at=100.0,
                             site="clinic")
    one = store.raise_alert("box-1", AlertKind.BOX_OFFLINE, "", "offline", at=90.0, site="clinic")
    two = store.raise_alert("box-2", AlertKind.BOX_OFFLINE, "", "offline", at=95.0, site="clinic",
                            parent_id=site.id)
    disk = store.raise_alert("box-3", AlertKind.DISK_FULL, "", "97 %", at=80.0, site="other")
    store.group_alerts([one.id], site.id)
    assert (site.severity, one.severity, disk.severity) == (Severity.CRITICAL,) * 3
    grouped = store.list_alerts()
    assert [(a.id, [c.id for c in a.children]) for a in grouped] == [(site.id, [one.id, two.id]), (disk.id, [])]
    assert [a.id for a in store.list_alerts(grouped=False)] == [site.id, two.id, one.id, disk.id]
    assert [a.id for a in store.list_alerts(site="other")] == [disk.id]
    assert [a.id for a in store.list_alerts(kind=AlertKind.SITE_OFFLINE)] == [site.id]
    assert store.list_alerts(severity=Severity.INFO) == []
    store.clear_alert(one.id, at=200.0)
    assert store.alert(one.id) is not None and store.alert(one.id).resolved_at == 200.0  # type: ignore[union-attr]
    assert [a.id for a in store.list_alerts(state=AlertState.RESOLVED, grouped=False)] == [one.id]
    assert [c.id for c in store.list_alerts()[0].children] == [one.id, two.id]  # history stays grouped
    assert store.alert(12345) is None


def test_acknowledgement_touch_and_suppression_are_kept_when_written(store: FleetStore) -> None:
    alert = store.raise_alert("box-1", AlertKind.BACKLOG_AGE, "", "61 min", at=100.0, site="clinic",
                              suppressed_by="maintenance:1")
    other = store.raise_alert("box-2", AlertKind.BACKLOG_AGE, "", "70 min", at=101.0, site="clinic")
    store.acknowledge(alert.id, "ops-li", "uplink ticket 42", at=150.0)
    store.touch_alerts([(alert.id, "90 min", 160.0)])
    store.suppress_alerts([(alert.id, ""), (other.id, "silence:7")])
    after = store.alert(alert.id)
    assert after is not None
    assert (after.acked_at, after.acked_by, after.ack_note, after.detail, after.last_seen, after.suppressed_by) == (
        150.0, "ops-li", "uplink ticket 42", "90 min", 160.0, "")
    assert [a.id for a in store.list_alerts(state=AlertState.ACKED)] == [alert.id]
    assert [a.id for a in store.list_alerts(state=AlertState.UNACKED)] == [other.id]
    assert store.list_alerts(state=AlertState.UNACKED)[0].suppressed_by == "silence:7"
    store.clear_alert(other.id, at=170.0)
    store.touch_alerts([(other.id, "changed after the end", 180.0)])  # a resolved alert is history: untouched
    assert store.alert(other.id) is not None and store.alert(other.id).detail == "70 min"  # type: ignore[union-attr]


def test_silence_and_maintenance_are_active_until_expired_and_pruned_when_old(store: FleetStore) -> None:
    silence = store.add_silence("", "clinic", "backlog_age", 100.0, 1000.0, "ops-li", "uplink work", at=90.0)
    window = store.add_maintenance("", "box-9", 200.0, 300.0, "ops-wang", "disk swap", at=90.0)
    assert store.silences(active_at=99.0) == [] and store.silences(active_at=100.0) == [silence]
    assert store.maintenance_windows(active_at=250.0) == [window]
    assert store.maintenance_windows(active_at=300.0) == []
    expired = store.expire_silence(silence.id, at=500.0)
    assert expired is not None and expired.ends_at == 500.0 and store.silences(active_at=600.0) == []
    assert store.expire_silence(silence.id, at=700.0) == expired  # expiring again changes nothing
    ended = store.end_maintenance(window.id, at=250.0)
    assert ended is not None and ended.ends_at == 250.0 and store.maintenance_windows(active_at=260.0) == []
    assert store.end_maintenance(999, at=1.0) is None and store.expire_silence(999, at=1.0) is None
    assert store.silences() == [expired]
    store.prune(before=400.0)
    assert store.maintenance_windows() == [] and store.silences() == [expired]
    store.prune(before=600.0)
    assert store.silences() == []


def test_everything_is_kept_when_the_store_is_reopened(tmp_path: Path, backend: Backend) -> None:
    store = backend.fleet_store(tmp_path)
    store.save_boxes([BoxState("box-1", True, 1, 1.0, 2.0, 1.0, {}, "clinic", "1.0")])
    alert = store.raise_alert("box-1", AlertKind.QUARANTINE_NOT_EMPTY, "", "2 items", at=5.0)
    store.upsert_exam(exam())
    store.close()
    again = backend.fleet_store(tmp_path)
    try:
        assert again.schema_version() == len(fleet_store.MIGRATIONS)
        assert [b.box_id for b in again.load_boxes()] == ["box-1"]
        assert again.alerts(open_only=True) == [alert]
        assert again.raise_alert("box-1", AlertKind.DISK_FULL, "", "", at=6.0).id > alert.id
        assert len(again.exams()) == 1
    finally:
        again.close()


def test_store_refuses_the_database_when_its_schema_is_newer(tmp_path: Path, backend: Backend) -> None:
    backend.fleet_store(tmp_path).close()
    if backend.cluster is None:
        with sqlite3.connect(tmp_path / "fleet.db") as conn:
            conn.execute("PRAGMA user_version = 99")
    else:
        import psycopg

        with psycopg.connect(backend.dsn) as conn:
            conn.execute("UPDATE fleet_schema_version SET version = 99")
    with pytest.raises(StorageError, match="newer than this software"):
        backend.fleet_store(tmp_path)


def test_both_backends_have_the_same_tables_and_columns_when_migrated(
        tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    import psycopg

    from gateway.adapters import postgres_fleet_store

    SqliteFleetStore(tmp_path / "fleet.db").close()
    with sqlite3.connect(tmp_path / "fleet.db") as conn:
        lite = {(t, c[1]) for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                for c in conn.execute(f"PRAGMA table_info({t})")}
    dsn = pg_cluster.create_database("fleet_columns")
    postgres_fleet_store.PostgresFleetStore(dsn).close()
    with psycopg.connect(dsn) as conn:
        pg = set(conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE table_schema = 'public' AND table_name <> 'fleet_schema_version'").fetchall())
    # migration 4: the console's accounts and audit; 5: fleet_leases; 6: commission_reports; 7: the worklist feed;
    # 8: remote commands
    assert lite == pg and len(pg) == (9 + 9 + 14 + (7 + 8) + 9 + 9 + 8 + (9 + 10 + 10 + 3 + 3 + 9) + 4 + 11
                                      + (15 + 5 + 8 + 6 + 9) + (5 + 16 + 7 + 6 + 6 + 6 + 12))


def test_store_reconnects_when_the_server_dropped_its_connection(pg_cluster: PostgresCluster) -> None:
    import psycopg

    from gateway.adapters.postgres_fleet_store import PostgresFleetStore

    dsn = pg_cluster.create_database("fleet_reconnect")
    store = PostgresFleetStore(dsn)
    try:
        store.upsert_exam(exam())
        with psycopg.connect(dsn, autocommit=True) as admin:  # what a server restart does to a session
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = 'fleet_reconnect' AND pid <> pg_backend_pid()")
        with pytest.raises(StorageError, match="postgresql:fleet_reconnect"):
            store.upsert_exam(exam(revision=2))  # not stored, so not acknowledged: the edge sends it again
        assert store.upsert_exam(exam(revision=2))
        assert [e["revision"] for e in store.exams()] == [2]
    finally:
        store.close()


def test_schema_is_migrated_once_when_two_fleet_services_start_together(pg_cluster: PostgresCluster) -> None:
    from gateway.adapters.postgres_fleet_store import PostgresFleetStore

    dsn = pg_cluster.create_database("fleet_race")
    opened: list[FleetStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresFleetStore(dsn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and len(opened) == 4
        assert {s.schema_version() for s in opened} == {len(fleet_store.MIGRATIONS)}
    finally:
        for s in opened:
            s.close()


def test_concurrent_opens_migrate_once_when_services_start_together_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """The ingest workers (dead letters) and the fleet service open fleet.db at the same moment."""
    import concurrent.futures

    path = tmp_path / "fleet.db"
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        stores = list(pool.map(lambda _: SqliteFleetStore(path), range(6)))
    assert {s.schema_version() for s in stores} == {len(fleet_store.MIGRATIONS)}
    for s in stores:
        s.close()


def test_lease_goes_to_one_holder_until_it_expires_or_is_released_when_two_instances_ask(
        tmp_path: Path, backend: Backend) -> None:
    a, b = backend.fleet_store(tmp_path), backend.fleet_store(tmp_path)  # two connections, one database
    try:
        assert a.take_lease("a", 100.0, 10.0) == fleet_store.Lease("a", 110.0, 1)
        assert b.take_lease("b", 105.0, 10.0) == fleet_store.Lease("a", 110.0, 1)  # held: refused
        assert a.take_lease("a", 108.0, 10.0) == fleet_store.Lease("a", 118.0, 1)  # renewed, same term
        assert b.take_lease("b", 118.0, 10.0) == fleet_store.Lease("b", 128.0, 2)  # expired: taken over
        assert a.take_lease("a", 119.0, 10.0).holder == "b"  # the old holder is refused now
        a.release_lease("a")  # not its lease: nothing happens
        assert a.take_lease("a", 120.0, 10.0).holder == "b"
        b.release_lease("b")
        assert a.take_lease("a", 121.0, 10.0) == fleet_store.Lease("a", 131.0, 3)  # released: taken at once
    finally:
        a.close()
        b.close()


def test_lease_is_taken_by_exactly_one_when_many_threads_race_for_an_expired_lease(
        tmp_path: Path, backend: Backend) -> None:
    stores = [backend.fleet_store(tmp_path) for _ in range(4)]
    winners: list[str] = []
    start = threading.Barrier(len(stores))

    def race(i: int) -> None:
        start.wait()
        if stores[i].take_lease(f"i{i}", 100.0, 10.0).held_by(f"i{i}"):
            winners.append(f"i{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(winners) == 1
        assert stores[0].take_lease("x", 101.0, 10.0).holder == winners[0]
    finally:
        for s in stores:
            s.close()
