"""The cloud's worklist feed (cloud/worklist/feed.py) on the fleet store, both backends (a real
SQLite file, a real PostgreSQL): orders in, sealed snapshots out (opened as the box opens them),
statuses checked against the routes and queued for the RIS; no patient data in the clear."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.cloud.fleet.store import FleetStore
from gateway.cloud.worklist.feed import CLEARED, WorklistFeed
from gateway.config import FleetWorklistSettings
from gateway.core import acksig, schema, worklist_wire
from gateway.core.errors import FrameError, UnexpectedAckError, WorklistRefused
from gateway.core.schema import WorklistCancel, WorklistEntry
from tests.backends import Backend

NOW = 1796371200.0  # 2026-12-04 08:00 UTC
TODAY = "20261204"
NAME = "张^伟"


@pytest.fixture
def store(tmp_path: Path, backend: Backend) -> Iterator[FleetStore]:
    s = backend.fleet_store(tmp_path)
    yield s
    s.close()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class BoxKey:
    def __init__(self) -> None:
        self.private = X25519PrivateKey.generate()
        raw = self.private.private_bytes_raw()
        self.raw, self.public_hex = raw, self.private.public_key().public_bytes_raw().hex()


def entry(step: str, *, station: str = "CT1", modality: str = "CT", date: str = TODAY, name: str = NAME,
          accession: str = "") -> WorklistEntry:
    return schema.convert(WorklistEntry, {
        "accession_number": accession or f"ACC-{step}", "patient_name": name, "patient_id": f"PID-{step}",
        "step": {"step_id": step, "modality": modality, "station_ae_title": station, "start_date": date,
                 "start_time": "090000"}}, "test")


@pytest.fixture
def world(store: FleetStore) -> tuple[WorklistFeed, acksig.AckSigner, Clock, list[tuple[str, bytes, bool]]]:
    seed = os.urandom(32)
    signer = acksig.AckSigner(seed)
    clock = Clock()
    feed = WorklistFeed(store.worklist, FleetWorklistSettings(enabled=True), signer, os.urandom(32), "mgw/v1", clock)
    return feed, signer, clock, []


def keyring(signer: acksig.AckSigner) -> acksig.AckKeyring:
    return acksig.AckKeyring((signer.public,))


def opened(frames: list[tuple[str, bytes, bool]], box_id: str, key: BoxKey, signer: acksig.AckSigner
           ) -> schema.WorklistUpdate:
    topic, frame, retain = [f for f in frames if f[0] == f"mgw/v1/{box_id}/worklist"][-1]
    assert retain
    return worklist_wire.open_frame(frame, box_id, key.raw, keyring(signer))


def steps(update: schema.WorklistUpdate) -> list[str]:
    return [op.entry.step.step_id for op in update.ops if isinstance(op, schema.WorklistUpsert)]


def test_box_gets_only_its_routed_steps_sealed_to_its_key_when_the_leader_publishes(world, store) -> None:
    feed, signer, clock, frames = world
    ct, mr = BoxKey(), BoxKey()
    feed.take_set("mwl", [entry("S1"), entry("S2", station="CT2"), entry("S3", modality="MR", station="MR1"),
                          entry("S4", date="20261230")])
    feed.upsert("hl7", entry("H1", station=""))  # an HL7 order names no station: the route assigns it
    store.worklist.add_route("ct-01", "CT", "CT1", "", NOW)
    store.worklist.add_route("mr-01", "MR", "MR1", "", NOW)
    feed.note_birth("ct-01", ct.public_hex)
    feed.note_birth("mr-01", mr.public_hex)
    feed.note_birth("xr-01", "")  # no worklist key: no feed
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 2
    update = opened(frames, "ct-01", ct, signer)
    assert update.replace and update.seq == 1 and sorted(steps(update)) == ["H1", "S1"]
    assert all(op.entry.ref and op.entry.step.station_ae_title == "CT1" for op in update.ops
               if isinstance(op, schema.WorklistUpsert))
    assert steps(opened(frames, "mr-01", mr, signer)) == ["S3"]
    with pytest.raises((FrameError, UnexpectedAckError)):  # the CT box's frame opens on no other box
        worklist_wire.open_frame(frames[0][1], "mr-01", mr.raw, keyring(signer))
    assert all(NAME.encode() not in f[1] and b"PID-S1" not in f[1] for f in frames)
    # nothing changed: nothing sent; a cancel or a new key: a new frame with the next seq
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 0
    feed.cancel("hl7", schema.convert(WorklistCancel, {"step_id": "H1", "accession_number": "ACC-H1"}, "t"))
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 1
    update = opened(frames, "ct-01", ct, signer)
    assert (update.seq, steps(update)) == (2, ["S1"])
    fresh = BoxKey()
    feed.note_birth("ct-01", fresh.public_hex)
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 1
    assert opened(frames, "ct-01", fresh, signer).seq == 3


def test_order_absent_from_the_next_poll_is_cancelled_and_leaves_the_snapshot(world, store) -> None:
    feed, signer, clock, frames = world
    key = BoxKey()
    store.worklist.add_route("ct-01", "CT", "CT1", "", NOW)
    feed.note_birth("ct-01", key.public_hex)
    assert feed.take_set("mwl", [entry("S1"), entry("S2")]).cancelled == 0
    before = store.worklist._db.execute("SELECT sealed, updated_at FROM worklist_orders ORDER BY ref")  # noqa: SLF001
    clock.now += 60
    feed.take_set("mwl", [entry("S1"), entry("S2")])  # the next poll, unchanged: nothing rewritten
    assert store.worklist._db.execute("SELECT sealed, updated_at FROM worklist_orders ORDER BY ref") == before  # noqa: SLF001
    feed.publish(lambda t, p, r: frames.append((t, p, r)) or True)
    assert sorted(steps(opened(frames, "ct-01", key, signer))) == ["S1", "S2"]
    assert feed.take_set("mwl", [entry("S2")]).cancelled == 1
    feed.publish(lambda t, p, r: frames.append((t, p, r)) or True)
    assert steps(opened(frames, "ct-01", key, signer)) == ["S2"]


def test_status_is_stored_queued_acked_and_the_step_leaves_when_the_routed_box_reports_it(world, store) -> None:
    feed, signer, clock, frames = world
    key = BoxKey()
    store.worklist.add_route("ct-01", "CT", "CT1", "", NOW)
    store.worklist.add_route("ct-02", "CT", "CT2", "", NOW)
    feed.note_birth("ct-01", key.public_hex)
    feed.take_set("mwl", [entry("S1"), entry("S2")])
    feed.publish(lambda t, p, r: frames.append((t, p, r)) or True)
    refs = {op.entry.step.step_id: op.entry.ref for op in opened(frames, "ct-01", key, signer).ops
            if isinstance(op, schema.WorklistUpsert)}

    def status(box: str, ref: str, value: str = "COMPLETED") -> bytes:
        return json.dumps({"v": 1, "box_id": box, "ref": ref, "status": value, "at": NOW}).encode()

    with pytest.raises(WorklistRefused, match="not routed to this box"):
        feed.take_status("ct-02", status("ct-02", refs["S1"]))
    with pytest.raises(WorklistRefused, match="unknown ref"):
        feed.take_status("ct-01", status("ct-01", "0" * 32))
    with pytest.raises(FrameError, match="box id differs"):
        feed.take_status("ct-01", status("ct-02", refs["S1"]))
    ack = feed.take_status("ct-01", status("ct-01", refs["S1"]))
    assert worklist_wire.verify_status_ack(ack, "ct-01", keyring(signer)) == (refs["S1"], "COMPLETED")
    feed.take_status("ct-01", status("ct-01", refs["S1"]))  # a resend: acked again, queued once
    late = feed.take_status("ct-01", status("ct-01", refs["S1"], "IN PROGRESS"))  # late, out of order: acked
    assert worklist_wire.verify_status_ack(late, "ct-01", keyring(signer)) == (refs["S1"], "IN PROGRESS")
    due = store.worklist.due(NOW + 1, ["mwl", "hl7"])
    assert [(d.ref, d.status, d.source) for d in due] == [(refs["S1"], "COMPLETED", "mwl")]
    feed.publish(lambda t, p, r: frames.append((t, p, r)) or True)
    assert steps(opened(frames, "ct-01", key, signer)) == ["S2"]  # done: off the worklist


def test_retained_worklist_is_cleared_when_the_box_loses_its_last_route_or_its_key(world, store) -> None:
    feed, signer, clock, frames = world
    key = BoxKey()
    store.worklist.add_route("ct-01", "CT", "CT1", "", NOW)
    feed.note_birth("ct-01", key.public_hex)
    feed.take_set("mwl", [entry("S1")])
    feed.publish(lambda t, p, r: frames.append((t, p, r)) or True)
    assert store.worklist.remove_route("ct-01", "CT", "CT1")
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 1
    assert frames[-1] == ("mgw/v1/ct-01/worklist", b"", True)
    assert [f.digest for f in store.worklist.feeds()] == [CLEARED]
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 0
    store.worklist.add_route("ct-01", "CT", "CT1", "", NOW)  # routed again: a frame; its key withdrawn: cleared
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 1 and frames[-1][1]
    feed.note_birth("ct-01", "")
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 1 and frames[-1][1] == b""


def test_snapshot_is_cut_to_the_earliest_entries_that_fit_when_it_exceeds_one_frame(world, store) -> None:
    feed, signer, clock, frames = world
    key = BoxKey()
    store.worklist.add_route("ct-01", "CT", "CT1", "", NOW)
    feed.note_birth("ct-01", key.public_hex)
    big = [entry(f"S{i:04d}", name=os.urandom(90).hex()[:180], accession=os.urandom(8).hex()) for i in range(900)]
    feed.take_set("mwl", big)
    assert feed.publish(lambda t, p, r: frames.append((t, p, r)) or True) == 1
    update = opened(frames, "ct-01", key, signer)
    assert 0 < len(update.ops) < 900 and len(frames[-1][1]) <= worklist_wire.MAX_FRAME_BYTES
    assert feed.truncated == 1 and store.worklist.feeds()[0].left_out == 900 - len(update.ops)


def test_no_patient_data_is_stored_in_the_clear_when_orders_are_taken(world, store, tmp_path: Path,
                                                                      backend) -> None:
    feed, signer, clock, frames = world
    feed.take_set("mwl", [entry("S1", name="Secretname^Patient", accession="ACCSECRET")])
    rows = store.worklist._db.execute("SELECT * FROM worklist_orders")  # noqa: SLF001 - every stored column
    assert len(rows) == 1
    stored = " ".join(str(v) for v in rows[0].values()) + bytes.fromhex(rows[0]["sealed"]).decode("latin-1")
    assert "Secretname" not in stored and "ACCSECRET" not in stored and "PID-S1" not in stored
    if backend.name == "sqlite":  # and nowhere in the database's files (WAL included)
        raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
        assert b"Secretname" not in raw and b"ACCSECRET" not in raw and b"PID-S1" not in raw


def test_old_orders_are_forgotten_when_past_keep_days_and_current_ones_stay(world, store) -> None:
    feed, signer, clock, frames = world
    feed.take_set("mwl", [entry("OLD", date="20261001"), entry("NOW"), entry("GONE")])
    feed.take_set("mwl", [entry("OLD", date="20261001"), entry("NOW")])  # GONE cancelled now
    feed.prune(clock.now)  # keep_days 30: the step of October goes, the cancelled one stays a while
    assert len(store.worklist.order_keys("mwl")) == 1 and len(store.worklist.order_keys("mwl", "cancelled")) == 1
    clock.now += 31 * 86400
    feed.prune(clock.now)
    assert store.worklist.order_keys("mwl", "cancelled") == set()
