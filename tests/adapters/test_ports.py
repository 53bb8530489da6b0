"""Listening ports: a service reports what it bound; a third-party peer is retried when its port was taken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.adapters import ports
from gateway.adapters.mosquitto import MosquittoBroker
from gateway.core.errors import LocalError, PortInUseError
from gateway.supervision import StartRecord, run_service
from tests.peers import _missing, wait_for


@contextmanager
def listener() -> Iterator[int]:
    """A socket of this process listening on a loopback port (anyone's port, as far as a peer can tell)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield int(sock.getsockname()[1])


def _mosquitto(workdir: Path, port: int = 0) -> MosquittoBroker:
    try:
        return MosquittoBroker(workdir, port=port, persistence=False)
    except LocalError as exc:
        _missing(str(exc))


def test_report_names_the_pid_and_ports_and_is_trusted_only_while_that_pid_runs(tmp_path: Path) -> None:
    ports.record(tmp_path, "edge", {"dicom": 40123, "metrics": 40124})
    assert ports.read(tmp_path, "edge") == ports.Report(os.getpid(), {"dicom": 40123, "metrics": 40124})
    assert ports.reported(tmp_path, "edge", "dicom") == 40123
    assert ports.bound_port(0, tmp_path, "edge", "dicom") == 40123
    assert ports.bound_port(11112, tmp_path, "edge", "dicom") == 11112  # a configured port wins
    dead = subprocess.Popen(["true"])
    dead.wait()
    ports.report_path(tmp_path, "edge").write_text(f'{{"pid": {dead.pid}, "ports": {{"dicom": 40123}}}}')
    assert ports.reported(tmp_path, "edge", "dicom") is None  # left by a process that is gone
    assert ports.bound_port(0, tmp_path, "edge", "dicom") == 0


def test_report_is_ignored_when_it_is_garbage(tmp_path: Path) -> None:
    path = ports.report_path(tmp_path, "fleet-1")
    path.parent.mkdir(parents=True)
    for text in ("", "{", "[]", '{"pid": "x", "ports": {}}', '{"pid": 1, "ports": []}', '{"pid": 1}'):
        path.write_text(text)
        assert ports.read(tmp_path, "fleet-1") is None, text


def test_clear_removes_only_this_process_report_when_a_service_stops(tmp_path: Path) -> None:
    ports.record(tmp_path, "edge", {"dicom": 1})
    ports.clear(tmp_path, "edge")
    assert not ports.report_path(tmp_path, "edge").exists()
    ports.report_path(tmp_path, "edge").write_text('{"pid": 1, "ports": {"dicom": 2}}')  # another process's
    ports.clear(tmp_path, "edge")
    assert ports.read(tmp_path, "edge") == ports.Report(1, {"dicom": 2})


def test_listens_is_true_only_for_the_process_that_holds_the_listening_socket_when_asked() -> None:
    with listener() as port:
        assert ports.listens(os.getpid(), port)
        other = subprocess.Popen(["sleep", "60"])
        try:
            assert not ports.listens(other.pid, port)  # someone listens there, but not that process
        finally:
            other.kill()
            other.wait()
    with socket.socket() as bound:  # bound, never listening: nobody listens
        bound.bind(("127.0.0.1", 0))
        assert not ports.listens(os.getpid(), bound.getsockname()[1])


def test_on_free_port_tries_fresh_ports_while_the_pick_was_taken_and_gives_up_after_its_attempts() -> None:
    tried: list[tuple[int, int]] = []

    def start(a: int, b: int) -> tuple[int, int]:
        tried.append((a, b))
        if len(tried) < 3:
            raise PortInUseError("taken")
        return a, b

    assert ports.on_free_port(start, count=2) == tried[-1]
    assert len(tried) == 3 and all(a != b for a, b in tried)

    def never(port: int) -> int:
        raise PortInUseError(f"{port} taken")

    with pytest.raises(LocalError, match="no free port held after 4 attempts"):
        ports.on_free_port(never, attempts=4)


def test_mosquitto_start_fails_as_port_in_use_when_another_listener_holds_its_port(tmp_path: Path) -> None:
    with listener() as port:
        broker = _mosquitto(tmp_path / "broker", port)
        with pytest.raises(PortInUseError, match="already in use"):
            broker.start()  # the other listener answers on the port; it must not pass for mosquitto
        assert not broker.running()


def test_mosquitto_runs_on_another_port_when_its_pick_was_taken_before_it_bound(tmp_path: Path) -> None:
    holders: list[socket.socket] = []
    brokers: list[MosquittoBroker] = []

    def start(port: int) -> MosquittoBroker:
        if not holders:  # someone else takes the first pick between the pick and mosquitto's bind
            holders.append(socket.create_server(("127.0.0.1", port)))
        broker = _mosquitto(tmp_path / f"broker-{len(brokers)}", port)
        brokers.append(broker)
        broker.start()
        return broker

    try:
        broker = ports.on_free_port(start)
        assert len(brokers) == 2 and broker.port != holders[0].getsockname()[1]
        assert broker.running() and ports.listens(broker._proc.pid, broker.port)  # type: ignore[union-attr]
    finally:
        for b in brokers:
            b.stop()
        for sock in holders:
            sock.close()


def test_mosquitto_keeps_its_port_when_restarted(tmp_path: Path) -> None:
    broker = _mosquitto(tmp_path / "broker")
    assert broker.port == 0
    broker.start()
    first = broker.port
    try:
        broker.stop()
        broker.start()
        assert broker.port == first and broker.running()
    finally:
        broker.stop()


class _Listening:
    """A service with one listener on any free port, as ``run_service`` runs the real ones."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.healthy = True

    def start(self) -> None: ...

    def stop(self) -> None:
        self.sock.close()

    def alive(self) -> bool:
        return self.healthy

    def ports(self) -> dict[str, int]:
        return {"api": int(self.sock.getsockname()[1])}


def test_run_service_reports_the_bound_port_while_running_and_removes_it_when_stopped(tmp_path: Path) -> None:
    service = _Listening()
    bound = service.ports()["api"]
    seen: list[ports.Report | None] = []

    def look_then_stop() -> None:
        seen.append(wait_for(lambda: ports.read(tmp_path, "api-1"), 30, "the ports report"))
        service.healthy = False  # run_service then stops the service

    watcher = threading.Thread(target=look_then_stop)
    watcher.start()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_service(service, "api", StartRecord(tmp_path, "api-1", lambda: 0.0))
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    watcher.join(30)
    assert seen == [ports.Report(os.getpid(), {"api": bound})]
    assert ports.read(tmp_path, "api-1") is None
