"""An ASGI application served by uvicorn on a socket bound here: the only module that imports uvicorn.

The socket is bound before the server starts (port 0 = any free port, then ``port`` says which),
so a ports report is true as soon as ``start`` returns: connections queue in the listen backlog
until the server's event loop takes them. The server runs in its own thread with its own event
loop (``asyncio.run``); ``stop`` asks it to exit, gives open connections ``GRACE_S`` and joins the
thread. TLS is TLS 1.2 or later from a PEM certificate and key; without them the server speaks
plain HTTP, which only the caller may decide (``fleet.plain_http``).

Limits for hostile clients: the request line and headers together may not exceed
``MAX_HEAD_BYTES`` (h11 refuses more), at most ``MAX_CONNECTIONS`` connections are served at once
(more get 503), and an idle keep-alive connection is closed after ``KEEP_ALIVE_S``. The request
body is the application's to bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from gateway.core.errors import ConfigError, LocalError

log = logging.getLogger(__name__)
MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 5
GRACE_S = 3
START_TIMEOUT_S = 60.0


class AsgiServer:
    """One ASGI app on one listening socket. Not thread safe: one owner starts and stops it."""

    def __init__(self, app: Callable[..., Any], bind: str, port: int, name: str,
                 cert_file: Path | None = None, key_file: Path | None = None) -> None:
        self.name = name
        self.tls = cert_file is not None
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop lines repeat ours
        # no access log, whoever attaches a handler: a request's query may carry a patient-linked UID
        logging.getLogger("uvicorn.access").disabled = True
        config = uvicorn.Config(
            app, http="h11", ws="none", lifespan="off", log_config=None, access_log=False, server_header=False,
            proxy_headers=False, limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=GRACE_S, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            ssl_certfile=cert_file, ssl_keyfile=key_file, ssl_context_factory=_tls12 if cert_file else None)
        try:
            config.load()  # here, not in the server thread: a bad certificate is the caller's error
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{name}: cannot load TLS certificate {cert_file} / key {key_file}: {exc}") from exc
        self._server = uvicorn.Server(config)
        self._socket = _listen(bind, port, name)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self._socket.getsockname()[0]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def start(self) -> None:
        self._thread.start()

    def wait_started(self, timeout_s: float = START_TIMEOUT_S) -> bool:
        """True once the event loop serves the socket; False if the server thread ended or timed out first.

        uvicorn has no start callback: its ``started`` flag is looked at every 50 ms.
        """
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.05)
        return bool(self._server.started)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(GRACE_S + 10)
        self._socket.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except Exception:
            log.exception("%s: the HTTP server ended", self.name)


def _tls12(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _listen(bind: str, port: int, name: str) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise LocalError(f"{name}: cannot listen on {bind}:{port}: {exc}") from exc
    sock.set_inheritable(False)
    return sock
