"""The MQTT link's plain values (no paho here): messages, wills, commands, PUBLISH sizes."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.errors import LocalError


class PacketTooLargeError(LocalError):
    """A PUBLISH would exceed the broker's Maximum Packet Size; it was not sent."""

    def __init__(self, packet_bytes: int, max_packet_bytes: int) -> None:
        super().__init__(f"a {packet_bytes}-byte PUBLISH exceeds the broker's maximum packet size {max_packet_bytes}")
        self.packet_bytes, self.max_packet_bytes = packet_bytes, max_packet_bytes


def _varint_bytes(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_packet_bytes(topic: str, payload: bytes, qos: int, with_expiry: bool) -> int:
    """Size of the MQTT 5 PUBLISH packet paho sends for this message (MQTT 5.0, 3.3)."""
    props = 5 if with_expiry else 0  # Message Expiry Interval: id byte + four-byte integer
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + _varint_bytes(props) + props + len(payload)
    return 1 + _varint_bytes(remaining) + remaining


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    epoch: int = 0  # the connection it came on: a PUBACK goes back on that connection or nowhere


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class PublishCommand:  # publish(), queued for the network thread; ``epoch``: the connection it was meant for
    epoch: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None


@dataclass(frozen=True)
class AckCommand:  # ack(), queued for the network thread
    epoch: int
    mid: int
    qos: int
