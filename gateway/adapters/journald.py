"""systemd's journal native protocol: one datagram per entry to journald's socket.

Under systemd a service's stderr is a stream into the journal, and ``$JOURNAL_STREAM`` names
it (``<device>:<inode>``). A process whose stderr is that stream speaks the native protocol
instead (systemd.io/JOURNAL_NATIVE_PROTOCOL, what ``sd_journal_send(3)`` sends), so each entry
keeps its fields: ``MESSAGE``, ``PRIORITY``, ``MESSAGE_ID`` and ours, each queryable with
``journalctl FIELD=value``. The encoding is length-delimited, so a value carrying a newline or
any byte stays inside its field: a hostile value cannot forge an entry or a field.

Why our own ~80 lines rather than the ``systemd`` Python binding (python-systemd): the binding
is a C extension that PyPI carries only as source, built against libsystemd, which the image's
offline install of pinned wheels cannot build; and libsystemd sends to the one fixed socket
path, where this adapter takes the path as an argument (a journald namespace in the tests).
The protocol is journald's own, stable and documented, as ``sd_notify.py``'s is.

An entry too large for one datagram travels as a sealed memfd passed with SCM_RIGHTS, as
libsystemd does. A send that fails raises ``OSError``; the caller falls back to stderr.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

SOCKET = Path("/run/systemd/journal/socket")
_NAME_BAD = re.compile(r"[^A-Z0-9_]")
MAX_NAME_CHARS = 64


def field_name(key: str) -> str:
    """A journal field name for ``key``: upper case letters, digits and ``_``, not starting with
    ``_`` (those are journald's trusted fields) or a digit, at most 64 characters."""
    name = _NAME_BAD.sub("_", key.upper()).lstrip("_0123456789")
    return name[:MAX_NAME_CHARS] or "FIELD"


def encode(fields: Sequence[tuple[str, str]]) -> bytes:
    """The native protocol's form of one entry: ``NAME=value\\n``, or for a value with a newline
    ``NAME\\n`` + its length (64-bit little endian) + the value + ``\\n``."""
    out = bytearray()
    for name, value in fields:
        raw = value.encode("utf-8", "replace")
        key = field_name(name).encode()
        if b"\n" in raw:
            out += key + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
        else:
            out += key + b"=" + raw + b"\n"
    return bytes(out)


def stderr_is_journal(journal_stream: str | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal (``$JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM", "") if journal_stream is None else journal_stream
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class JournalSocket:
    """journald's native socket. Thread safe: each entry is one ``sendto`` of a datagram."""

    def __init__(self, path: Path = SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, fields: Sequence[tuple[str, str]]) -> None:
        data = encode(fields)
        try:
            self._sock.sendto(data, str(self.path))
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too large for one datagram
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("mgw-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._sock.sendmsg([b""], rights, 0, str(self.path))  # (socket.send_fds drops the address)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
