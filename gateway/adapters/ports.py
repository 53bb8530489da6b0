"""Listening ports: which ones a running service bound, and which process listens where.

A port picked free and released before a service binds it can be handed to someone else in
between, and then a client reaches the wrong listener (``mgw provision`` once got another
server's TLS alert instead of the enrolment endpoint). So nothing here picks a port for one of
our own services:

* A port set to 0 in a service's configuration means any free port. The service binds it, and
  once it has started (``supervision.run_service``) writes what it got to
  ``<state_dir>/ports/<service>.json``: ``{"pid": ..., "ports": {"dicom": 40123, ...}}``, the
  service named as in its start record (``edge``, ``enrolment``, ``fleet-1``,
  ``ingest-<group>-<worker>``). A reader trusts the file only while that pid runs
  (``reported``), and a harness that started the process compares the pid with its own child.
* A third-party peer that cannot bind 0 and tell (mosquitto, PostgreSQL, Orthanc, DCMTK) is
  started by ``on_free_port``: a port picked free, and another one when the peer says the
  pick was taken before it bound it (``PortInUseError``), a bounded number of times.
  ``wait_listening`` waits until that very process listens: the socket on the port must be
  one of its own file descriptors, so another listener on the same port never passes for it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.adapters import blobs
from gateway.core.errors import GatewayError, LocalError, PortInUseError

log = logging.getLogger(__name__)
T = TypeVar("T")
PORTS_DIR = "ports"
PORT_ATTEMPTS = 8
# What mosquitto, PostgreSQL, DCMTK ("Address already in use") and Orthanc ("... privileged or
# already in use") print when the port they were given is taken.
IN_USE = "already in use"
TCP_LISTEN, TCP_ESTABLISHED = "0A", "01"  # /proc/net/tcp states


@dataclass(frozen=True)
class Report:
    pid: int
    ports: dict[str, int]


def report_path(state_dir: Path, service: str) -> Path:
    return state_dir / PORTS_DIR / f"{service}.json"


def record(state_dir: Path, service: str, ports: dict[str, int]) -> None:
    """Write the ports this process's service bound. An observer: a failure is logged, not raised."""
    doc = {"pid": os.getpid(), "ports": ports}
    try:
        blobs.write_atomic(report_path(state_dir, service), json.dumps(doc).encode(), mode=0o644)
    except GatewayError as exc:
        log.warning("cannot write the port report", extra={"SERVICE": service, "ERROR": str(exc)})


def clear(state_dir: Path, service: str) -> None:
    """Remove this process's report (a clean stop); a report of another process stays."""
    found = read(state_dir, service)
    if found is not None and found.pid == os.getpid():
        report_path(state_dir, service).unlink(missing_ok=True)


def read(state_dir: Path, service: str) -> Report | None:
    """The last report of ``service``, whether or not its process still runs; None if absent or unreadable."""
    try:
        doc = json.loads(report_path(state_dir, service).read_bytes())
        return Report(int(doc["pid"]), {str(k): int(v) for k, v in doc["ports"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def reported(state_dir: Path, service: str, name: str) -> int | None:
    """The port ``name`` the running ``service`` bound; None without a report or once its process is gone."""
    found = read(state_dir, service)
    if found is None or name not in found.ports:
        return None
    try:
        os.kill(found.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it runs, as another user
    return found.ports[name]


def bound_port(configured: int, state_dir: Path, service: str, name: str) -> int:
    """The port a client of the running service must use: the configured one, or with 0 the reported one (0 if none)."""
    return configured or reported(state_dir, service, name) or 0


# -- third-party peers ------------------------------------------------------------------------------
def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free now. Free now only: see ``on_free_port`` for what to do with them."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def on_free_port(start: Callable[..., T], count: int = 1, host: str = "127.0.0.1",
                 attempts: int = PORT_ATTEMPTS) -> T:
    """``start(*ports)`` on ``count`` ports picked free, again on fresh ones while it raises PortInUseError."""
    last: PortInUseError | None = None
    for _ in range(attempts):
        try:
            return start(*free_ports(count, host))
        except PortInUseError as exc:
            last = exc
            log.info("port taken before the peer bound it; another one", extra={"ERROR": str(exc)})
    raise LocalError(f"no free port held after {attempts} attempts: {last}")


def _tcp_rows(port: int, state: str, proc_root: Path) -> list[list[str]]:
    """The rows of /proc/net/tcp and tcp6 (this network namespace) whose local port is ``port``
    and whose state is ``state``; column 7 is the owner's uid, column 9 the socket's inode."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_root / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == state and int(cols[1].rsplit(":", 1)[1], 16) == port:
                found.append(cols)
    return found


def tcp_sockets(port: int, state: str, proc_root: Path = Path("/proc")) -> list[str]:
    """Inodes of the TCP sockets (IPv4 and IPv6, this network namespace) whose local port is
    ``port`` and whose state is ``state`` (the kernel's hex code: ``TCP_LISTEN``, ``TCP_ESTABLISHED``)."""
    return [cols[9] for cols in _tcp_rows(port, state, proc_root)]


def listening_uids(port: int, proc_root: Path = Path("/proc")) -> set[int]:
    """The users owning a socket listening on TCP ``port``: what a process that may not look into
    another user's /proc/PID/fd (hidden by ProtectProc=, or without CAP_SYS_PTRACE) can still see."""
    return {int(cols[7]) for cols in _tcp_rows(port, TCP_LISTEN, proc_root)}


def can_inspect(pid: int, proc_root: Path = Path("/proc")) -> bool:
    """Whether this process may read where ``pid``'s file descriptors point (``listens`` needs it).

    Tried, not asked with access(2): root with CAP_DAC_OVERRIDE may list another user's
    /proc/PID/fd, but reading a link needs ptrace access (CAP_SYS_PTRACE), which it may lack."""
    try:
        with os.scandir(proc_root / str(pid) / "fd") as entries:
            for entry in entries:
                try:
                    os.readlink(entry.path)
                except FileNotFoundError:  # closed meanwhile: the next one
                    continue
                return True
    except OSError:
        return False
    return False


def listening_inodes(port: int, proc_root: Path = Path("/proc")) -> set[str]:
    """Socket inodes listening on TCP ``port`` (IPv4 and IPv6) in this network namespace."""
    return set(tcp_sockets(port, TCP_LISTEN, proc_root))


def listens(pid: int, port: int, proc_root: Path = Path("/proc")) -> bool:
    """Whether process ``pid`` itself holds a socket listening on TCP ``port``."""
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(port, proc_root)}
    if not inodes:
        return False
    try:
        fds = list((proc_root / str(pid) / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


def appended(*paths: Path) -> Callable[[], str]:
    """What gets appended to ``paths`` from now on: a peer's logs, as ``wait_listening`` reads them."""
    offsets = [path.stat().st_size if path.exists() else 0 for path in paths]

    def read() -> str:
        text = []
        for path, offset in zip(paths, offsets, strict=True):
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    text.append(fh.read().decode(errors="replace"))
            except OSError:
                continue
        return "".join(text)

    return read


def wait_listening(proc: subprocess.Popen[Any], ports: Iterable[int], what: str, output: Callable[[], str],
                   timeout_s: float) -> None:
    """Wait until ``proc`` listens on every one of ``ports``.

    ``output`` returns what the process printed or logged since it started. Raises
    PortInUseError when the process exited saying a port was taken, LocalError when it exited
    otherwise or did not listen within ``timeout_s``.
    """
    wanted = list(ports)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            text = output()
            if IN_USE in text:
                raise PortInUseError(f"{what}: a port of {wanted} was taken: {_last_line(text, IN_USE)}")
            raise LocalError(f"{what} exited with {proc.returncode}: {text.strip()[-500:]}")
        if all(listens(proc.pid, port) for port in wanted):
            return
        if time.monotonic() > deadline:
            raise LocalError(f"{what} did not listen on {wanted} within {timeout_s} s")
        time.sleep(0.05)


def _last_line(text: str, needle: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if needle in line), "")
