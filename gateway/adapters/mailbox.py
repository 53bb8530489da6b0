"""A bounded queue that wakes a select() loop: how other threads hand work to the thread that owns a socket.

The owner thread waits in ``wait()`` on its own socket and on the mailbox's
wake-up socketpair. ``put()`` (any thread) queues an item and writes one byte to
the pair, so the owner leaves select() at once: no polling delay, no busy loop.
Only the owner reads the queue and the socket; the other threads never touch
the socket.
"""

from __future__ import annotations

import queue
import select
import socket
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Selectable(Protocol):
    def fileno(self) -> int: ...


class Mailbox(Generic[T]):
    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[T] = queue.Queue(size)
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    def open(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def close(self) -> None:
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_w = None  # a late wake() is a no-op
        for end in (wake_r, wake_w):
            if end is not None:
                end.close()

    # -- any thread -------------------------------------------------------------
    def put(self, item: T, wait_s: float) -> bool:
        """Queue ``item`` and wake the owner; False if there was no room within ``wait_s``."""
        try:
            self._queue.put(item, timeout=wait_s)
        except queue.Full:
            return False
        self.wake()
        return True

    def wake(self) -> None:
        wake_w = self._wake_w
        if wake_w is None:
            return
        try:
            wake_w.send(b"\0")
        except OSError:  # BlockingIOError: a wake-up is already pending; or closed meanwhile
            pass

    # -- the owner thread ----------------------------------------------------------
    def get(self) -> T | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._queue.empty()

    def wait(self, sock: Selectable | None, want_write: bool, timeout_s: float) -> tuple[bool, bool]:
        """select() on ``sock`` (may be None) and the wake-up socket; (readable, writable) of ``sock``.

        A socket closed meanwhile reads as readable, so the caller's read finds out."""
        assert self._wake_r is not None, "open() first"
        reading: list[Selectable] = [self._wake_r] if sock is None else [sock, self._wake_r]
        writing: list[Selectable] = [sock] if sock is not None and want_write else []
        try:
            readable, writable, _ = select.select(reading, writing, [], timeout_s)
        except (OSError, ValueError):  # fileno() of a socket closed under us
            return sock is not None, False
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except BlockingIOError:
                pass
        return sock is not None and sock in readable, sock is not None and sock in writable
