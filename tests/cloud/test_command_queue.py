"""The cloud's command queue (cloud/commands/) on the fleet store, both backends (a real SQLite file,
a real PostgreSQL): per-box seq, arguments sealed at rest, frames the box opens, one command per box
in seq order, re-sent until a result, expiry, strict results and blob parts from a hostile box."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.cloud.commands.queue import RESULT_GRACE_S, CommandQueue
from gateway.cloud.commands.rollout import Rollouts
from gateway.cloud.fleet.store import FleetStore
from gateway.core import acksig, command_rules, command_wire
from gateway.core.command_wire import Kind
from gateway.core.errors import CommandReplyRefused, FrameError
from tests.backends import Backend

NOW = 1796371200.0


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


class Box:
    """A box's keys, as the edge holds them: its inbound X25519 key, the command keyring."""

    def __init__(self, box_id: str, signer: acksig.AckSigner) -> None:
        self.box_id = box_id
        private = X25519PrivateKey.generate()
        self.private = private.private_bytes_raw()
        self.public_hex = private.public_key().public_bytes_raw().hex()
        self.keyring = acksig.AckKeyring((signer.public,))

    def open(self, frame: bytes, now: float, last_seq: int = 0) -> command_wire.Command:
        header = command_wire.check(frame, self.box_id, self.keyring, now, last_seq)
        return command_wire.open_frame(frame, header, self.box_id, self.private)


class World:
    def __init__(self, store: FleetStore) -> None:
        self.store = store
        self.signer = acksig.AckSigner(os.urandom(32))
        envelope = X25519PrivateKey.generate()
        self.envelope_private = envelope.private_bytes_raw()
        self.envelope_public = envelope.public_key().public_bytes_raw()
        self.clock = Clock()
        self.queue = CommandQueue(store.commands, self.signer, self.envelope_private, "mgw/v1", self.clock)
        self.sent: list[tuple[str, bytes]] = []
        self.online: set[str] = set()

    def send(self, topic: str, frame: bytes) -> bool:
        self.sent.append((topic, frame))
        return True

    def publish(self) -> int:
        return self.queue.publish(self.send, lambda box: box in self.online)

    def born(self, box: Box, **body: object) -> None:
        self.online.add(box.box_id)
        self.queue.note_box(box.box_id, {"worklist_key": box.public_hex, **body}, born=True)


@pytest.fixture
def world(store: FleetStore) -> World:
    return World(store)


def result(box_id: str, command_id: str | None, seq: int | None, state: str, **fields: object) -> bytes:
    doc = {"v": 1, "box_id": box_id, "state": state, "at": NOW, "id": command_id, "seq": seq, **fields}
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_seq_rises_per_box_and_args_are_sealed_at_rest_when_commands_are_queued(world: World) -> None:
    a1 = world.queue.issue("box-a", Kind.RESEND, {"accession": "ACC-7781"}, "alice")
    a2 = world.queue.issue("box-a", Kind.ECHO, {}, "alice")
    b1 = world.queue.issue("box-b", Kind.BUNDLE, {}, "bob")
    assert (a1.seq, a2.seq, b1.seq) == (1, 2, 1)
    assert a1.state == "pending" and a1.issued_by == "alice"
    assert b"ACC-7781" not in a1.sealed  # no accession number in the clear
    assert world.queue.args_of(a1) == {"accession": "ACC-7781"}
    assert world.queue.args_of(b1) == {"log_lines": 2000}
    moved = command_rules.open_args  # a row's sealed arguments do not open as another row's
    with pytest.raises(Exception, match="belong"):
        moved(command_rules.at_rest_key(world.envelope_private), a2.id, "box-a", a1.sealed)


def test_arguments_are_refused_when_they_do_not_fit_the_kind(world: World) -> None:
    for kind, args in [(Kind.ECHO, {"x": 1}), (Kind.BUNDLE, {"log_lines": 0}), (Kind.RESEND, {}),
                       (Kind.RESEND, {"study_instance_uid": "1.2.x"}), (Kind.QUARANTINE, {"action": "burn"}),
                       (Kind.QUARANTINE, {"action": "drop"}), (Kind.CONFIG, {"document": "a = ["}),
                       (Kind.RESTART, {"service": "sshd"}), (Kind.UPDATE, {"url": "http://x", "sha256": "0" * 64,
                                                                          "version": "2"})]:
        with pytest.raises(ValueError):
            world.queue.issue("box-a", kind, args, "alice")
    with pytest.raises(ValueError, match="lives"):
        world.queue.issue("box-a", Kind.ECHO, {}, "alice", ttl_s=40 * 86400)
    assert world.store.commands.commands(box_id="box-a") == []


def test_only_the_lowest_pending_command_is_published_when_the_box_is_online(world: World) -> None:
    box = Box("box-a", world.signer)
    first = world.queue.issue("box-a", Kind.ECHO, {}, "alice")
    second = world.queue.issue("box-a", Kind.BUNDLE, {"log_lines": 10}, "alice")
    assert world.publish() == 0  # offline, no key yet: it waits
    world.born(box)
    assert world.publish() == 1
    topic, frame = world.sent[-1]
    assert topic == "mgw/v1/box-a/cmd"
    opened = box.open(frame, NOW)
    assert (opened.id, opened.seq, opened.kind, opened.args, opened.issued_by) == (first.id, 1, Kind.ECHO, {}, "alice")
    assert world.publish() == 0  # sent, not yet due again
    world.clock.now += world.queue.resend_s
    assert world.publish() == 1 and box.open(world.sent[-1][1], world.clock.now).id == first.id  # re-sent
    world.queue.take_result("box-a", result("box-a", first.id, 1, "succeeded", kind="echo",
                                             detail={"status": "0x0000", "rtt_ms": 12.5}))
    assert world.publish() == 1
    opened = box.open(world.sent[-1][1], world.clock.now, last_seq=1)
    assert (opened.id, opened.seq, opened.args) == (second.id, 2, {"log_lines": 10})
    done = world.store.commands.command(first.id)
    assert done is not None and done.state == "succeeded" and json.loads(done.detail)["rtt_ms"] == 12.5


def test_birth_makes_an_open_command_due_again_when_the_box_reconnects(world: World) -> None:
    box = Box("box-a", world.signer)
    world.born(box)
    row = world.queue.issue("box-a", Kind.ECHO, {}, "alice")
    assert world.publish() == 1
    world.online.discard("box-a")
    world.clock.now += 600
    assert world.publish() == 0  # offline: queued
    world.born(box)
    assert world.publish() == 1 and box.open(world.sent[-1][1], world.clock.now).id == row.id


def test_states_move_forward_only_when_results_arrive_out_of_order(world: World) -> None:
    row = world.queue.issue("box-a", Kind.BUNDLE, {}, "alice")
    q = world.queue
    assert q.take_result("box-a", result("box-a", row.id, 1, "running")).state == "running"  # type: ignore[union-attr]
    assert q.take_result("box-a", result("box-a", row.id, 1, "received")).state == "running"  # type: ignore[union-attr]
    assert q.take_result("box-a", result("box-a", row.id, 1, "failed", message="disk")).state == "failed"  # type: ignore[union-attr]
    assert q.take_result("box-a", result("box-a", row.id, 1, "succeeded")).state == "failed"  # type: ignore[union-attr]


def test_expiry_sweeps_pending_at_once_and_taken_commands_after_the_grace(world: World) -> None:
    pending = world.queue.issue("box-a", Kind.ECHO, {}, "alice", ttl_s=60)
    taken = world.queue.issue("box-b", Kind.ECHO, {}, "alice", ttl_s=60)
    world.queue.take_result("box-b", result("box-b", taken.id, 1, "received"))
    world.clock.now += 61
    assert [r.id for r in world.queue.expire()] == [pending.id]
    world.clock.now += RESULT_GRACE_S
    assert [r.id for r in world.queue.expire()] == [taken.id]
    late = world.queue.take_result("box-b", result("box-b", taken.id, 1, "succeeded"))
    assert late is not None and late.state == "succeeded"  # the box did run it: its result wins


def test_hostile_results_are_refused_and_nothing_changes_when_a_box_replies_for_another(world: World) -> None:
    row = world.queue.issue("box-a", Kind.ECHO, {}, "alice")
    with pytest.raises(FrameError, match="differs"):
        world.queue.take_result("box-b", result("box-a", row.id, 1, "succeeded"))
    with pytest.raises(CommandReplyRefused):
        world.queue.take_result("box-b", result("box-b", row.id, 1, "succeeded"))
    with pytest.raises(CommandReplyRefused):  # the right box, the wrong seq
        world.queue.take_result("box-a", result("box-a", row.id, 2, "succeeded"))
    for payload in [b"", b"{", b"x" * 100_000, result("box-a", row.id, 1, "done"),
                    result("box-a", row.id, 1, "succeeded", detail={"Bad Key": 1}),
                    result("box-a", row.id, 1, "succeeded", extra=1), result("box-a", None, None, "succeeded")]:
        with pytest.raises(FrameError):
            world.queue.take_result("box-a", payload)
    assert world.store.commands.command(row.id).state == "pending"  # type: ignore[union-attr]


def test_refusals_are_recorded_per_box_when_a_box_refuses_frames(world: World) -> None:
    row = world.queue.issue("box-a", Kind.ECHO, {}, "alice")
    world.queue.take_result("box-a", result("box-a", None, None, "refused", reason="malformed"))
    refused = world.queue.take_result("box-a", result("box-a", row.id, 1, "refused", reason="untrusted",
                                                      message="no key the box trusts signed it"))
    assert refused is not None and (refused.state, refused.reason) == ("refused", "untrusted")
    summary = world.store.commands.refusals(NOW - 60)
    assert [(r["box_id"], r["refusals"], r["reason"]) for r in summary] == [("box-a", 2, "untrusted")]
    assert world.queue.refusals == 2


def _parts(world: World, box_id: str, command_id: str, plain: bytes, part_bytes: int) -> list[bytes]:
    sealed = command_wire.seal_blob(world.envelope_public, box_id, command_id, plain, data_key=os.urandom(32),
                                    eph_private=os.urandom(32), nonce=os.urandom(12))
    digest = hashlib.sha256(sealed).hexdigest()
    pieces = [sealed[i:i + part_bytes] for i in range(0, len(sealed), part_bytes)]
    return [json.dumps({"v": 1, "box_id": box_id, "id": command_id, "part": n, "parts": len(pieces),
                        "size": len(sealed), "sha256": digest,
                        "data": base64.b64encode(p).decode()}).encode() for n, p in enumerate(pieces)]


def test_bundle_is_assembled_checked_and_opened_when_every_part_arrives(world: World) -> None:
    row = world.queue.issue("box-a", Kind.BUNDLE, {}, "alice")
    plain = os.urandom(250_000)
    parts = _parts(world, "box-a", row.id, plain, command_wire.BLOB_PART_BYTES)
    assert len(parts) == 3
    assert world.queue.take_blob_part("box-a", parts[2]) is False
    assert world.queue.take_blob_part("box-a", parts[0]) is False
    assert world.queue.take_blob_part("box-a", parts[0]) is False  # a resent part
    assert world.queue.bundle(row.id) is None
    assert world.queue.take_blob_part("box-a", parts[1]) is True
    assert world.queue.bundle(row.id) == ("box-a", plain)
    stored = world.store.commands.blob(row.id)
    assert stored is not None and plain[:64] not in stored[1]  # kept sealed


def test_blob_parts_are_refused_when_a_box_sends_them_for_another_or_wrong(world: World) -> None:
    row = world.queue.issue("box-a", Kind.BUNDLE, {}, "alice")
    echo = world.queue.issue("box-a", Kind.ECHO, {}, "alice")
    good = _parts(world, "box-a", row.id, b"bundle bytes", 1024)[0]
    with pytest.raises(CommandReplyRefused):
        world.queue.take_blob_part("box-b", good.replace(b'"box-a"', b'"box-b"'))
    with pytest.raises(CommandReplyRefused):
        world.queue.take_blob_part("box-a", good.replace(row.id.encode(), echo.id.encode()))
    doc = json.loads(good)
    bad_digest = json.dumps({**doc, "sha256": "0" * 64}).encode()
    with pytest.raises(FrameError, match="SHA-256"):
        world.queue.take_blob_part("box-a", bad_digest)
    with pytest.raises(FrameError):
        world.queue.take_blob_part("box-a", json.dumps({**doc, "part": 3}).encode())
    assert world.store.commands.blob(row.id) is None
    assert world.queue.take_blob_part("box-a", good) is True  # the honest one still goes in


def test_config_versions_are_kept_and_numbered_above_what_the_box_reports(world: World) -> None:
    box = Box("box-a", world.signer)
    world.born(box, config_version=4)
    first = world.queue.issue("box-a", Kind.CONFIG, {"document": "[dicom]\nae_title = \"CT1\"\n"}, "root")
    second = world.queue.issue("box-a", Kind.CONFIG, {"document": "[dicom]\nae_title = \"CT2\"\n"}, "root")
    assert world.queue.args_of(first)["version"] == 5 and world.queue.args_of(second)["version"] == 6
    assert [v["version"] for v in world.store.commands.config_versions("box-a")] == [6, 5]
    assert world.queue.config_document("box-a", 5) == "[dicom]\nae_title = \"CT1\"\n"
    assert world.queue.config_document("box-a", 7) is None


def _finish_all(world: World, state: str = "succeeded", only: str | None = None) -> None:
    for row in world.store.commands.commands(state="pending"):
        if only is None or row.box_id == only:
            world.queue.take_result(row.box_id, result(row.box_id, row.id, row.seq, state))


def test_rollout_goes_canary_first_then_waves_when_each_wave_succeeds(world: World) -> None:
    rollouts = Rollouts(world.queue, lambda: 3600.0)
    boxes = [f"box-{n}" for n in range(6)]
    started = rollouts.start(Kind.UPDATE, {"url": "https://updates.example/mgw.bundle", "sha256": "a" * 64,
                                           "version": "2.1"}, boxes, "root", canary=1, wave_size=2)
    assert rollouts.advance() == 1  # the canary
    assert [c.box_id for c in world.store.commands.commands(rollout_id=started.id)] == ["box-0"]
    assert rollouts.advance() == 0  # it has not answered
    _finish_all(world)
    assert rollouts.advance() == 2
    assert sorted(c.box_id for c in world.store.commands.commands(state="pending")) == ["box-1", "box-2"]
    _finish_all(world)
    assert rollouts.advance() == 2
    _finish_all(world)
    assert rollouts.advance() == 1
    _finish_all(world)
    assert rollouts.advance() == 0
    done = world.store.commands.rollout(started.id)
    assert done is not None and done.state == "succeeded"
    progress = rollouts.progress(done)
    assert progress["counts"] == {"succeeded": 6} and [b["wave"] for b in progress["boxes"]] == [0, 1, 1, 2, 2, 3]
    row = world.store.commands.commands(box_id="box-5")[0]
    assert world.queue.args_of(row) == {"url": "https://updates.example/mgw.bundle", "sha256": "a" * 64,
                                        "version": "2.1"}


def test_rollout_stops_at_its_first_failure_when_a_wave_box_fails(world: World) -> None:
    rollouts = Rollouts(world.queue, lambda: 3600.0)
    boxes = [f"box-{n}" for n in range(5)]
    started = rollouts.start(Kind.CONFIG, {"document": "[dicom]\nae_title = \"CT9\"\n"}, boxes, "root",
                             canary=1, wave_size=2)
    rollouts.advance()
    _finish_all(world)
    assert rollouts.advance() == 2
    _finish_all(world, "failed", only="box-1")
    _finish_all(world, "succeeded", only="box-2")
    assert rollouts.advance() == 0
    stopped = world.store.commands.rollout(started.id)
    assert stopped is not None and stopped.state == "stopped" and stopped.detail.startswith("box-1: failed")
    assert rollouts.advance() == 0
    progress = rollouts.progress(stopped)
    assert progress["counts"] == {"succeeded": 2, "failed": 1, "waiting": 2}
    assert world.store.commands.commands(box_id="box-3") == []  # never issued
    assert world.queue.args_of(world.store.commands.commands(box_id="box-0")[0])["version"] == 1


def test_rollout_is_refused_when_its_kind_group_or_waves_are_out_of_range(world: World) -> None:
    rollouts = Rollouts(world.queue, lambda: 3600.0)
    with pytest.raises(ValueError, match="config or an update"):
        rollouts.start(Kind.ECHO, {}, ["box-1"], "root")
    with pytest.raises(ValueError, match="boxes"):
        rollouts.start(Kind.CONFIG, {"document": "a = 1"}, [], "root")
    with pytest.raises(ValueError, match="canary"):
        rollouts.start(Kind.CONFIG, {"document": "a = 1"}, ["box-1"], "root", canary=0)
    with pytest.raises(ValueError):
        rollouts.start(Kind.CONFIG, {"document": "a = ["}, ["box-1"], "root")
    assert world.store.commands.rollouts() == []


def test_config_versions_stay_unique_when_many_threads_issue_configs_at_once(world: World) -> None:
    import threading

    errors: list[Exception] = []

    def issue(n: int) -> None:
        try:
            world.queue.issue("box-a", Kind.CONFIG, {"document": f"n = {n}\n"}, "root")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=issue, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    versions = [v["version"] for v in world.store.commands.config_versions("box-a")]
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    seqs = sorted(r.seq for r in world.store.commands.commands(box_id="box-a"))
    assert seqs == [1, 2, 3, 4, 5, 6]


def test_altered_command_fails_and_other_boxes_go_on_when_its_sealed_arguments_do_not_open(
        world: World, store: FleetStore) -> None:
    a, b = Box("box-a", world.signer), Box("box-b", world.signer)
    world.born(a)
    world.born(b)
    bad = world.queue.issue("box-a", Kind.ECHO, {}, "alice")
    good = world.queue.issue("box-b", Kind.ECHO, {}, "alice")
    other = world.queue.issue("box-b", Kind.ECHO, {}, "alice")
    assert other.seq == 2
    forged = command_rules.seal_args(os.urandom(32), os.urandom(16), bad.id, "box-a", {"_by": "mallory"})
    with store.commands._db.transaction() as tx:  # someone with the database, not the key
        tx.execute("UPDATE commands SET sealed = ? WHERE id = ?", (forged.hex(), bad.id))
    assert world.publish() == 1
    assert box_of(world.sent[-1][0]) == "box-b" and b.open(world.sent[-1][1], NOW).id == good.id
    failed = world.store.commands.command(bad.id)
    assert failed is not None and failed.state == "failed" and failed.message.startswith("not sent")


def box_of(topic: str) -> str:
    return topic.split("/")[2]
