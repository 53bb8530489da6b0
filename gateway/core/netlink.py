"""rtnetlink link messages (RTM_NEWLINK/RTM_DELLINK), parsed without I/O.

The kernel reports carrier changes of network interfaces on the RTMGRP_LINK
multicast group of a NETLINK_ROUTE socket (rtnetlink(7)); udev does not (its
``net`` events are add/remove/rename). ``parse_links`` turns one datagram into
``LinkStatus`` facts; ``LinkTracker`` turns a stream of them into the moments a
link came up, which is when the uplink should stop backing off and reconnect.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from gateway.core.errors import FrameError

NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTMGRP_LINK = 1
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000


@dataclass(frozen=True)
class LinkStatus:
    """Interface ``index`` is usable (administratively up with carrier) or not."""

    index: int
    usable: bool
    loopback: bool = False


def parse_links(datagram: bytes) -> list[LinkStatus]:
    """Link statuses in one rtnetlink datagram; other message types are skipped.

    Raises ``FrameError`` on a truncated or inconsistent message, nothing else.
    """
    out: list[LinkStatus] = []
    offset = 0
    while offset + NLMSG_HEADER.size <= len(datagram):
        length, msg_type, _flags, _seq, _pid = NLMSG_HEADER.unpack_from(datagram, offset)
        if length < NLMSG_HEADER.size or offset + length > len(datagram):
            raise FrameError(f"netlink message length {length} at offset {offset} is inconsistent")
        if msg_type in (RTM_NEWLINK, RTM_DELLINK):
            if length < NLMSG_HEADER.size + IFINFOMSG.size:
                raise FrameError("netlink link message too short for ifinfomsg")
            _family, _type, index, flags, _change = IFINFOMSG.unpack_from(datagram, offset + NLMSG_HEADER.size)
            usable = msg_type == RTM_NEWLINK and flags & IFF_UP != 0 and flags & (IFF_RUNNING | IFF_LOWER_UP) != 0
            out.append(LinkStatus(index, usable, flags & IFF_LOOPBACK != 0))
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    if offset < len(datagram) and len(datagram) - offset >= NLMSG_HEADER.size:
        raise FrameError("trailing bytes after the last netlink message")
    return out


def encode_link(index: int, flags: int, msg_type: int = RTM_NEWLINK) -> bytes:
    """One RTM_NEWLINK/RTM_DELLINK message without attributes (the inverse, for tests and tools)."""
    body = IFINFOMSG.pack(0, 1, index, flags, 0xFFFFFFFF)
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), msg_type, 0, 0, 0) + body


@dataclass
class LinkTracker:
    """Remembers which non-loopback links are usable; says when one became usable."""

    usable: set[int] = field(default_factory=set)

    def feed(self, statuses: list[LinkStatus]) -> bool:
        """True if any non-loopback link went from unusable to usable in ``statuses``."""
        came_up = False
        for status in statuses:
            if status.loopback:
                continue
            if status.usable and status.index not in self.usable:
                self.usable.add(status.index)
                came_up = True
            elif not status.usable:
                self.usable.discard(status.index)
        return came_up
