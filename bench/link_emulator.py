"""A clinic uplink in user space, for kernels without sch_netem: rate, one-way delay, random loss.

    ip netns exec LINKNS python bench/link_emulator.py IF_EDGE IF_CLOUD --rate-mbit 20 --delay-ms 40 --loss 0.01

Bridges Ethernet frames between two interfaces (raw AF_PACKET sockets), each direction through
its own queue: a serialisation delay at the link rate, then a fixed propagation delay; frames
from IF_EDGE towards IF_CLOUD are dropped at random with probability ``--loss``; a full queue
(``--queue-packets``) drops at the tail, like a router. Both interfaces need offloads off
(TSO/GSO/GRO, checksums) so that frames are at most one MTU. An interface taken down (a cut)
drops what is sent to it. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


@dataclass
class Direction:
    out: socket.socket
    rate_bps: float
    delay_s: float
    loss: float
    queue_packets: int
    busy_until: float = 0.0
    queued: int = 0
    dropped: int = 0
    forwarded: int = 0
    pending: list[tuple[float, int, bytes]] = field(default_factory=list)


def open_raw(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("if_edge")
    parser.add_argument("if_cloud")
    parser.add_argument("--rate-mbit", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--loss", type=float, default=0.01, help="drop probability, edge -> cloud only")
    parser.add_argument("--queue-packets", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 - loss model, not security
    edge, cloud = open_raw(args.if_edge), open_raw(args.if_cloud)
    up = Direction(cloud, args.rate_mbit * 1e6, args.delay_ms / 1e3, args.loss, args.queue_packets)
    down = Direction(edge, args.rate_mbit * 1e6, args.delay_ms / 1e3, 0.0, args.queue_packets)
    route = {edge.fileno(): (edge, up), cloud.fileno(): (cloud, down)}
    running = True

    def stop(_sig: int, _frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    seq = 0
    while running:
        now = time.monotonic()
        due = min((d.pending[0][0] for d in (up, down) if d.pending), default=now + 0.05)
        try:
            readable, _, _ = select.select([edge, cloud], [], [], max(0.0, due - now))
        except InterruptedError:
            continue
        now = time.monotonic()
        for sock in readable:
            src, direction = route[sock.fileno()]
            while True:
                try:
                    frame, addr = src.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:  # the interface is down (a cut): nothing to forward
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own transmission on this interface
                if direction.queued >= direction.queue_packets or rng.random() < direction.loss:
                    direction.dropped += 1
                    continue
                direction.busy_until = max(now, direction.busy_until) + len(frame) * 8 / direction.rate_bps
                seq += 1
                heapq.heappush(direction.pending, (direction.busy_until + direction.delay_s, seq, frame))
                direction.queued += 1
        for direction in (up, down):
            while direction.pending and direction.pending[0][0] <= now:
                _, _, frame = heapq.heappop(direction.pending)
                direction.queued -= 1
                try:
                    direction.out.send(frame)
                    direction.forwarded += 1
                except OSError:
                    direction.dropped += 1
    print(f"edge->cloud forwarded {up.forwarded} dropped {up.dropped}; "
          f"cloud->edge forwarded {down.forwarded} dropped {down.dropped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
