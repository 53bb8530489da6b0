"""The end-of-run check (tests/conftest.py) finds what a test left running, and only that."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests import leftovers
from tests.peers import wait_for

# Forks, prints the grandchild's pid and exits: the grandchild, named like a peer, is adopted by init.
_ORPHAN = "import os, sys\n" \
          "if os.fork():\n    os._exit(0)\n" \
          "print(os.getpid(), flush=True)\n" \
          "null = os.open(os.devnull, os.O_WRONLY)\n" \
          "os.dup2(null, 1)\nos.dup2(null, 2)\n" \
          "os.execv('/bin/sleep', ['mosquitto', '300'])\n"


def test_child_left_running_is_named_when_the_run_ends(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "300"], cwd=tmp_path)
    try:
        found = leftovers.left_running([])
        assert child.pid in [p.pid for p in found]
        assert "sleep 300" in next(p.describe() for p in found if p.pid == child.pid)
    finally:
        child.kill()
        child.wait()
    assert child.pid not in [p.pid for p in leftovers.left_running([])]


def test_orphaned_peer_under_a_test_dir_is_named_when_its_parent_died(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-c", _ORPHAN], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    orphan = int(made.stdout.strip())
    try:
        wait_for(lambda: (p := leftovers.read(orphan)) is not None and p.cmdline[:1] == ("mosquitto",), 30,
                 "the orphan to exec")
        assert orphan in [p.pid for p in leftovers.left_running([tmp_path])]
        assert orphan not in [p.pid for p in leftovers.left_running([tmp_path / "elsewhere"])]
    finally:
        os.kill(orphan, signal.SIGKILL)
    wait_for(lambda: orphan not in [p.pid for p in leftovers.left_running([tmp_path])], 30, "the orphan to go")


def test_nothing_is_named_when_every_child_was_stopped(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "300"])
    child.terminate()
    child.wait()
    assert [p for p in leftovers.left_running([tmp_path]) if p.pid == child.pid] == []


def test_pythons_resource_tracker_is_not_named_when_a_spawn_context_made_a_semaphore() -> None:
    import multiprocessing

    lock = multiprocessing.get_context("spawn").Lock()  # starts pytest's resource tracker, for good
    assert lock is not None
    tracker = [p for p in leftovers.processes()
               if p.ppid == os.getpid() and leftovers.INTERPRETER_HELPER in " ".join(p.cmdline)]
    assert len(tracker) == 1  # it runs, a child of pytest
    assert tracker[0].pid not in [p.pid for p in leftovers.left_running([])]
