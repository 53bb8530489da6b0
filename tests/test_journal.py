"""Structured journal output: every event reaches journald with its MESSAGE_ID and fields.

The end-to-end test runs a real journald (`systemd-journald <namespace>`, the same binary a
box runs, in a namespace of its own so it touches no system journal) and a real `mgw edge run`
whose stderr is marked as the journal stream (`$JOURNAL_STREAM`), in a mount namespace where
that journald's socket directory is `/run/systemd/journal`, as systemd arranges for a unit
with `LogNamespace=`. `journalctl --namespace` then reads the events back by MESSAGE_ID. The
encoding, the field mapping and the large-entry path (a sealed memfd) are checked on their own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import logs
from gateway.adapters import journald, keystore
from gateway.logs import MSG
from tests.peers import _missing, closed_port, require_root, wait_for

JOURNALD = Path("/lib/systemd/systemd-journald")


def parse(data: bytes) -> list[tuple[str, str]]:
    """The native protocol read back, as journald reads it."""
    fields, i = [], 0
    while i < len(data):
        line_end = data.index(b"\n", i)
        line = data[i:line_end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = line_end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[line_end + 1:line_end + 9])
            value = data[line_end + 9:line_end + 9 + size]
            assert data[line_end + 9 + size:line_end + 10 + size] == b"\n"
            i = line_end + 10 + size
        fields.append((name.decode(), value.decode()))
    return fields


def _record(extra: dict[str, object], exc: bool = False) -> logging.LogRecord:
    logger = logging.getLogger("gateway.edge.test")
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 42, "instance %s", ("stored",), exc_info,
                             extra=extra)


def test_journal_fields_carry_message_id_and_every_extra_when_a_record_is_mapped() -> None:
    fields = dict(logs.journal_fields(_record({"MESSAGE_ID": MSG.INSTANCE_STORED, "ITEM": 7, "calling-ae": "CT1"})))
    assert fields["MESSAGE"] == "instance stored" and fields["PRIORITY"] == "4"
    assert fields["MESSAGE_ID"] == MSG.INSTANCE_STORED.value and fields["ITEM"] == "7"
    assert fields["CALLING_AE"] == "CT1" and fields["SYSLOG_IDENTIFIER"] == "mgw"
    assert fields["LOGGER"] == "gateway.edge.test" and fields["CODE_LINE"] == "42"


def test_an_extra_cannot_replace_a_journal_field_when_it_is_named_like_one() -> None:
    fields = logs.journal_fields(_record({"PRIORITY": "0", "MESSAGE_ID": MSG.UPLINK_DOWN}))
    assert [v for k, v in fields if k == "PRIORITY"] == ["4"] and ("FIELD_PRIORITY", "0") in fields


def test_hostile_value_stays_in_its_field_when_it_carries_newlines() -> None:
    forged = "CT1\nMESSAGE_ID=" + MSG.BOX_DECOMMISSIONED.value + "\nPRIORITY=0"
    record = _record({"MESSAGE_ID": MSG.ASSOCIATION_REJECTED, "CALLING_AE": forged}, exc=True)
    exc_text = logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
    back = parse(journald.encode(logs.journal_fields(record, exc_text)))
    assert [v for k, v in back if k == "MESSAGE_ID"] == [MSG.ASSOCIATION_REJECTED.value]
    assert [v for k, v in back if k == "PRIORITY"] == ["4"] and dict(back)["CALLING_AE"] == forged
    assert "ValueError: boom" in dict(back)["EXCEPTION_TEXT"] and dict(back)["MESSAGE"].startswith("instance stored\n")


@pytest.mark.parametrize("key, name", [("ITEM", "ITEM"), ("box-id", "BOX_ID"), ("_PID", "PID"), ("9LIVES", "LIVES"),
                                       ("x" * 80, "X" * 64), ("__", "FIELD")])
def test_field_name_is_a_journal_name_when_the_key_is_not(key: str, name: str) -> None:
    assert journald.field_name(key) == name


def test_large_entry_travels_as_a_sealed_memfd_when_it_exceeds_a_datagram(tmp_path: Path) -> None:
    path = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sender = journald.JournalSocket(path)
        try:
            big = "x" * (4 << 20)  # more than any datagram may carry
            sender.send([("MESSAGE", "large"), ("MESSAGE_ID", MSG.INSTANCE_STORED.value), ("BLOB", big)])
        finally:
            sender.close()
        data, fds, _flags, _addr = socket.recv_fds(server, 16, 1)
        assert data == b"" and len(fds) == 1
        with os.fdopen(fds[0], "rb") as memfd:
            back = dict(parse(os.pread(memfd.fileno(), 8 << 20, 0)))  # journald reads it from the start
    assert back["MESSAGE_ID"] == MSG.INSTANCE_STORED.value and back["BLOB"] == big


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("wb") as stream, (tmp_path / "other").open("wb") as other:
        st = os.fstat(stream.fileno())
        assert journald.stderr_is_journal(f"{st.st_dev}:{st.st_ino}", stream.fileno())
        assert not journald.stderr_is_journal(f"{st.st_dev}:{st.st_ino}", other.fileno())
        assert not journald.stderr_is_journal("", stream.fileno())
        assert not journald.stderr_is_journal("garbage", stream.fileno())


# -- a real journald, a real `mgw edge run` ---------------------------------------------------------
@pytest.fixture
def journal_namespace() -> Iterator[str]:
    """A journald of its own namespace, started here and stopped (its files removed) after."""
    require_root("to run journald and a mount namespace")
    if not JOURNALD.exists() or shutil.which("unshare") is None or shutil.which("journalctl") is None:
        _missing("systemd-journald, journalctl and unshare (Debian: systemd, util-linux)")
    if not Path("/etc/machine-id").is_file():
        _missing("/etc/machine-id, which journald names its files by")
    namespace = f"mgwtest{secrets.token_hex(4)}"
    machine = Path("/etc/machine-id").read_text().strip()
    proc = subprocess.Popen([str(JOURNALD), namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = Path(f"/run/systemd/journal.{namespace}")
    try:
        wait_for(lambda: (run_dir / "socket").exists() or proc.poll() is not None, 60, "journald's socket")
        if proc.poll() is not None:
            _missing(f"systemd-journald {namespace} exited with {proc.returncode}")
        yield namespace
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(run_dir, ignore_errors=True)
        for base in (Path("/var/log/journal"), Path("/run/log/journal")):
            shutil.rmtree(base / f"{machine}.{namespace}", ignore_errors=True)


def _edge_config(tmp_path: Path, port: int) -> Path:
    from gateway.cloud.authority import ack_keys
    from gateway.edge import ack_keyring

    ack_keys.load_signer(tmp_path / "ack.key")  # what provisioning installs: the cloud's ack keys
    ack_keyring.save(ack_keyring.keyring_path(tmp_path / "state"), ack_keys.keyring_of(tmp_path / "ack.key"))
    toml = tmp_path / "edge.toml"
    public = keystore.public_b64(keystore.load_or_create_x25519(tmp_path / "cloud.key"))
    toml.write_text(f'[box]\nid = "journal-box"\ncloud_public_key = "{public}"\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[dicom]\nport = 0\nbind_host = "127.0.0.1"\nae_title = "MGW_J"\n'
                    f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n[health]\nmetrics_port = 0\n')
    return toml


def _journal(namespace: str, message_id: str) -> list[dict[str, object]]:
    done = subprocess.run(["journalctl", f"--namespace={namespace}", "-o", "json", "--no-pager",
                           f"MESSAGE_ID={message_id}"], capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_edge_events_reach_journald_with_message_id_and_fields_when_stderr_is_the_journal(
        journal_namespace: str, tmp_path: Path) -> None:
    ns_dir = f"/run/systemd/journal.{journal_namespace}"
    hold = tmp_path / "journal-dir"
    hold.mkdir()
    # As systemd does for a unit with LogNamespace=: the namespace's sockets at the usual place.
    script = (f"mount --bind {ns_dir} {hold} && mount -t tmpfs tmpfs /run/systemd && "
              f"mkdir /run/systemd/journal && mount --bind {hold} /run/systemd/journal && exec \"$@\"")
    with closed_port() as port, (tmp_path / "stderr").open("wb") as stderr:
        st = os.fstat(stderr.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", RUNTIME_DIRECTORY=str(tmp_path / "run"))
        edge = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                                 sys.executable, "-m", "gateway", "edge", "run", "--config",
                                 str(_edge_config(tmp_path, port))], stderr=stderr, stdout=subprocess.DEVNULL, env=env)
        try:
            def journaled(message_id: str) -> list[dict[str, object]]:
                assert edge.poll() is None, (tmp_path / "stderr").read_text()
                return _journal(journal_namespace, message_id)

            started = wait_for(lambda: journaled(MSG.SERVICE_STARTED.value), 120, "SERVICE_STARTED in the journal")
            down = wait_for(lambda: journaled(MSG.UPLINK_DOWN.value), 60, "UPLINK_DOWN in the journal")
        finally:
            edge.send_signal(signal.SIGTERM)
            edge.wait(60)
    (entry,) = started
    assert entry["MESSAGE"] == "edge service started" and entry["PRIORITY"] == "6"
    assert entry["SYSLOG_IDENTIFIER"] == "mgw" and entry["BOX_ID"] == "journal-box"
    assert entry["AE_TITLE"] == "MGW_J" and entry["VERSION"]
    assert int(str(entry["DICOM_PORT"])) > 0 and entry["_PID"] == str(edge.pid)
    assert down[0]["BROKER"] == f"127.0.0.1:{port}" and down[0]["PRIORITY"] == "4"  # a warning, with its fields
    assert b"edge service started" not in (tmp_path / "stderr").read_bytes()  # the journal had it, not stderr


# -- the catalog: docs/catalog.md's blocks, shipped for `journalctl -x` ------------------------------
CATALOG_MD = Path(__file__).resolve().parent.parent / "docs" / "catalog.md"
CATALOG_FILE = Path(__file__).resolve().parent.parent / "systemd" / "catalog" / "mgw.catalog"
_BLOCK = re.compile(r"^```\n(-- [0-9a-f]{32}\n.*?)^```\n", re.MULTILINE | re.DOTALL)


def catalog_text() -> str:
    """Every catalog block of docs/catalog.md, in order: what systemd/catalog/mgw.catalog holds."""
    header = "# mgw journal catalog: generated from docs/catalog.md (python -m tests.test_journal)\n\n"
    return header + "\n".join(_BLOCK.findall(CATALOG_MD.read_text()))


def test_shipped_catalog_is_docs_catalog_when_either_changes() -> None:
    assert CATALOG_FILE.read_text() == catalog_text(), "regenerate: python -m tests.test_journal"
    assert set(re.findall(r"^-- ([0-9a-f]{32})$", CATALOG_FILE.read_text(), re.MULTILINE)) == {m.value for m in MSG}


def test_journalctl_explains_every_message_id_when_the_catalog_is_installed(tmp_path: Path) -> None:
    if shutil.which("journalctl") is None:
        _missing("journalctl (Debian: systemd)")
    target = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    target.mkdir(parents=True)
    shutil.copy(CATALOG_FILE, target / "mgw.catalog")
    done = subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    listed = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"], capture_output=True, text=True,
                            timeout=60).stdout
    assert {line.split()[0] for line in listed.splitlines() if line.strip()} >= {m.value for m in MSG}


if __name__ == "__main__":
    CATALOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    CATALOG_FILE.write_text(catalog_text())


def test_operations_guide_lists_every_message_id_when_logs_define_it() -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    prefix = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e"
    assert f"`{prefix}`" in guide
    missing = [m.name for m in MSG
               if not m.value.startswith(prefix) or f"{m.name} `{m.value[len(prefix):]}`" not in guide]
    assert not missing, f"docs/operations.md (Logs, the catalogue) lacks {missing}"
