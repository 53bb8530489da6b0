"""The update gate sees the edge it checks though it may not look into the edge's process.

On the appliance the edge runs as ``mgw``; mgw-update-commit.service runs as root without
CAP_KILL or CAP_SYS_PTRACE and with ProtectProc=invisible. It can neither signal the edge nor
list its sockets. Here the edge stands in as a real process of user ``nobody`` that listens on a
port and wrote the status file. The gate's checks run in a real process of user ``daemon`` (another
user, no capabilities), and in one of root without CAP_SYS_PTRACE (it may list the edge's
/proc/PID/fd, by CAP_DAC_OVERRIDE, but not read where the descriptors point): as on the box.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.adapters import ports
from gateway.appliance import update
from gateway.appliance.status import EDGE_STATUS_FILE, read_edge_status
from gateway.paths import Paths
from tests.peers import require_root


def _as_user(name: str, work: Callable[[], bytes], hold: int | None = None,
             close: tuple[int, ...] = ()) -> tuple[int, int]:
    """Fork a child that becomes user ``name`` (no exec: the interpreter under /root stays loaded)
    and writes what ``work`` returns to a pipe; with ``hold``, it then waits until that fd reads EOF
    (``close``: the parent's fds the child must not keep, such as the write end of ``hold``)."""
    user = pwd.getpwnam(name)
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing but os calls, then _exit
        code = 0
        try:
            for fd in (out_r, *close):
                os.close(fd)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.write(out_w, work())
            os.close(out_w)
            if hold is not None:
                os.read(hold, 1)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(out_w)
    return pid, out_r


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[int, int, Paths]]:
    """A listener of user nobody, and its status file as the edge writes it: (pid, port, paths)."""
    require_root("runs processes as the users nobody and daemon")
    runtime = Path(tempfile.mkdtemp(prefix="mgw-gate-run-"))  # as /run/gateway: others may read it
    runtime.chmod(0o755)  # (pytest's tmp_path is under a directory only root may enter)
    hold_r, hold_w = os.pipe()
    held: list[socket.socket] = []

    def listen() -> bytes:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        held.append(s)
        return str(s.getsockname()[1]).encode()

    pid, out = _as_user("nobody", listen, hold=hold_r, close=(hold_w,))
    os.close(hold_r)
    try:
        port = int(_read_all(out))
        status = runtime / EDGE_STATUS_FILE
        status.write_text(json.dumps({"pid": pid, "version": "0.1.0"}))
        nobody = pwd.getpwnam("nobody")
        os.chown(status, nobody.pw_uid, nobody.pw_gid)
        status.chmod(0o644)
        paths = Paths.from_env(str(tmp_path))
        yield pid, port, Paths(**{**paths.__dict__, "runtime_dir": runtime})
    finally:
        shutil.rmtree(runtime)
        os.close(hold_w)  # the listener child ends
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _gate_as_daemon(pid: int, port: int, other: int, paths: Paths) -> dict[str, bool]:
    """The gate's checks from a process of user daemon: another user, no capabilities."""
    def check() -> bytes:
        return json.dumps({"inspect": ports.can_inspect(pid),
                           "status": read_edge_status(paths.runtime_dir) is not None,
                           "listens": update._edge_listens(pid, port, paths),  # noqa: SLF001
                           "other": update._edge_listens(pid, other, paths)}).encode()  # noqa: SLF001

    child, out = _as_user("daemon", check)
    text = _read_all(out)
    _, code = os.waitpid(child, 0)
    assert code == 0 and text, "the gate's child failed"
    return dict(json.loads(text))


CHECK = """import json, sys
from pathlib import Path
from gateway.adapters import ports
from gateway.appliance import update
from gateway.appliance.status import read_edge_status
from gateway.paths import Paths
pid, port, other, runtime = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
paths = Paths(**{**Paths.from_env(str(runtime.parent)).__dict__, "runtime_dir": runtime})
print(json.dumps({"inspect": ports.can_inspect(pid), "status": read_edge_status(runtime) is not None,
                  "listens": update._edge_listens(pid, port, paths), "other": update._edge_listens(pid, other, paths)}))
"""


def _gate_as_root_without_ptrace(pid: int, port: int, other: int, paths: Paths) -> dict[str, bool]:
    """The gate's checks from a process of root whose capabilities lack CAP_SYS_PTRACE (setpriv)."""
    setpriv = shutil.which("setpriv") or pytest.fail("setpriv (util-linux) not installed")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([setpriv, "--bounding-set=-sys_ptrace", "--", sys.executable, "-c", CHECK, str(pid),
                          str(port), str(other), str(paths.runtime_dir)],
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_gate_as_root_without_ptrace_sees_the_edge_listening_when_it_may_list_but_not_read_its_descriptors(
        edge: tuple[int, int, Paths]) -> None:
    pid, port, paths = edge
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        seen = _gate_as_root_without_ptrace(pid, port, other.getsockname()[1], paths)
    assert seen == {"inspect": False, "status": True, "listens": True, "other": False}


def test_gate_sees_the_edge_alive_and_listening_when_it_may_neither_signal_it_nor_list_its_sockets(
        edge: tuple[int, int, Paths]) -> None:
    pid, port, paths = edge
    with socket.socket() as other:  # a listener of another user (root) on another port
        other.bind(("127.0.0.1", 0))
        other.listen()
        seen = _gate_as_daemon(pid, port, other.getsockname()[1], paths)
    assert seen["inspect"] is False  # as on the box: the edge's /proc/PID/fd is not the gate's to read
    assert seen["status"] is True  # EPERM from kill(pid, 0): the process exists
    assert seen["listens"] is True  # the listener belongs to the user who wrote the status file
    assert seen["other"] is False  # a listener of another user is not the edge's


def test_gate_sees_no_edge_when_the_process_in_the_status_file_is_gone(tmp_path: Path) -> None:
    require_root("runs a process as the user nobody")
    pid, out = _as_user("nobody", lambda: b"done")
    assert _read_all(out) == b"done"
    os.waitpid(pid, 0)  # reaped: the pid names no process
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / EDGE_STATUS_FILE).write_text(json.dumps({"pid": pid, "version": "0.1.0"}))
    assert read_edge_status(runtime) is None
