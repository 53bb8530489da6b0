"""Two fleet instances running the worklist feed on one fleet store (SQLite file or PostgreSQL),
against a real mosquitto: both run the RIS readers (an order sent to each is one order), only the
leader publishes (the box's seqs only grow), both take the box's status and ack it, and the RIS
gets the status once; when the leader stops, the other publishes the next snapshot."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.authority import ack_keys
from gateway.cloud.fleet.service import FleetService
from gateway.config import (
    CloudSettings,
    FleetSettings,
    FleetWorklistSettings,
    IngestSettings,
    MqttSettings,
    _fill_defaults,
)
from gateway.core import worklist_wire
from gateway.paths import Paths
from tests.adapters.test_hl7_orders import mllp_send, orm
from tests.backends import Backend
from tests.cloud.test_worklist_service import Box, RisEndpoint, steps
from tests.peers import wait_for


def _settings(broker: MosquittoBroker, backend: Backend, worker_id: str, ris: RisEndpoint) -> CloudSettings:
    w = FleetWorklistSettings(enabled=True, publish_s=0.5, hl7_port=0, ris_hl7_host="127.0.0.1",
                              ris_hl7_port=ris.port, retry_s=1.0)
    return _fill_defaults(CloudSettings(
        mqtt=MqttSettings(port=broker.port, reconnect_min_s=0.2), ingest=IngestSettings(worker_id=worker_id),
        fleet=FleetSettings(http_port=0, lease_s=3.0, worklist=w), index=backend.index_settings()))


@pytest.fixture
def ris() -> Iterator[RisEndpoint]:
    endpoint = RisEndpoint()
    yield endpoint
    endpoint.stop()


def test_two_instances_feed_a_box_once_and_pass_its_status_on_once_when_they_share_a_store(
        broker: MosquittoBroker, tmp_path: Path, backend: Backend, ris: RisEndpoint) -> None:
    paths = Paths(tmp_path, tmp_path / "cloud", tmp_path)
    running = [FleetService(_settings(broker, backend, w, ris), paths) for w in ("1", "2")]
    box = None
    try:
        for svc in running:
            svc.start()
            assert svc.link.wait_connected(60)
        keyring = ack_keys.keyring_of(paths.key_file(running[0].settings.cloud.ack_key_file))
        running[0].store.worklist.add_route("ct-01", "CT", "CT1", "", 0.0)
        today = time.strftime("%Y%m%d", time.gmtime())
        order = tmp_path / "order.hl7"
        order.write_text(orm("O1", step="S1", accession="ACC-S1").replace("20261203093000", today + "093000"))
        for svc in running:  # the RIS sends the same order to both: one order
            assert "MSA|AA|O1" in mllp_send(svc.ports()["hl7"], order).replace("\r", "\n")
        box = Box(broker, "ct-01")
        box.birth()
        wait_for(lambda: set(steps(box.worklist(keyring))) == {"S1"}, 90, "the box's worklist")
        wait_for(lambda: sum(s.leading for s in running) == 1, 60, "one leader")
        wait_for(lambda: sum(s.worklist.frames for s in running if s.worklist) == 1, 30, "the frame counted")
        assert [s.worklist.frames for s in running if s.worklist and not s.leading] == [0]  # only the leader publishes
        ref = steps(box.worklist(keyring))["S1"]

        box.status(ref, "COMPLETED")
        wait_for(lambda: len(box.acks) == 2, 60, "both instances' acks (a duplicate ack is a no-op at the box)")
        assert all(worklist_wire.verify_status_ack(a, "ct-01", keyring) == (ref, "COMPLETED") for a in box.acks)
        wait_for(lambda: ris.messages, 60, "the status at the RIS")
        wait_for(lambda: box.worklist(keyring) is not None and steps(box.worklist(keyring)) == {}, 60,
                 "the step off the worklist")
        assert len(ris.messages) == 1 and str(ris.messages[0].segment("ORC")[5]) == "CM"

        leader = next(s for s in running if s.leading)
        running.remove(leader)
        leader.stop()  # releases the lease: the other takes it and publishes what changes next
        second = tmp_path / "order2.hl7"
        second.write_text(orm("O2", step="S2", accession="ACC-S2").replace("20261203093000", today + "100000"))
        assert "MSA|AA|O2" in mllp_send(running[0].ports()["hl7"], second).replace("\r", "\n")
        wait_for(lambda: set(steps(box.worklist(keyring))) == {"S2"}, 90, "the next snapshot, from the new leader")
        seqs = [worklist_wire.peek_seq(f) for f in box.frames if f]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs  # the seq only grows
        assert json.loads(json.dumps(running[0].store.worklist.outbox_counts())) == {
            "pending": 0, "max_attempts": 0, "sent": 1}
    finally:
        if box is not None:
            box.link.stop()
        for svc in running:
            svc.stop()
