"""MQTT topic names (wire protocol v1). They carry a box id and a random
transfer id, never patient data or DICOM UIDs.

    {prefix}/{box_id}/up/{transfer_hex}   edge -> cloud, chunk frames, QoS 1
    {prefix}/{box_id}/ack                 cloud -> edge, ack frames, QoS 1
    $share/{group}/{prefix}/+/up/+        the ingest workers' shared subscription (MQTT 5, 4.8.2)
"""

from __future__ import annotations

import re

from gateway.core.errors import FrameError

BOX_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"  # the one definition of a box id (no dot: cloud ids have one)
_BOX = re.compile(BOX_ID_PATTERN)
_HEX = re.compile(r"^[0-9a-f]{32}$")


def chunk_topic(prefix: str, box_id: str, transfer_hex: str) -> str:
    return f"{prefix}/{box_id}/up/{transfer_hex}"


def ack_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/ack"


def shared_subscription(group: str, topic_filter: str) -> str:
    """MQTT 5 shared subscription syntax: each message on ``topic_filter`` goes to one member of ``group``."""
    return f"$share/{group}/{topic_filter}"


def ingest_subscription(prefix: str, group: str) -> str:
    return shared_subscription(group, f"{prefix}/+/up/+")


def parse_chunk_topic(prefix: str, topic: str) -> tuple[str, str]:
    """``(box_id, transfer_hex)`` of a chunk topic, or ``FrameError``."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise FrameError("chunk topic outside the protocol prefix")
    parts = topic[len(head):].split("/")
    if len(parts) != 3 or parts[1] != "up" or not _BOX.match(parts[0]) or not _HEX.match(parts[2]):
        raise FrameError("malformed chunk topic")
    return parts[0], parts[2]


# -- fleet telemetry (docs/protocol.md, "Fleet telemetry") --------------------------------------
#    {prefix}/{box_id}/state      birth and death (last will), JSON, QoS 1, retained
#    {prefix}/{box_id}/health     heartbeat, JSON, QoS 1, message expiry 2 x the period
#    {prefix}/{box_id}/util       utilisation (exam) records, JSON, QoS 1, no expiry
#    {prefix}/{box_id}/util/ack   cloud -> edge: record stored, JSON, QoS 1
TELEMETRY_LEAVES = ("state", "health", "util")


def telemetry_topic(prefix: str, box_id: str, leaf: str) -> str:
    return f"{prefix}/{box_id}/{leaf}"


def util_ack_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/util/ack"


# -- the worklist feed (docs/protocol.md, "Worklist feed") -------------------------------------------------
#    {prefix}/{box_id}/worklist              cloud -> edge: the box's worklist, sealed (core.worklist_wire), retained
#    {prefix}/{box_id}/worklist/status       edge -> cloud: a step's performed status (schema.WorklistStatus)
#    {prefix}/{box_id}/worklist/status/ack   cloud -> edge: the status is stored (signed)
def worklist_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/worklist"


def worklist_status_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/worklist/status"


def worklist_status_ack_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/worklist/status/ack"


def worklist_status_subscription(prefix: str) -> str:
    return f"{prefix}/+/worklist/status"


def parse_box_topic(prefix: str, topic: str, leaf: str, what: str) -> str:
    """The box id of ``{prefix}/{box_id}/{leaf}``, or ``FrameError("malformed <what> topic")``."""
    head = prefix + "/"
    box_id, sep, rest = topic[len(head):].partition("/") if topic.startswith(head) else ("", "", "")
    if not sep or rest != leaf or not _BOX.match(box_id):
        raise FrameError(f"malformed {what} topic")
    return box_id


def parse_worklist_status_topic(prefix: str, topic: str) -> str:
    """The box id of a worklist status topic, or ``FrameError``."""
    return parse_box_topic(prefix, topic, "worklist/status", "worklist status")


def fleet_subscriptions(prefix: str) -> list[str]:
    return [f"{prefix}/+/{leaf}" for leaf in TELEMETRY_LEAVES]


def parse_telemetry_topic(prefix: str, topic: str) -> tuple[str, str]:
    """``(box_id, leaf)`` of a telemetry topic, or ``FrameError``."""
    head = prefix + "/"
    parts = topic[len(head):].split("/") if topic.startswith(head) else []
    if len(parts) != 2 or parts[1] not in TELEMETRY_LEAVES or not _BOX.match(parts[0]):
        raise FrameError("malformed telemetry topic")
    return parts[0], parts[1]


# -- the signed commissioning report (docs/protocol.md, "Commissioning reports") ----------------
#    {prefix}/{box_id}/commission       edge -> cloud, signed report, JSON, QoS 1
#    {prefix}/{box_id}/commission/ack   cloud -> edge: report verified and stored, JSON, QoS 1
def commission_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/commission"


def commission_ack_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/commission/ack"


def commission_subscription(prefix: str) -> str:
    return f"{prefix}/+/commission"


def parse_commission_topic(prefix: str, topic: str) -> str:
    """The box id of a commissioning report's topic, or ``FrameError``."""
    return parse_box_topic(prefix, topic, "commission", "commissioning")


# -- remote commands (docs/protocol.md, "Remote commands"; core/command_wire.py) ----------------
#    {prefix}/{box_id}/cmd          cloud -> edge: one signed, sealed command frame, QoS 1, not retained
#    {prefix}/{box_id}/cmd/result   edge -> cloud: where a command stands (schema.CommandResult), QoS 1
#    {prefix}/{box_id}/cmd/blob     edge -> cloud: a part of a command's sealed blob (schema.CommandBlobPart), QoS 1
def command_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/cmd"


def command_result_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/cmd/result"


def command_blob_topic(prefix: str, box_id: str) -> str:
    return f"{prefix}/{box_id}/cmd/blob"


def command_subscriptions(prefix: str) -> list[str]:
    """What the fleet service subscribes to for command results and blobs."""
    return [f"{prefix}/+/cmd/result", f"{prefix}/+/cmd/blob"]


def parse_command_topic(prefix: str, topic: str) -> tuple[str, str]:
    """``(box_id, "result" | "blob")`` of a command reply topic, or ``FrameError``."""
    head = prefix + "/"
    parts = topic[len(head):].split("/") if topic.startswith(head) else []
    if len(parts) != 3 or parts[1] != "cmd" or parts[2] not in ("result", "blob") or not _BOX.match(parts[0]):
        raise FrameError("malformed command topic")
    return parts[0], parts[2]
