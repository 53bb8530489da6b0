"""MLLP (HL7 v2 Minimal Lower Layer Protocol) server: framed messages in, one answer for each out.

A frame is ``0x0B`` message ``0x1C 0x0D``. The server reads frames from each connection, hands
each message to ``handle`` (which returns the answer, an HL7 ACK) and writes the answer framed.
A peer is hostile: a frame longer than ``max_message_bytes`` (counted on the bytes read), bytes
before a start block, or a connection idle past ``timeout_s`` ends that connection; the
server goes on. At most ``max_connections`` are served at once (a further one is closed at once),
and only from ``allowed_peers`` (addresses or networks) when that is not empty. One thread per
connection (``socketserver``), daemon threads, stopped by ``stop``.

``send`` is the client: one framed message to a peer, its framed answer back (bounded).
"""

from __future__ import annotations

import ipaddress
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
                 max_message_bytes: int = 1 << 20, timeout_s: float = 60.0, max_connections: int = 8,
                 allowed_peers: tuple[str, ...] = ()) -> None:
        self._handle, self._max, self._timeout_s = handle, max_message_bytes, timeout_s
        self._allowed = [ipaddress.ip_network(p, strict=False) for p in allowed_peers]
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0  # connections closed at once: not an allowed peer, or too many
        outer = self

        class _Connection(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    outer._serve(self.request)
                finally:
                    outer._slots.release()

        class _Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True

            def verify_request(self, request: object, client_address: object) -> bool:
                return outer._admit(client_address)

        self._server = _Server((host, port), _Connection, bind_and_activate=True)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="mllp", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def _admit(self, address: object) -> bool:
        host = address[0] if isinstance(address, tuple) and address else ""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if self._allowed and (ip is None or not any(ip in net for net in self._allowed)):
            self.refused += 1
            log.warning("MLLP: connection from a peer not allowed; closed", extra={
                "MESSAGE_ID": MSG.WORKLIST_ORDER_REFUSED.value, "PEER": host})
            return False
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.warning("MLLP: too many connections; closed", extra={
                "MESSAGE_ID": MSG.WORKLIST_ORDER_REFUSED.value, "PEER": host})
            return False
        return True

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


def send(host: str, port: int, message: bytes, *, timeout_s: float = 30.0, max_answer_bytes: int = 1 << 20) -> bytes:
    """Send one message framed, and return the peer's framed answer (``OSError`` when the peer is
    out of reach, does not answer within ``timeout_s``, or answers with no frame)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(START + message + END)
        buffer = bytearray()
        while (end := buffer.find(END)) < 0:
            piece = sock.recv(65536)
            if not piece:
                raise OSError("MLLP peer closed the connection without an answer")
            buffer += piece
            if len(buffer) > max_answer_bytes + 3:
                raise OSError("MLLP answer above the limit")
        if not buffer.startswith(START):
            raise OSError("MLLP answer outside a frame")
        return bytes(buffer[1:end])
