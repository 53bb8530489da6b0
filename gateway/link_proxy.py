"""A loopback TCP proxy that can cut and throttle a link, for fault injection.

Put it between the edge and the broker (the edge's ``[mqtt] port`` is the proxy's port):
``cut()`` resets every connection and refuses new ones until ``restore()``; ``rate_bps``
throttles each direction; ``drop_after_bytes`` resets a connection after that many bytes
(a link dying mid-frame). Used by tests/system and bench/faults.py; not part of the product.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time

_PIECE = 16384


class LinkProxy:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self.target: tuple[str, int] | None = None
        self.rate_bps = 0  # bytes per second per direction; 0 = unlimited
        self.drop_after_bytes = 0  # reset a connection after this many bytes; 0 = never
        self.bytes_moved = 0  # over all connections, both directions
        self._up = True
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="link-proxy", daemon=True)
        self._thread.start()

    # -- controls ------------------------------------------------------------------------
    def cut(self) -> None:
        """Reset every connection (RST, as a dead link looks) and refuse new ones."""
        with self._lock:
            self._up = False
            conns, self._conns = self._conns, set()
        for sock in conns:
            _reset(sock)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(5)

    # -- internals -------------------------------------------------------------------------
    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                up, target = self._up, self.target
            if not up or target is None:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        peers = {a: b, b: a}
        moved = 0
        try:
            for sock in peers:
                sock.setblocking(True)
                sel.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(0.5):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(_PIECE)
                    if not data:
                        return
                    if self.rate_bps > 0:
                        time.sleep(len(data) / self.rate_bps)
                    peers[src].sendall(data)
                    moved += len(data)
                    self.bytes_moved += len(data)
                    if self.drop_after_bytes and moved >= self.drop_after_bytes:
                        _reset(a)
                        _reset(b)
                        return
                with self._lock:
                    if a not in self._conns:
                        return
        except OSError:
            return
        finally:
            sel.close()
            with self._lock:
                self._conns -= {a, b}
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
