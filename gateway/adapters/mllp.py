"""MLLP (HL7 v2 Minimal Lower Layer Protocol) server: framed messages in, one answer for each out.

A frame is ``0x0B`` message ``0x1C 0x0D``. The server reads frames from each connection, hands
each message to ``handle`` (which returns the answer, an HL7 ACK) and writes the answer framed.
A peer is hostile: a frame longer than ``max_message_bytes`` (counted on the bytes read), bytes
before a start block, or a connection idle past ``timeout_s`` ends that connection; the
server goes on. One thread per connection (``socketserver``), daemon threads, stopped by ``stop``.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable

from gateway.logs import MSG

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"


class MllpServer:
    def __init__(self, host: str, port: int, handle: Callable[[bytes], bytes], *,
                 max_message_bytes: int = 1 << 20, timeout_s: float = 60.0) -> None:
        self._handle, self._max, self._timeout_s = handle, max_message_bytes, timeout_s
        outer = self

        class _Connection(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        self._server = socketserver.ThreadingTCPServer((host, port), _Connection, bind_and_activate=True)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="mllp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(self._timeout_s)
        buffer = bytearray()
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    return
                buffer += piece
                while (end := buffer.find(END)) >= 0:
                    if not buffer.startswith(START):
                        log.warning("MLLP: bytes outside a frame; connection closed",
                                    extra={"MESSAGE_ID": MSG.WORKLIST_ORDER_REFUSED.value})
                        return
                    message = bytes(buffer[1:end])
                    del buffer[:end + len(END)]
                    sock.sendall(START + self._handle(message) + END)
                if len(buffer) > self._max + 1:
                    log.warning("MLLP: frame above the limit; connection closed",
                                extra={"MESSAGE_ID": MSG.WORKLIST_ORDER_REFUSED.value, "LIMIT_BYTES": self._max})
                    return
        except OSError:
            return  # timeout or reset: the peer reconnects and resends what it has no ACK for
