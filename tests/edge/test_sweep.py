"""What a crash leaves in the spool and what the edge's start makes of it (EdgeService._sweep):
scratch files of receptions that were never acknowledged go, anything a row names stays."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from gateway.adapters import blobs
from gateway.adapters.store import SpoolItem
from gateway.core import spool
from gateway.core.spool import ItemState
from gateway.edge import ack_keyring, cache
from gateway.edge.packer import Packer, outbox_path
from gateway.edge.service import EdgeService
from tests.edge.conftest import Box
from tests.peers import closed_port

MakeBox = Callable[..., Box]


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file()}


def _crash_leftovers(incoming: Path, key: bytes) -> list[Path]:
    """An association cut mid-dataset, one landed but never adopted (no 0x0000 went out), and an
    empty file: what the listener's scratch looks like after a power cut."""
    partial = blobs.SealingFile(incoming / "4f1c0e7e9b2a4c8f8d3c6b5a4e3d2c1b.part", key)
    partial.write(os.urandom(300_000))  # never finished
    landed = blobs.SealingFile(incoming / "9a8b7c6d5e4f40312233445566778899.part", key)
    landed.write(os.urandom(50_000))
    landed.finish()
    os.rename(landed.path, incoming / "9a8b7c6d5e4f40312233445566778899.dcm.mgwc")
    (incoming / "0b1c2d3e4f5a46b7c8d9e0f1a2b3c4d5.part").write_bytes(b"")
    return sorted(incoming.iterdir())


def test_start_removes_crash_scratch_from_incoming_and_keeps_everything_a_row_names_when_the_edge_restarts(
        make_box: MakeBox) -> None:
    with closed_port() as no_broker:
        box = make_box(mqtt={"host": "127.0.0.1", "port": no_broker}, health={"metrics_bind": ""})
        cloud = base64.b64decode(box.settings.box.cloud_public_key)
        packer = Packer(box.settings, box.store, box.paths.blob_dir, box.paths.outbox_dir, cloud, box.clock,
                        cache_key=box.cache_key)
        received: SpoolItem = box.receive("CT_small.dcm")
        packed = box.receive("MR_small.dcm")
        assert packer.pack_one(packed)
        acked = box.receive("SC_rgb.dcm")
        assert packer.pack_one(acked)
        for event in (spool.SendStarted(), spool.CloudStored()):
            done, effects = box.store.transition(acked.id, event, box.clock())
        assert spool.Effect.DELETE_OUTBOX in effects  # as the sender does at the STORED ack
        blobs.remove(outbox_path(box.paths.outbox_dir, done.transfer_id or ""))
        quarantined = box.paths.quarantine_dir / f"{received.identity.sha256[:16]}.dcm{cache.SEALED_SUFFIX}"
        cache.write_sealed(quarantined, box.cache_key, [b"an unparseable dataset kept for an operator"])
        ack_keyring.save(ack_keyring.keyring_path(box.paths.state_dir), box.keyring)
        box.store.close()

        scratch = _crash_leftovers(box.paths.incoming_dir, box.cache_key)
        assert len(scratch) == 3
        blobs_before, outbox_before = _digests(box.paths.blob_dir), _digests(box.paths.outbox_dir)
        quarantine_before, keys_before = _digests(box.paths.quarantine_dir), _digests(box.paths.state_dir / "keys")
        assert len(blobs_before) == 3 and len(outbox_before) == 1  # the acked item's outbox went at its ack

        edge = EdgeService(box.settings, box.paths, clock=box.clock)
        edge.start()
        try:
            assert list(box.paths.incoming_dir.iterdir()) == []  # swept before the listener took a call
            assert _digests(box.paths.blob_dir) == blobs_before  # every original the spool names, unchanged
            assert {k: v for k, v in _digests(box.paths.outbox_dir).items() if k in outbox_before} == outbox_before
            assert _digests(box.paths.quarantine_dir) == quarantine_before
            keys_after = _digests(box.paths.state_dir / "keys")  # the start may add a key, never change one
            assert {k: v for k, v in keys_after.items() if k in keys_before} == keys_before
            states = {i.id: i.state for i in edge.store.in_state(*ItemState, limit=100)}
            assert states[packed.id] is ItemState.PACKED and states[acked.id] is ItemState.ACKNOWLEDGED
            assert states[received.id] in (ItemState.RECEIVED, ItemState.PACKED)  # the packer may have begun
        finally:
            edge.stop()


def test_start_removes_orphans_no_row_names_when_a_crash_came_between_file_and_commit(make_box: MakeBox) -> None:
    with closed_port() as no_broker:
        box = make_box(mqtt={"host": "127.0.0.1", "port": no_broker}, health={"metrics_bind": ""},
                       uplink={"pixel_codec": False})
        cloud = base64.b64decode(box.settings.box.cloud_public_key)
        kept = box.receive("CT_small.dcm")
        assert Packer(box.settings, box.store, box.paths.blob_dir, box.paths.outbox_dir, cloud, box.clock,
                      cache_key=box.cache_key).pack_one(kept)
        kept = box.store.get(kept.id)  # type: ignore[assignment]
        ack_keyring.save(ack_keyring.keyring_path(box.paths.state_dir), box.keyring)
        box.store.close()
        # adopted blob whose row never committed; outbox written for a pack that never committed;
        # a write_atomic temporary cut short
        cache.write_sealed(box.paths.blob_dir / f"deadbeefdeadbeef-x.dcm{cache.SEALED_SUFFIX}", box.cache_key, [b"x"])
        outbox_path(box.paths.outbox_dir, "ab" * 16).write_bytes(b"frames nobody will send")
        (box.paths.blob_dir / ".y.dcm.0123.tmp").write_bytes(b"half")

        edge = EdgeService(box.settings, box.paths, clock=box.clock)
        edge.start()
        try:
            assert sorted(p.name for p in box.paths.blob_dir.iterdir()) == [kept.blob_name]
            assert [p.name for p in box.paths.outbox_dir.iterdir()] == [f"{kept.transfer_id}.frames"]
        finally:
            edge.stop()
