"""Link-up nudges the uplink; systemd's notify protocol and the watchdog (real sockets)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.mqtt_link import MqttLink
from gateway.adapters.sd_notify import Notifier
from gateway.config import MqttSettings
from gateway.loopback import LoopbackDeployment
from gateway.supervision import run_service
from tests.peers import _missing, require_root, wait_for


def test_nudge_reconnects_at_once_when_the_link_is_backing_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    try:
        broker = MosquittoBroker(tmp_path / "broker")
    except Exception as exc:  # noqa: BLE001
        _missing(str(exc))
    broker.start()  # it takes a port, kept across its restarts
    broker.stop()
    settings = MqttSettings(host="127.0.0.1", port=broker.port, reconnect_min_s=60.0, reconnect_max_s=60.0)
    link = MqttLink(settings, "nudge-test", subscriptions=[], on_message=lambda m: None, jitter=lambda: 0.0)
    link.start()
    try:
        caplog.set_level(logging.WARNING, logger="gateway.adapters.mqtt_link")
        wait_for(lambda: "broker unreachable" in caplog.text, 60, "the first connect to fail")  # a 60 s back-off now
        broker.start()
        assert not link.wait_connected(1.0)  # still backing off
        link.nudge()
        assert link.wait_connected(30.0)  # well within the 60 s back-off
    finally:
        link.stop()
        broker.stop()


_WATCH_IN_NETNS = r"""
import subprocess, sys, threading
from gateway.adapters.udev_watch import LinkWatcher
fired = threading.Event()
w = LinkWatcher(fired.set)
assert w.start()
subprocess.run(["ip", "link", "add", "mgwa", "type", "veth", "peer", "name", "mgwb"], check=True)
subprocess.run(["ip", "link", "set", "mgwa", "up"], check=True)  # up, but no carrier while its peer is down
assert not fired.wait(0.5), "a link without carrier must not fire"
subprocess.run(["ip", "link", "set", "mgwb", "up"], check=True)  # carrier on both ends
ok = fired.wait(10)
w.stop()
print("fired" if ok else "silent")
"""


@pytest.mark.needs_root
def test_link_watcher_fires_when_a_link_comes_up_in_a_network_namespace() -> None:
    """A real RTM_NEWLINK from the kernel, in a namespace of our own (nothing on the host changes)."""
    require_root("to make a network namespace")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        _missing("unshare --net is refused here (no network namespaces)")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", _WATCH_IN_NETNS], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "fired"


class _NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:  # nothing more queued right now
                return self.messages


def test_edge_sends_ready_and_pings_the_watchdog_when_run_under_notify(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notify = _NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    deploy()
    # the fleet service pings too: wait for the edge's READY as well as the pings
    wait_for(lambda: sum(m == "WATCHDOG=1" for m in notify.drain()) >= 3
             and "READY=1\nSTATUS=edge running" in notify.messages, 30, "the edge ready and three watchdog pings")
    assert "READY=1\nSTATUS=edge running" in notify.messages  # the edge's, not only the cloud's
    assert "READY=1\nSTATUS=cloud ingest running" in notify.messages


class _Service:
    def __init__(self) -> None:
        self.healthy = True
        self.stopped = False

    def start(self) -> None: ...

    def stop(self) -> None:
        self.stopped = True

    def alive(self) -> bool:
        return self.healthy

    def ports(self) -> dict[str, int]:
        return {}


def test_watchdog_pings_stop_and_service_exits_when_a_loop_dies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notify = _NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    service = _Service()

    def kill_loop_after_a_ping() -> None:
        wait_for(lambda: "WATCHDOG=1" in notify.drain(), 60, "a watchdog ping")
        service.healthy = False

    killer = threading.Thread(target=kill_loop_after_a_ping)
    killer.start()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = run_service(service, "test")  # signal handlers need the main thread
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    killer.join(10)
    assert code == 1 and service.stopped
    after = notify.drain()
    assert after[-1] == "STOPPING=1"  # no ping once the loop was found dead
    assert after.count("WATCHDOG=1") == after[:after.index("STOPPING=1")].count("WATCHDOG=1")


def test_notifier_does_not_ping_when_the_watchdog_is_for_another_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier("").watchdog_interval_s == 0.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier("").watchdog_interval_s == 0.5
