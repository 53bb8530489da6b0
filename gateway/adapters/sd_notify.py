"""systemd's notify protocol (sd_notify(3)), a datagram to ``$NOTIFY_SOCKET``.

Without systemd (no socket in the environment) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC", "")
        # WATCHDOG_PID names the process systemd watches; a child that inherited the
        # environment must not ping on its parent's behalf (sd_watchdog_enabled(3)).
        pid = os.environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and ours else 0.0

    def _send(self, message: str) -> None:
        if not self._address:
            return
        addr = self._address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(addr)
                sock.sendall(message.encode())
            except OSError:
                pass  # observer: systemd gone or socket unusable; nothing to do

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")
