"""MQTT topic names (wire protocol v1). They carry a box id and a random
transfer id, never patient data or DICOM UIDs.

    {prefix}/{box_id}/up/{transfer_hex}   edge -> cloud, chunk frames, QoS 1
    {prefix}/{box_id}/ack                 cloud -> edge, ack frames, QoS 1
    $share/{group}/{prefix}/+/up/+        the ingest workers' shared subscription
"""

from __future__ import annotations

import re

from gateway.core.errors import FrameError

_BOX = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HEX = re.compile(r"^[0-9a-f]{32}$")


def chunk_topic(prefix: str, box_id: str, transfer_hex: str) -> str:
    return f"{prefix}/{box_id}/up/{transfer_hex}"


def ack_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/ack"


def ingest_subscription(prefix: str, group: str) -> str:
    return f"$share/{group}/{prefix}/+/up/+"


def parse_chunk_topic(prefix: str, topic: str) -> tuple[str, str]:
    """``(box_id, transfer_hex)`` of a chunk topic, or ``FrameError``."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise FrameError("chunk topic outside the protocol prefix")
    parts = topic[len(head):].split("/")
    if len(parts) != 3 or parts[1] != "up" or not _BOX.match(parts[0]) or not _HEX.match(parts[2]):
        raise FrameError("malformed chunk topic")
    return parts[0], parts[2]
