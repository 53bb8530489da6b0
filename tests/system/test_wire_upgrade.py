"""A box upgraded to wire version 2 with version 1 frames still in its outbox: the cloud would
refuse them for ever, so the edge packs those items again and they arrive. Real processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.loopback import LoopbackDeployment
from tests.peers import real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile
from tests.system.test_end_to_end import _send

Deploy = Callable[..., LoopbackDeployment]


def _packed(d: LoopbackDeployment) -> list[tuple[str, int, int, int, int]]:
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT transfer_id, final_seq, frame0_bytes, frame_bytes, packed_bytes FROM items "
                            "WHERE state IN ('packed', 'sending')").fetchall()


def _make_v1(d: LoopbackDeployment) -> int:
    """Set the version byte of every outbox frame to 1, as a box packed before the upgrade has it."""
    frames = 0
    for tid, final_seq, frame0, frame_bytes, _ in _packed(d):
        path = d.edge_dir / "spool" / "outbox" / f"{tid}.frames"
        data = bytearray(path.read_bytes())
        for offset in [0, *(frame0 + (k - 1) * frame_bytes for k in range(1, final_seq + 1))]:
            assert data[offset:offset + 5] == b"MGWC\x02"
            data[offset + 4] = 1
            frames += 1
        path.write_bytes(bytes(data))
    return frames


def test_items_packed_in_v1_are_packed_again_and_delivered_when_the_upgraded_edge_starts(deploy: Deploy) -> None:
    d = deploy()
    d.broker.stop()  # packed but never published: no genuine v2 chunk may reach the cloud first
    files = real_images()[:3]
    _send(d, files)
    wait_for(lambda: len(_packed(d)) == len(files), 120, "every instance packed")
    d.kill_edge()
    old_transfers = {row[0] for row in _packed(d)}
    assert _make_v1(d) >= 2 * len(files)
    d.broker.start()
    d.start_edge()
    wait_for(lambda: acknowledged_count(d) == len(files), 180, "every instance acknowledged after repacking")
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        new_transfers = {row[0] for row in conn.execute("SELECT transfer_id FROM items")}
    assert not new_transfers & old_transfers, "each item was sealed again as a new transfer"
    edge_log = (d.root / "edge.log").read_text(errors="replace")
    assert edge_log.count("frames were sealed in an older wire version; packing again") == len(files)
    assert reconcile(d, files).clean
