"""Processes a test run left running, read from /proc (psutil is not a dependency).

Two ways a process belongs to the run: it descends from the pytest process (every peer and
service a test starts is its child, or a child of one), or it is a peer or service (mosquitto,
Orthanc, PostgreSQL, ``python -m gateway``) whose working directory or arguments lie under one of
the run's temporary directories (a process whose parent died is adopted by init and is no longer
a descendant). Zombies are not counted: they run nothing, and their parent reaps them. Nor is
multiprocessing's resource tracker of pytest itself: Python starts it at the first semaphore of
a ``spawn`` context (tests/cloud/test_ingest.py) and it ends when pytest does, by design.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PEERS = ("mosquitto", "orthanc", "postgres", "storescp", "chrome", "chromedriver")
INTERPRETER_HELPER = "from multiprocessing.resource_tracker import main"


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    name: str
    state: str
    cmdline: tuple[str, ...]
    cwd: str

    def describe(self) -> str:
        args = " ".join(self.cmdline) or f"[{self.name}]"
        return f"pid {self.pid} (parent {self.ppid}, cwd {self.cwd or '?'}): {args[:300]}"

    @property
    def peer_or_service(self) -> bool:
        argv = " ".join(self.cmdline[:4]).lower()
        return any(word in self.name.lower() or word in argv for word in PEERS) or \
            ("-m gateway" in " ".join(self.cmdline[:3]))


def read(pid: int) -> Process | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (OSError, ValueError):
        return None  # gone meanwhile
    try:
        cwd = os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        cwd = ""
    return Process(pid, int(ppid), name, state, tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a),
                   cwd)


def processes() -> list[Process]:
    found = (read(int(entry.name)) for entry in PROC.iterdir() if entry.name.isdigit())
    return [p for p in found if p is not None]


def left_running(roots: list[Path], me: int | None = None) -> list[Process]:
    """Running descendants of ``me`` (this process), and peers or services under ``roots``."""
    me = os.getpid() if me is None else me
    table = processes()
    children: dict[int, list[Process]] = {}
    for p in table:
        children.setdefault(p.ppid, []).append(p)
    mine: dict[int, Process] = {}
    todo = list(children.get(me, []))
    while todo:
        p = todo.pop()
        if p.pid not in mine:
            mine[p.pid] = p
            todo += children.get(p.pid, [])
    prefixes = [str(root) for root in roots]

    def under_roots(p: Process) -> bool:
        return any(p.cwd.startswith(r) or any(r in arg for arg in p.cmdline) for r in prefixes)

    for p in table:
        if p.pid != me and p.peer_or_service and under_roots(p):
            mine.setdefault(p.pid, p)
    def helper(p: Process) -> bool:
        return p.ppid == me and any(arg.startswith(INTERPRETER_HELPER) for arg in p.cmdline)

    return sorted((p for p in mine.values() if p.state != "Z" and not helper(p)), key=lambda p: p.pid)


def wait_gone(roots: list[Path], grace_s: float) -> list[Process]:
    """What is still running after up to ``grace_s`` (a process told to stop may take a moment)."""
    deadline = time.monotonic() + grace_s
    while True:
        found = left_running(roots)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
