"""The RIS side of the feed (cloud/worklist/ris.py) against real sockets: a poll that fails keeps the
orders as they were and records the error; a status the RIS refuses stays queued and is sent
again after ``retry_s``, then once the RIS takes it, never again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters import hl7_orders
from gateway.adapters.mllp import MllpServer
from gateway.cloud.fleet.store import FleetStore
from gateway.cloud.worklist.feed import WorklistFeed
from gateway.cloud.worklist.ris import HL7, MWL, MwlPoller, StatusSender
from gateway.config import FleetWorklistSettings
from gateway.core import acksig, schema
from gateway.core.schema import WorklistEntry
from tests.backends import Backend
from tests.peers import closed_port

NOW = 1796371200.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FleetStore]:
    s = Backend("sqlite").fleet_store(tmp_path)
    yield s
    s.close()


class Clock:
    now = NOW

    def __call__(self) -> float:
        return self.now


def entry(step: str) -> WorklistEntry:
    return schema.convert(WorklistEntry, {"accession_number": f"ACC-{step}", "patient_name": "Doe^John",
                                          "step": {"step_id": step, "modality": "CT", "station_ae_title": "CT1",
                                                   "start_date": "20261204"}}, "test")


def test_failed_poll_keeps_the_orders_and_records_the_error_when_the_ris_is_unreachable(store: FleetStore) -> None:
    clock = Clock()
    with closed_port() as port:
        w = FleetWorklistSettings(enabled=True, mwl_host="127.0.0.1", mwl_port=port, mwl_called_ae="RIS")
        feed = WorklistFeed(store.worklist, w, acksig.AckSigner(os.urandom(32)), os.urandom(32), "mgw/v1", clock)
        feed.take_set(MWL, [entry("S1"), entry("S2")])
        MwlPoller(feed, w, clock).poll()
    assert len(store.worklist.order_keys(MWL)) == 2  # not cancelled by a poll that did not answer
    [source] = store.worklist.sources()
    assert source["errors"] == 1 and f"127.0.0.1:{port}" in source["last_error"] and source["last_ok"] is None


def test_refused_status_is_sent_again_after_retry_s_and_once_taken_never_again(store: FleetStore) -> None:
    clock = Clock()
    answers = ["AE", "AA"]
    seen: list[bytes] = []

    def ris(raw: bytes) -> bytes:
        seen.append(raw)
        return hl7_orders.ack(raw, answers.pop(0) if answers else "AA")

    server = MllpServer("127.0.0.1", 0, ris)
    server.start()
    try:
        w = FleetWorklistSettings(enabled=True, ris_hl7_host="127.0.0.1", ris_hl7_port=server.port, retry_s=60.0)
        feed = WorklistFeed(store.worklist, w, acksig.AckSigner(os.urandom(32)), os.urandom(32), "mgw/v1", clock)
        sender = StatusSender(feed, w, lambda: True, clock)
        feed.upsert(HL7, entry("H1"))
        store.worklist.add_route("ct-01", "CT", "CT1", "", NOW)
        order = store.worklist.open_orders(["CT"], "20261201", "20261231")[0]
        status = {"v": 1, "box_id": "ct-01", "ref": order.ref, "status": "COMPLETED", "at": NOW}
        feed.take_status("ct-01", json.dumps(status).encode())
        assert sender.drain() == 0 and len(seen) == 1  # AE: kept
        assert store.worklist.outbox_counts() == {"pending": 1, "max_attempts": 1, "sent": 0}
        assert sender.drain() == 0 and len(seen) == 1  # not due before retry_s
        clock.now += 61
        assert sender.drain() == 1 and len(seen) == 2
        clock.now += 3600
        assert sender.drain() == 0 and len(seen) == 2
        assert store.worklist.outbox_counts() == {"pending": 0, "max_attempts": 0, "sent": 1}
        assert b"ORC|SC|" in seen[1] and b"Doe" in seen[1]  # the RIS gets its own order's patient back
    finally:
        server.stop()


def test_hl7_listener_is_a_local_error_naming_the_address_when_its_port_is_taken(store: FleetStore) -> None:
    import socket

    from gateway.cloud.worklist.ris import Hl7Listener
    from gateway.core.errors import LocalError

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        w = FleetWorklistSettings(enabled=True, hl7_port=port)
        feed = WorklistFeed(store.worklist, w, acksig.AckSigner(os.urandom(32)), os.urandom(32), "mgw/v1", Clock())
        with pytest.raises(LocalError, match=f"127.0.0.1:{port}"):
            Hl7Listener(feed, w)
    finally:
        holder.close()
