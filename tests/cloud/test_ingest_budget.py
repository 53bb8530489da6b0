"""One box cannot hurt the others at the cloud ingest: a poison chunk is set aside, and a box
over its budget (rate, open transfers, staging bytes) is slowed while other boxes go on.

Real SQLite fleet store and index, real staging files, real sealed frames; only time is faked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud.fleet.deadletter import DeadLetterReason, DeadLetters
from gateway.cloud.ingest.pipeline import Ingest
from gateway.config import BudgetSettings, DeadLetterSettings, IngestSettings
from tests.backends import Backend
from tests.cloud.test_ingest import ACK_SIGNER, KeyPair, Sealed, make_data, make_keys, raw_frame, seal

OTHER = "box-2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Cloud:
    def __init__(self, root: Path, keys: KeyPair, budgets: BudgetSettings, clock: Clock,
                 letters: DeadLetterSettings | None = None, backend: Backend | None = None) -> None:
        backend = backend or Backend("sqlite")
        self.archive = backend.archive(root)
        self.store = SqliteFleetStore(root / "fleet.db")
        self.letters = DeadLetters(self.store, letters or DeadLetterSettings(), "ingest-test", clock)
        self.ingest = Ingest(IngestSettings(), keys.private, ACK_SIGNER, self.archive, backend.staging(root), clock,
                             dead_letters=self.letters, budgets=budgets)

    def close(self) -> None:
        self.ingest.close()
        self.archive.close()
        self.store.close()

    def stored(self, sealed: Sealed, box: str = "box-1") -> bool:
        record = self.archive.lookup_transfer(box, sealed.keys.transfer_id)
        return record is not None and record.state.name == "STORED"


@pytest.fixture(scope="module")
def keys() -> KeyPair:
    return make_keys()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_chunk_is_dead_lettered_and_the_loop_goes_on_when_its_seq_is_at_the_top_of_its_range(
        tmp_path: Path, keys: KeyPair, clock: Clock) -> None:
    cloud = Cloud(tmp_path, keys, BudgetSettings(), clock)
    poison = seal(keys, make_data(4000, seed=7))
    top = raw_frame(poison, 2**32 - 1, True, b"x" * 100)
    assert cloud.ingest.handle_chunk("box-1", top, "mgw/v1/box-1/up/x") == []
    honest = seal(keys, make_data(4000, seed=8))
    for frame in honest.frames:
        cloud.ingest.handle_chunk("box-1", frame)
    assert cloud.stored(honest)
    cloud.letters.flush()
    [letter] = cloud.store.dead_letters()
    assert (letter.box_id, letter.reason) == ("box-1", DeadLetterReason.MALFORMED.value)
    assert "beyond any object" in letter.detail and letter.bytes == len(top)
    cloud.close()


def test_box_is_slowed_and_others_go_on_when_it_opens_more_transfers_than_its_budget(
        tmp_path: Path, keys: KeyPair, clock: Clock, backend: Backend) -> None:
    cloud = Cloud(tmp_path, keys, BudgetSettings(max_open_transfers=2, usage_refresh_s=0.0), clock, backend=backend)
    opened = [seal(keys, make_data(8000, seed=n)) for n in range(3)]
    for sealed in opened[:2]:  # two transfers left unfinished
        assert cloud.ingest.handle_chunk("box-1", sealed.frames[0])
    assert cloud.ingest.handle_chunk("box-1", opened[2].frames[0]) == []  # a third must wait: no ack
    other = seal(keys, make_data(8000, seed=9), box=OTHER)
    for frame in other.frames:
        cloud.ingest.handle_chunk(OTHER, frame)
    assert cloud.stored(other, OTHER)  # the other box is unaffected
    for frame in opened[0].frames[1:]:  # one completes: a slot frees
        cloud.ingest.handle_chunk("box-1", frame)
    assert cloud.stored(opened[0])
    for frame in opened[2].frames:  # the edge resends the one that waited
        cloud.ingest.handle_chunk("box-1", frame)
    assert cloud.stored(opened[2])
    assert cloud.ingest.counters()["chunks_over_budget"] == 1
    cloud.letters.flush()
    assert [d.reason for d in cloud.store.dead_letters(box_id="box-1")] == [DeadLetterReason.BUDGET.value]
    cloud.close()


def test_box_is_slowed_and_others_go_on_when_it_sends_faster_than_its_rate(
        tmp_path: Path, keys: KeyPair, clock: Clock) -> None:
    cloud = Cloud(tmp_path, keys, BudgetSettings(max_messages_per_s=1.0, burst_messages=3), clock)
    sealed = seal(keys, make_data(16_000, seed=3))
    assert len(sealed.frames) >= 5
    answered = [bool(cloud.ingest.handle_chunk("box-1", f)) for f in sealed.frames[:5]]
    assert answered == [True, True, True, False, False]  # the burst, then nothing until time passes
    other = seal(keys, make_data(2000, seed=4), box=OTHER)
    assert all(cloud.ingest.handle_chunk(OTHER, f) for f in other.frames[:3])
    clock.now += 2.0
    assert cloud.ingest.handle_chunk("box-1", sealed.frames[3])
    assert cloud.ingest.counters()["chunks_over_budget"] == 2
    cloud.close()


def test_staging_bytes_stop_new_transfers_but_let_started_ones_finish_when_over_budget(
        tmp_path: Path, keys: KeyPair, clock: Clock) -> None:
    first, second = seal(keys, make_data(20_000, seed=5)), seal(keys, make_data(4000, seed=6))
    limit = sum(len(f) for f in first.frames[:3])
    cloud = Cloud(tmp_path, keys, BudgetSettings(max_staging_bytes=limit, usage_refresh_s=0.0), clock)
    for frame in first.frames[:3]:
        assert cloud.ingest.handle_chunk("box-1", frame)
    assert cloud.ingest.handle_chunk("box-1", second.frames[0]) == []  # no new transfer above the limit
    for frame in first.frames[3:]:  # the started one may finish (up to limit + max_object_bytes)
        assert cloud.ingest.handle_chunk("box-1", frame)
    assert cloud.stored(first)
    for frame in second.frames:
        cloud.ingest.handle_chunk("box-1", frame)
    assert cloud.stored(second)
    cloud.close()


def test_dead_letters_stay_bounded_and_count_every_message_when_a_box_floods(
        tmp_path: Path, keys: KeyPair, clock: Clock) -> None:
    letters = DeadLetterSettings(keep_per_box=5, keep_total=8, writes_per_box_per_minute=3)
    cloud = Cloud(tmp_path, keys, BudgetSettings(), clock, letters)
    for n in range(50):
        cloud.ingest.handle_chunk("box-1", b"garbage %d" % n, "mgw/v1/box-1/up/0")
    cloud.letters.flush()
    written = cloud.store.dead_letters(box_id="box-1")
    assert len(written) == 3  # the write limit, not one row per message
    clock.now += 61
    cloud.letters.flush()  # the held remainder is written once its minute is over
    rows = cloud.store.dead_letters(box_id="box-1")
    assert sum(d.messages for d in rows) == 50 and len(rows) == 4
    for n in range(30):  # many boxes: the store keeps keep_total rows in all
        cloud.ingest.handle_chunk(f"box-x{n}", b"garbage", "t")
    cloud.letters.flush()
    assert len(cloud.store.dead_letters(limit=1000)) == 8
    [summary] = [d for d in cloud.store.dead_letter_summary(since=0) if d.box_id == "box-x29"]
    assert summary.reason == DeadLetterReason.MALFORMED.value
    assert dataclasses.asdict(summary)["messages"] == 1
    cloud.close()
