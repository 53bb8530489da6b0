"""The uplink sender and the packer on a real spool: real sealed blobs, real outbox files, real
signed acks; the broker's side is a recorder of what was published (the sender's ``Publisher``)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.adapters.store import SpoolItem
from gateway.core.acksig import AckSigner
from gateway.core.framing import WIRE_VERSION, AckFrame, AckKind, RejectReason, parse_chunk
from gateway.core.spool import ItemState
from gateway.core.transfer import Manifest, open_object, unwrap_key
from gateway.edge import cache
from gateway.edge.packer import Packer, frame_offset, outbox_path
from gateway.edge.sender import PERSIST_EVERY_S, Sender
from tests.edge.conftest import BOX_ID, Box

MakeBox = Callable[..., Box]


@dataclass
class Wire:
    """The broker as the sender sees it: what was published, in order; ``up = False`` refuses (link down)."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)
    up: bool = True

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                expiry_s: int | None = None) -> bool:
        if not self.up:
            return False
        self.sent.append((topic, payload))
        return True

    def seqs(self, item: SpoolItem) -> list[int]:
        return [parse_chunk(p).seq for t, p in self.sent if t.endswith(item.transfer_id or "?")]


def packed(box: Box, item: SpoolItem) -> SpoolItem:
    packer = Packer(box.settings, box.store, box.paths.blob_dir, box.paths.outbox_dir,
                    base64.b64decode(box.settings.box.cloud_public_key), box.clock, cache_key=box.cache_key)
    assert packer.pack_one(item)
    done = box.store.get(item.id)
    assert done is not None and done.state is ItemState.PACKED
    return done


def sender(box: Box, wire: Wire) -> Sender:
    keyring = box.keyring
    return Sender(box.settings, box.store, box.paths.outbox_dir, box.paths.blob_dir, wire, box.clock,
                  lambda: keyring)


def ack(box: Box, item: SpoolItem, kind: AckKind, ranges: tuple[tuple[int, int], ...] = (), sha: str = "",
        reason: RejectReason = RejectReason.NONE, signer: AckSigner | None = None) -> bytes:
    assert item.transfer_id is not None
    frame = AckFrame(kind, bytes.fromhex(item.transfer_id), ranges, bytes.fromhex(sha), reason)
    return frame.encode(BOX_ID, signer or box.signer)


def restored(box: Box, wire: Wire, item: SpoolItem) -> tuple[Manifest, bytes]:
    """What the cloud gets back from the frames on the wire (each seq once, in order)."""
    by_seq = {}
    for topic, payload in wire.sent:
        if topic.endswith(item.transfer_id or "?"):
            frame = parse_chunk(payload)
            by_seq.setdefault(frame.seq, frame)
    frames = [by_seq[s] for s in sorted(by_seq)]
    out = list(open_object(BOX_ID, unwrap_key(box.cloud_private, frames[0]), frames, 10**9))
    manifest = out[0]
    assert isinstance(manifest, Manifest)
    return manifest, b"".join(p for p in out[1:] if isinstance(p, bytes))


def test_packed_frames_lie_in_the_outbox_at_the_offsets_the_item_records_when_an_item_is_packed(
        make_box: MakeBox) -> None:
    box = make_box()
    item = packed(box, box.receive())
    raw = outbox_path(box.paths.outbox_dir, item.transfer_id or "").read_bytes()
    assert item.final_seq is not None and item.final_seq >= 3  # several chunks of at most 2048 bytes
    assert len(raw) == item.packed_bytes
    for seq in range(item.final_seq + 1):
        offset, length = frame_offset(item, seq)
        frame = parse_chunk(raw[offset:offset + length])
        assert (frame.seq, frame.final, raw[offset + 4]) == (seq, seq == item.final_seq, WIRE_VERSION)
        assert length <= 2048
    assert frame_offset(item, item.final_seq)[0] + frame_offset(item, item.final_seq)[1] == len(raw)


def test_packer_quarantines_at_once_when_the_spooled_blob_no_longer_matches_its_hash(make_box: MakeBox) -> None:
    box = make_box()
    item = box.receive()
    damaged = bytearray(box.original(item))
    damaged[-1] ^= 0x01  # the disk flipped a bit of the original
    cache.write_sealed(box.paths.blob_dir / item.blob_name, box.cache_key, [bytes(damaged)])
    packer = Packer(box.settings, box.store, box.paths.blob_dir, box.paths.outbox_dir,
                    base64.b64decode(box.settings.box.cloud_public_key), box.clock, cache_key=box.cache_key)
    assert not packer.pack_one(item)
    after = box.store.get(item.id)
    assert after is not None and after.state is ItemState.QUARANTINED and "hash" in (after.reason or "")
    assert list(box.paths.outbox_dir.iterdir()) == []  # nothing sealed for the cloud from damaged bytes


def test_packer_lowers_its_frames_to_the_broker_limit_but_never_below_the_minimum_when_one_is_known(
        make_box: MakeBox) -> None:
    box = make_box(uplink={"max_frame_bytes": 8192})
    cloud = base64.b64decode(box.settings.box.cloud_public_key)

    def packer(limit: int) -> Packer:
        return Packer(box.settings, box.store, box.paths.blob_dir, box.paths.outbox_dir, cloud, box.clock,
                      frame_limit=lambda: limit)

    assert packer(0).frame_bytes() == 8192  # no limit known: as configured
    assert packer(4000).frame_bytes() == 4000
    assert packer(100).frame_bytes() == 1148  # MIN_FRAME_BYTES: a frame still carries a useful payload
    assert packer(10**6).frame_bytes() == 8192


def test_cloud_restores_the_original_and_the_item_is_acknowledged_when_progress_then_stored_acks_arrive(
        make_box: MakeBox) -> None:
    box = make_box()
    item = packed(box, box.receive())
    assert item.final_seq is not None
    wire = Wire()
    s = sender(box, wire)
    assert s.pump() == 4  # window_chunks: no more unacknowledged at once
    assert s.pump() == 0
    staged = 0
    while staged <= item.final_seq:
        staged = min(staged + 4, item.final_seq + 1)
        s.on_ack(ack(box, item, AckKind.PROGRESS, ((0, staged),)))
        s.pump()
    assert wire.seqs(item) == list(range(item.final_seq + 1))  # each chunk once, in order
    manifest, data = restored(box, wire, item)
    assert data == box.original(item) and manifest.identity.sha256 == item.identity.sha256
    assert box.store.get(item.id).state is ItemState.SENDING  # type: ignore[union-attr]
    s.on_ack(ack(box, item, AckKind.STORED, sha=item.identity.sha256))
    done = box.store.get(item.id)
    assert done is not None and done.state is ItemState.ACKNOWLEDGED
    assert not outbox_path(box.paths.outbox_dir, item.transfer_id or "").exists()
    assert (box.paths.blob_dir / item.blob_name).exists()  # kept for the retention period
    assert (s.stats.objects_acked, s.stats.acks_bad, s.stats.resent_chunks) == (1, 0, 0)


def test_ack_changes_nothing_when_signed_by_a_key_outside_the_keyring_or_naming_another_object(
        make_box: MakeBox) -> None:
    box = make_box()
    item = packed(box, box.receive())
    wire = Wire()
    s = sender(box, wire)
    s.pump()
    forger = AckSigner(bytes(range(32)))  # a key of the forger's own: the box's disk holds no signing key
    s.on_ack(ack(box, item, AckKind.STORED, sha=item.identity.sha256, signer=forger))
    s.on_ack(ack(box, item, AckKind.STORED, sha="00" * 32))  # genuine signature, another object's hash
    s.on_ack(b"not an ack at all")
    after = box.store.get(item.id)
    assert after is not None and after.state is ItemState.SENDING
    assert outbox_path(box.paths.outbox_dir, item.transfer_id or "").exists()
    assert s.stats.acks_bad == 3 and s.stats.objects_acked == 0


def test_item_is_quarantined_and_its_outbox_dropped_when_the_cloud_rejects_it(make_box: MakeBox) -> None:
    box = make_box()
    item = packed(box, box.receive())
    s = sender(box, Wire())
    s.pump()
    s.on_ack(ack(box, item, AckKind.REJECTED, reason=RejectReason.INTEGRITY))
    after = box.store.get(item.id)
    assert after is not None and after.state is ItemState.QUARANTINED and after.reason == "cloud: INTEGRITY"
    assert not outbox_path(box.paths.outbox_dir, item.transfer_id or "").exists()
    assert (box.paths.blob_dir / item.blob_name).exists()  # the original stays for an operator
    assert s.stats.objects_rejected == 1


def test_restarted_sender_sends_only_unacknowledged_chunks_when_progress_was_persisted(make_box: MakeBox) -> None:
    box = make_box(uplink={"window_chunks": 64})
    item = packed(box, box.receive())
    assert item.final_seq is not None
    first = Wire()
    s = sender(box, first)
    s.pump()
    assert first.seqs(item) == list(range(item.final_seq + 1))
    box.clock.now += PERSIST_EVERY_S  # persisted at most this often
    s.on_ack(ack(box, item, AckKind.PROGRESS, ((0, 2),)))
    s.close()  # the service stops (or dies) here

    again = Wire()
    restarted = sender(box, again)
    restarted.pump()
    assert again.seqs(item) == list(range(2, item.final_seq + 1))


def test_nothing_counts_as_sent_when_the_link_refuses_and_everything_goes_out_once_it_is_back(
        make_box: MakeBox) -> None:
    box = make_box(uplink={"window_chunks": 64})
    item = packed(box, box.receive())
    wire = Wire(up=False)
    s = sender(box, wire)
    assert s.pump() == 0 and s.in_flight() == 0
    assert box.store.get(item.id).state is ItemState.PACKED  # type: ignore[union-attr]
    wire.up = True
    s.link_changed(True)
    assert s.pump() == (item.final_seq or 0) + 1
    assert box.store.get(item.id).state is ItemState.SENDING  # type: ignore[union-attr]


def test_stat_item_goes_out_before_routine_ones_when_it_arrives_after_them(make_box: MakeBox) -> None:
    box = make_box(uplink={"transfers_in_flight": 1, "window_chunks": 1})
    routine = packed(box, box.receive("CT_small.dcm"))
    stat = packed(box, box.receive("MR_small.dcm", priority=10))
    wire = Wire()
    s = sender(box, wire)
    s.pump()
    assert wire.seqs(stat) == [0] and wire.seqs(routine) == []


def test_unacknowledged_chunks_are_resent_when_the_ack_timeout_passes(make_box: MakeBox) -> None:
    box = make_box(uplink={"window_chunks": 64, "ack_timeout_s": 5.0})
    item = packed(box, box.receive())
    assert item.final_seq is not None
    wire = Wire()
    s = sender(box, wire)
    s.pump()
    s.on_ack(ack(box, item, AckKind.PROGRESS, ((0, item.final_seq),)))  # all but the last staged
    assert s.pump() == 0
    box.clock.now += 60.0
    assert s.pump() == 1
    assert wire.seqs(item)[-1] == item.final_seq and s.stats.resent_chunks == 1


def test_bytes_in_flight_stay_within_the_window_when_many_transfers_are_due(make_box: MakeBox) -> None:
    box = make_box(uplink={"window_chunks": 1024, "window_bytes": 131072, "transfers_in_flight": 16})
    items = [packed(box, box.receive(name)) for name in ("CT_small.dcm", "MR_small.dcm") * 6]
    wire = Wire()
    s = sender(box, wire)
    assert s.path.window_bytes() == 131072  # the ceiling, below the 2 MiB floor: the ceiling wins
    s.pump()
    assert 131072 - 2048 < s.in_flight_bytes() < 131072 + 2048  # the bytes limit, not the chunks
    assert s.in_flight() < 1024
    assert s.pump() == 0
    busy = [i for i in items if wire.seqs(i)]
    first = box.store.get(busy[0].id)
    assert first is not None and first.final_seq is not None
    s.on_ack(ack(box, first, AckKind.PROGRESS, ((0, first.final_seq + 1),)))
    assert s.pump() > 0  # the acked bytes made room
    assert s.in_flight_bytes() < 131072 + 2048
    assert sum(len(p) for _, p in wire.sent) >= 131072 + sum(frame_offset(first, q)[1]
                                                             for q in range(first.final_seq + 1)) - 2048


def test_a_link_cut_resends_at_most_one_window_when_the_link_comes_back(make_box: MakeBox) -> None:
    box = make_box(uplink={"window_chunks": 24, "transfers_in_flight": 4})
    items = [packed(box, box.receive(name)) for name in ("CT_small.dcm", "MR_small.dcm", "CT_small.dcm")]
    wire = Wire()
    s = sender(box, wire)
    s.pump()
    staged = {}
    for item in items:  # the cloud staged the first half of what it got of each transfer
        seqs = wire.seqs(item)
        if seqs:
            staged[item.id] = len(seqs) // 2
            s.on_ack(ack(box, box.store.get(item.id) or item, AckKind.PROGRESS, ((0, max(1, len(seqs) // 2)),)))
    in_flight = s.in_flight()
    before = {(t, parse_chunk(p).seq) for t, p in wire.sent}
    wire.sent.clear()
    wire.up = False
    s.link_changed(False)
    assert s.pump() == 0  # the link is down: nothing goes, nothing counts as sent
    wire.up = True
    s.link_changed(True)
    s.pump()
    again = [(t, parse_chunk(p).seq) for t, p in wire.sent if (t, parse_chunk(p).seq) in before]
    assert 0 < len(again) <= in_flight <= 24  # at most what was in flight at the cut: one window
    for item in items:  # nothing the cloud had staged went out again
        assert all(seq >= max(1, staged.get(item.id, 0)) for t, seq in again if t.endswith(item.transfer_id or "?"))


def test_a_resumed_session_republishes_nothing_at_once_and_only_the_unacknowledged_after_the_ack_timeout(
        make_box: MakeBox) -> None:
    box = make_box(uplink={"window_chunks": 24, "transfers_in_flight": 4, "ack_timeout_s": 5.0})
    item = packed(box, box.receive("CT_small.dcm"))
    wire = Wire()
    s = sender(box, wire)
    s.pump()
    sent = wire.seqs(item)
    assert len(sent) >= 2
    wire.sent.clear()
    wire.up = False
    s.link_changed(False)
    wire.up = True
    s.link_changed(True, resumed=True)  # the broker kept the session: paho redelivers, the acks follow
    s.pump()
    assert wire.seqs(item) == [] and s.in_flight() == len(sent)
    s.on_ack(ack(box, box.store.get(item.id) or item, AckKind.PROGRESS, ((0, len(sent) - 1),)))  # queued acks
    box.clock.now += 60.0  # the last one's ack never comes: it goes again after the ack timeout, alone
    s.pump()
    assert wire.seqs(item)[:1] == [sent[-1]] and sent[0] not in wire.seqs(item)
