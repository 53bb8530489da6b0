"""What a service remembers of its own starts, so that a restart shows in metrics and alerts.

systemd restarts a cloud or edge service whose loop died (``Restart=on-failure`` and the
watchdog: ``run_service`` below). That is a safety net, not a fix, and it must never go unseen.
Each start of a service reads and rewrites ``<state>/starts/<service>.json``: how many times it
started, when, and whether the run before ended cleanly (``stopped()`` marks a clean stop). A
start after an unclean end (a crash, a watchdog kill, a power cut) is logged as
SERVICE_RESTARTED and counted in ``mgw_service_unclean_restarts_total``, which the Prometheus
rules in deploy/prometheus/ turn into an alert.

The file is written atomically (temporary file, fsync, rename); an unreadable one counts as a
first start rather than stopping the service.

``build_info`` is the ``mgw_build_info`` gauge every process exports on its /metrics (edge, ingest
workers, fleet, enrolment): the software version, the Python, the wire formats it speaks and the
source commit (``gateway/BUILD_COMMIT``, written by image/build; "unknown" in a checkout).
"""

from __future__ import annotations

import json
import logging
import platform
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from gateway import __version__
from gateway.adapters import blobs, ports
from gateway.adapters.metrics_http import Sample
from gateway.core import acksig, envelope, fleet, framing
from gateway.logs import MSG

log = logging.getLogger(__name__)
COMMIT_FILE = Path(__file__).parent / "BUILD_COMMIT"
RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: a requested restart; Restart=on-failure starts the unit again


def build_commit(path: Path = COMMIT_FILE) -> str:
    """The source commit this package was built from, or "unknown" (a checkout, an editable install)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text[:40] if text and all(c in "0123456789abcdef" for c in text[:40]) else "unknown"


def build_info(component: str, service: str = "") -> Sample:
    """``mgw_build_info`` = 1, its labels saying what runs: ``component`` (edge, ingest, fleet, enrolment),
    the service instance, version, Python, commit, and the versions of the wire formats it speaks."""
    labels = {"component": component, "service": service or component, "version": __version__,
              "python": platform.python_version(), "commit": build_commit(),
              "wire": str(framing.WIRE_VERSION), "envelope": str(envelope.ENVELOPE_VERSION),
              "telemetry": str(fleet.TELEMETRY_VERSION), "util_ack": str(acksig.UTIL_ACK_VERSION)}
    return Sample("mgw_build_info", "what this process runs: version, Python, commit, wire format versions; always 1",
                  1, labels)


@dataclass(frozen=True)
class Starts:
    starts: int = 0  # starts so far, this one included
    unclean: int = 0  # starts after a run that did not stop cleanly
    started_at: float = 0.0
    running: bool = False  # set while a run is on; still set at the next start = that run died


class StartRecord:
    def __init__(self, state_dir: Path, service: str, clock: Callable[[], float]) -> None:
        self.service = service
        self.state_dir = state_dir
        self._path = state_dir / "starts" / f"{service}.json"
        self._clock = clock
        self.current = Starts()

    def started(self) -> Starts:
        before = self._read()
        unclean = before.unclean + int(before.running)
        self.current = Starts(before.starts + 1, unclean, self._clock(), True)
        self._write(self.current)
        if before.running:
            log.warning("service restarted after an unclean stop", extra={
                "MESSAGE_ID": MSG.SERVICE_RESTARTED.value, "SERVICE": self.service, "STARTS": self.current.starts,
                "UNCLEAN": unclean, "PREVIOUS_START": before.started_at})
        return self.current

    def stopped(self) -> None:
        self.current = replace(self.current, running=False)
        self._write(self.current)

    def samples(self) -> Iterator[Sample]:
        labels = {"service": self.service}
        yield Sample("mgw_service_starts_total", "starts of this service since it was installed",
                     self.current.starts, labels, counter=True)
        yield Sample("mgw_service_unclean_restarts_total", "starts after a run that crashed or was killed",
                     self.current.unclean, labels, counter=True)
        yield Sample("mgw_service_start_time_seconds", "when this run started", self.current.started_at, labels)
        yield build_info(self.service.split("-", 1)[0], self.service)

    def _read(self) -> Starts:
        try:
            doc = json.loads(self._path.read_bytes())
            return Starts(int(doc["starts"]), int(doc["unclean"]), float(doc["started_at"]), bool(doc["running"]))
        except FileNotFoundError:
            return Starts()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("start record unreadable; counting from here", extra={
                "SERVICE": self.service, "ERROR": str(exc)})
            return Starts()

    def _write(self, starts: Starts) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            blobs.write_atomic(self._path, json.dumps(asdict(starts)).encode(), mode=0o600)
        except OSError as exc:  # an observer: a full disk must not stop the service
            log.warning("start record not written", extra={"SERVICE": self.service, "ERROR": str(exc)})


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool: ...
    def ports(self) -> dict[str, int]:
        """The ports its listeners bound, by name (``dicom``, ``metrics``, ...): a port of 0 in the
        configuration means any free port, and this says which one it got."""
        ...


def run_service(service: Service, name: str, starts: StartRecord | None = None) -> int:
    """Start, tell systemd we are ready, ping the watchdog while alive, stop on a signal.

    With ``starts``, the start is recorded and a clean stop marked, so that a run that dies
    (its loop, or the process) shows as an unclean restart next time (``StartRecord``), and
    the ports the service bound are reported under the same name (``adapters/ports.py``).
    """
    from gateway.adapters.sd_notify import Notifier

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    notifier = Notifier()
    if starts is not None:
        starts.started()
    service.start()
    if starts is not None:
        ports.record(starts.state_dir, starts.service, service.ports())
    notifier.ready(f"{name} running")
    interval = notifier.watchdog_interval_s or 1.0
    code = 0
    while not stop.wait(interval):
        restart = getattr(service, "restart_requested", None)  # the edge's ``restart`` remote command
        if isinstance(restart, threading.Event) and restart.is_set():
            log.warning("restart requested by a remote command; exiting so that systemd starts us again",
                        extra={"MESSAGE_ID": MSG.RESTART_REQUESTED.value, "SERVICE": name})
            code = RESTART_EXIT_CODE
            break
        if not service.alive():
            log.error("a service loop died; exiting so that systemd restarts us",
                      extra={"MESSAGE_ID": MSG.SERVICE_LOOP_DIED.value, "SERVICE": name})
            code = 1
            break
        notifier.watchdog()
    notifier.stopping()
    service.stop()
    if starts is not None:
        ports.clear(starts.state_dir, starts.service)
    if starts is not None and code in (0, RESTART_EXIT_CODE):
        starts.stopped()
    return code
