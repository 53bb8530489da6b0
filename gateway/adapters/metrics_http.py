"""Prometheus exposition (prometheus_client): the only module that imports it.

``Sample`` rows from a callback become gauge or counter families at each scrape, so the
metrics are always the current figures, with no second copy of state to keep in sync.
Names follow Prometheus conventions: ``mgw_`` prefix, base units in the name (``_bytes``,
``_seconds``, ``_celsius``), ``_total`` for counters.

``MetricsServer`` serves ``GET /metrics`` on its own plain-HTTP listener; with a ``token`` every
request must carry ``Authorization: Bearer <token>`` (compared in constant time), else 401.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.logs import MSG

log = logging.getLogger(__name__)
CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class Sample:
    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
    counter: bool = False


class _Collector(Collector):
    def __init__(self, source: Callable[[], Iterable[Sample]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        try:
            samples = list(self._source())
        except Exception:  # observer: a failing probe must not break the scrape
            log.exception("metrics source failed")
            return
        families: dict[str, Any] = {}
        for s in samples:
            fam = families.get(s.name)
            if fam is None:
                kind = CounterMetricFamily if s.counter else GaugeMetricFamily
                name = s.name[:-len("_total")] if s.counter and s.name.endswith("_total") else s.name
                fam = families[s.name] = kind(name, s.help, labels=sorted(s.labels))
            fam.add_metric([s.labels[k] for k in sorted(s.labels)], s.value)
        yield from families.values()


def registry_for(source: Callable[[], Iterable[Sample]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(source))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return exposition.generate_latest(registry)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's signature
        pass  # wsgiref would print every scrape on stderr


def _bearer(app: Any, token: str) -> Any:
    """``app`` behind ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                ("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b"a bearer token is required\n"]
        return app(environ, start_response)

    return guarded


POLL_S = 0.1  # serve_forever's poll: how long stop() waits for the serving thread (0.5 s by default)


def _serve(bind: str, port: int, registry: CollectorRegistry, token: str) -> tuple[Any, threading.Thread]:
    class Server(exposition.ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

    app = exposition.make_wsgi_app(registry)
    server = make_server(bind, port, _bearer(app, token) if token else app, Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_S}, name="metrics-http",
                              daemon=True)
    thread.start()
    return server, thread


class MetricsServer:
    """``GET /metrics`` on ``bind:port`` in a daemon thread; start failures are logged, not raised.
    With ``token``, only requests that carry it as a bearer token are answered."""

    def __init__(self, bind: str, port: int, source: Callable[[], Iterable[Sample]], token: str = "") -> None:
        self._bind, self._port, self._token = bind, port, token
        self._registry = registry_for(source)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = _serve(self._bind, self._port, self._registry, self._token)
        except OSError as exc:
            log.error("metrics endpoint not started: %s", exc, extra={
                "MESSAGE_ID": MSG.METRICS_UNAVAILABLE.value, "BIND": f"{self._bind}:{self._port}"})

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
