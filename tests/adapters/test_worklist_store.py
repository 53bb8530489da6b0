"""The worklist cache (adapters/worklist_store.py) on a real SQLite file: order, cancel, expiry,
done, and no patient attribute in plaintext on disk."""

from __future__ import annotations

import calendar
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.worklist_store import WorklistStore
from gateway.core import schema
from gateway.core.errors import IntegrityError

KEY = os.urandom(32)
NAME, PATIENT_ID, ACCESSION = "Wanderer^Zoë", "PID-93741", "ACC-55120"
CHINESE = "张^伟"


def entry(step: str, accession: str = ACCESSION, name: str = NAME, station: str = "CT1", date: str = "20261203",
          time_: str = "093000", modality: str = "CT") -> dict[str, Any]:
    return {"accession_number": accession, "patient_name": name, "patient_id": PATIENT_ID, "birth_date": "19700101",
            "step": {"step_id": step, "modality": modality, "station_ae_title": station, "start_date": date,
                     "start_time": time_}}


def update(seq: int, *ops: dict[str, Any]) -> schema.WorklistUpdate:
    body = {"v": 1, "box_id": "box-1", "seq": seq, "ops": list(ops)}
    return schema.parse(schema.WorklistUpdate, json.dumps(body).encode(), "update", schema.MAX_WORKLIST_BYTES)


def upsert(**kw: Any) -> dict[str, Any]:
    return {"op": "upsert", "entry": entry(**kw)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WorklistStore]:
    s = WorklistStore(tmp_path / "worklist.db", KEY)
    yield s
    s.close()


def _names(s: WorklistStore, station: str | None = None) -> list[tuple[str, str]]:
    return [(i.step.step_id, i.patient_name) for i in s.candidates(station)]


def test_updates_apply_in_order_when_an_older_one_is_replayed(store: WorklistStore) -> None:
    assert store.apply(update(2, upsert(step="S1"), upsert(step="S2", name=CHINESE)), 1.0).applied
    assert store.apply(update(3, upsert(step="S1", name="Renamed^Ann"),
                              {"op": "cancel", "step_id": "S2", "accession_number": ACCESSION}), 2.0).cancelled == 1
    replay = store.apply(update(2, upsert(step="S1"), upsert(step="S2", name=CHINESE)), 3.0)
    assert not replay.applied and replay.last_seq == 3
    assert _names(store) == [("S1", "Renamed^Ann")] and store.last_seq() == 3


def test_candidates_are_narrowed_to_the_station_when_asked_for_one(store: WorklistStore) -> None:
    store.apply(update(1, upsert(step="S1", station="CT1"), upsert(step="S2", station="CT2"),
                       upsert(step="S3", station="", time_="080000")), 1.0)
    assert [i.step.step_id for i in store.candidates("CT1")] == ["S3", "S1"]  # by scheduled start
    assert [i.step.step_id for i in store.candidates("CT1", include_unassigned=False)] == ["S1"]
    assert len(store.candidates(None)) == 3
    assert store.candidates(None, modality="MR") == []


def test_done_and_expired_items_leave_the_worklist_when_mpps_or_time_says_so(store: WorklistStore) -> None:
    store.apply(update(1, upsert(step="S1"), upsert(step="S2", date="20261201")), 1.0)
    assert store.mark_done("S1", ACCESSION, "COMPLETED")
    assert not store.mark_done("S9", ACCESSION, "COMPLETED")
    assert _names(store, "CT1") == [("S2", NAME)]
    dec3 = calendar.timegm(time.strptime("20261203093000", "%Y%m%d%H%M%S"))
    assert store.expire(dec3, keep_s=24 * 3600) == 1  # S2 was scheduled two days before
    assert store.candidates("CT1") == [] and store.count() == 0


def test_cache_file_holds_no_patient_attribute_when_items_are_cached(store: WorklistStore, tmp_path: Path) -> None:
    store.apply(update(1, upsert(step="S1"), upsert(step="S2", name=CHINESE)), 1.0)
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("worklist.db"))
    for value in (NAME, CHINESE, PATIENT_ID, ACCESSION, "19700101"):
        for encoding in ("utf-8", "utf-16-le", "gb18030"):
            assert value.encode(encoding) not in raw, value
    assert oct((tmp_path / "worklist.db").stat().st_mode & 0o777) == "0o600"


def test_sealed_document_fails_when_moved_to_another_row(store: WorklistStore, tmp_path: Path) -> None:
    store.apply(update(1, upsert(step="S1"), upsert(step="S2")), 1.0)
    with closing(sqlite3.connect(tmp_path / "worklist.db")) as con, con:
        (sealed,) = con.execute("SELECT sealed FROM worklist ORDER BY step_key LIMIT 1").fetchone()
        con.execute("UPDATE worklist SET sealed = ?", (sealed,))  # both rows now hold one row's document
    with pytest.raises(IntegrityError):
        store.candidates(None)


def test_cache_is_unreadable_when_opened_with_another_key(tmp_path: Path) -> None:
    first = WorklistStore(tmp_path / "worklist.db", KEY)
    first.apply(update(1, upsert(step="S1")), 1.0)
    first.close()
    other = WorklistStore(tmp_path / "worklist.db", os.urandom(32))
    try:
        assert other.count() == 1
        with pytest.raises(IntegrityError):
            other.candidates(None)
        assert not other.mark_done("S1", ACCESSION, "COMPLETED")  # the row key is keyed too
    finally:
        other.close()


# -- the feed: refs, replace snapshots, MPPS statuses to report ------------------------------------------------
REF1, REF2 = "a1" * 16, "b2" * 16
MPPS_UID = "1.2.826.0.1.3680043.8.498.777"


def upsert_ref(ref: str, **kw: Any) -> dict[str, Any]:
    return {"op": "upsert", "entry": {**entry(**kw), "ref": ref}}


def snapshot(seq: int, *ops: dict[str, Any]) -> schema.WorklistUpdate:
    body = {"v": 1, "box_id": "box-1", "seq": seq, "ops": list(ops), "replace": True}
    return schema.parse(schema.WorklistUpdate, json.dumps(body).encode(), "update", schema.MAX_WORKLIST_BYTES)


def test_replace_snapshot_removes_every_step_it_does_not_name_when_applied(store: WorklistStore) -> None:
    store.apply(update(1, upsert(step="S1"), upsert(step="S2"), upsert(step="S3")), 1.0)
    applied = store.apply(snapshot(2, upsert(step="S2"), upsert(step="S4")), 2.0)
    assert applied.applied and applied.cancelled == 2 and applied.upserted == 2
    assert sorted(i.step.step_id for i in store.candidates(None)) == ["S2", "S4"]
    assert store.apply(update(3, upsert(step="S5")), 3.0).cancelled == 0  # no replace: S2, S4 stay
    assert store.count() == 3 and store.last_applied_at() == 3.0


def test_started_step_stays_done_when_the_feed_upserts_it_again(store: WorklistStore) -> None:
    store.apply(update(1, upsert_ref(REF1, step="S1"), upsert(step="S2")), 1.0)
    assert store.perform(MPPS_UID, [("S1", ACCESSION)], 2.0) == (1, 1)
    store.apply(snapshot(2, upsert_ref(REF1, step="S1", name="Renamed^Ann"), upsert(step="S2")), 3.0)
    assert [i.step.step_id for i in store.candidates(None)] == ["S2"]  # S1 was started: still done
    assert store.count() == 1


def test_mpps_statuses_are_queued_by_ref_and_forgotten_when_acknowledged(store: WorklistStore,
                                                                         tmp_path: Path) -> None:
    store.apply(update(1, upsert_ref(REF1, step="S1"), upsert_ref(REF2, step="S2"), upsert(step="S3")), 1.0)
    assert store.perform(MPPS_UID, [("S1", ACCESSION), ("S2", ACCESSION), ("S3", ACCESSION), ("S9", "X")],
                         2.0) == (3, 2)  # S3 has no ref: done, nothing to report; S9 is not cached
    assert store.performed(MPPS_UID, "COMPLETED", 3.0) == 2
    assert store.performed("1.2.3.999", "COMPLETED", 3.0) == 0  # an MPPS that performed no cached step
    due = store.due_statuses(10.0)
    assert [(p.ref, p.status) for p in due] == [(REF1, "IN PROGRESS"), (REF2, "IN PROGRESS"),
                                                (REF1, "COMPLETED"), (REF2, "COMPLETED")]
    store.mark_status_sent(REF1, "IN PROGRESS", 5.0)
    assert len(store.due_statuses(4.0)) == 3 and len(store.due_statuses(5.0)) == 4  # resent after resend_s
    assert store.mark_status_acked(REF1, "IN PROGRESS") and not store.mark_status_acked(REF1, "IN PROGRESS")
    assert store.statuses_unacked() == 3 and (REF1, "IN PROGRESS") not in [(p.ref, p.status)
                                                                           for p in store.due_statuses(10.0)]
    store.close()
    with closing(sqlite3.connect(tmp_path / "worklist.db")) as con:
        keys = [k for (k,) in con.execute("SELECT mpps_key FROM mpps_refs")]
    assert keys and all(MPPS_UID not in k and len(k) == 64 for k in keys)  # the UID is HMAC'd, never plain
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("worklist.db"))
    assert MPPS_UID.encode() not in raw


def test_older_cache_file_gains_the_feed_tables_when_opened_by_this_version(tmp_path: Path) -> None:
    from gateway.adapters import worklist_store
    from gateway.adapters.sqlite_db import SqliteDatabase

    old = SqliteDatabase(tmp_path / "worklist.db", "worklist database")
    old.migrate(worklist_store.MIGRATIONS[:1])
    old.close()
    s = WorklistStore(tmp_path / "worklist.db", KEY)
    try:
        s.apply(update(1, upsert_ref(REF1, step="S1")), 1.0)
        assert s.perform(MPPS_UID, [("S1", ACCESSION)], 2.0) == (1, 1)
        assert s.last_applied_at() == 1.0
    finally:
        s.close()


def test_acknowledged_statuses_and_their_mpps_map_leave_when_they_expire(store: WorklistStore, tmp_path: Path) -> None:
    store.apply(update(1, upsert_ref(REF1, step="S1")), 1.0)
    store.perform(MPPS_UID, [("S1", ACCESSION)], 2.0)
    store.performed(MPPS_UID, "COMPLETED", 3.0)
    store.mark_status_acked(REF1, "IN PROGRESS")
    far = calendar.timegm(time.strptime("20270101", "%Y%m%d"))
    store.expire(far, keep_s=3600)
    assert [(p.ref, p.status) for p in store.due_statuses(far)] == [(REF1, "COMPLETED")]  # unacked: kept
    assert store.performed(MPPS_UID, "DISCONTINUED", far) == 1  # the map lives while a status is pending
    store.mark_status_acked(REF1, "COMPLETED")
    store.mark_status_acked(REF1, "DISCONTINUED")
    store.expire(far + 2 * 3600 + 4e7, keep_s=3600)
    assert store.statuses_unacked() == 0 and store.performed(MPPS_UID, "COMPLETED", far) == 0
