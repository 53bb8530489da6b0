"""Prometheus exposition (prometheus_client): the only module that imports it.

``Sample`` rows from a callback become gauge or counter families at each scrape, so the
metrics are always the current figures, with no second copy of state to keep in sync.
Names follow Prometheus conventions: ``mgw_`` prefix, base units in the name (``_bytes``,
``_seconds``, ``_celsius``), ``_total`` for counters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

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


class MetricsServer:
    """``GET /metrics`` on ``bind:port`` in a daemon thread; start failures are logged, not raised."""

    def __init__(self, bind: str, port: int, source: Callable[[], Iterable[Sample]]) -> None:
        self._bind, self._port = bind, port
        self._registry = registry_for(source)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = exposition.start_http_server(self._port, self._bind, self._registry)
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
