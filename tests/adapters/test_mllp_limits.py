"""The MLLP listener's bounds (adapters/mllp.py) with real sockets: a connection over the limit, one
from a peer not allowed and one idle past the timeout are closed; the server serves the next one.
And the status update the cloud sends a RIS (adapters/hl7_orders.status_message) read back by hl7apy."""

from __future__ import annotations

import socket
import time

from gateway.adapters import hl7_orders, mllp
from gateway.adapters.mllp import MllpServer
from gateway.core import schema
from tests.adapters.test_hl7_orders import orm
from tests.peers import wait_for


def _ack_of(port: int) -> str:
    answer = mllp.send("127.0.0.1", port, orm("M1").encode(), timeout_s=10)
    return hl7_orders.ack_code(answer)[0]


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_connection_over_the_limit_is_closed_and_the_next_is_served_when_one_ends() -> None:
    server = MllpServer("127.0.0.1", 0, lambda raw: hl7_orders.answer(raw, lambda o: None), max_connections=1)
    server.start()
    try:
        first = socket.create_connection(("127.0.0.1", server.port))
        wait_for(lambda: server._slots._value == 0, 30, "the first connection served")  # noqa: SLF001
        second = socket.create_connection(("127.0.0.1", server.port))
        assert _closed(second) and server.refused == 1
        first.close()
        wait_for(lambda: server._slots._value == 1, 30, "the first connection's slot free")  # noqa: SLF001
        assert _ack_of(server.port) == "AA"
    finally:
        server.stop()


def test_connection_is_closed_when_its_peer_is_not_allowed() -> None:
    server = MllpServer("127.0.0.1", 0, lambda raw: hl7_orders.answer(raw, lambda o: None),
                        allowed_peers=("10.9.0.0/16",))
    server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        assert _closed(sock) and server.refused == 1
    finally:
        server.stop()
    allowed = MllpServer("127.0.0.1", 0, lambda raw: hl7_orders.answer(raw, lambda o: None),
                         allowed_peers=("127.0.0.0/8",))
    allowed.start()
    try:
        assert _ack_of(allowed.port) == "AA"
    finally:
        allowed.stop()


def test_idle_connection_is_closed_when_it_sends_nothing_past_the_timeout() -> None:
    server = MllpServer("127.0.0.1", 0, lambda raw: hl7_orders.answer(raw, lambda o: None), timeout_s=0.5)
    server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        started = time.monotonic()
        assert _closed(sock) and time.monotonic() - started < 9
    finally:
        server.stop()


def test_status_update_carries_the_orders_identifiers_and_order_status_when_read_by_hl7apy() -> None:
    from hl7apy.parser import parse_message

    entry = schema.convert(schema.WorklistEntry, {
        "accession_number": "ACC|1", "patient_name": "张^伟", "patient_id": "PID-1", "requested_procedure_id": "RP1",
        "step": {"step_id": "S1", "modality": "CT", "description": "head & neck"}}, "test")
    raw = hl7_orders.status_message(entry, "COMPLETED", "MGW7", at=1796371200.0)
    message = parse_message(raw.decode("utf-8"), find_groups=False)
    field = hl7_orders._field  # noqa: SLF001 - the reader of the orders reads the status back
    assert (field(message, "MSH", 9, 1), field(message, "MSH", 9, 2), field(message, "MSH", 10)) == (
        "ORM", "O01", "MGW7")
    assert (field(message, "ORC", 1), field(message, "ORC", 5)) == ("SC", "CM")
    assert (field(message, "OBR", 18), field(message, "OBR", 19), field(message, "OBR", 20),
            field(message, "OBR", 24)) == ("ACC\\F\\1", "RP1", "S1", "CT")  # the delimiter escaped
    assert field(message, "PID", 5, 1) == "张" and field(message, "PID", 5, 2) == "伟"
    assert {hl7_orders.ORDER_STATUS[s] for s in ("IN PROGRESS", "COMPLETED", "DISCONTINUED")} == {"IP", "CM", "DC"}
