"""Typed shapes of every JSON message a box sends the cloud (MQTT and enrolment), parsed at the boundary: pure.

A message from a box is hostile until it is parsed. ``parse(kind, payload)`` turns the bytes of
one MQTT message into a frozen, fully typed value or raises ``FrameError`` with a reason that
names the offending field; it never raises anything else, whatever the bytes (wrong JSON types,
booleans where numbers belong, NaN or infinite times, NUL characters, nesting a thousand
levels deep, megabytes of padding). Nothing downstream sees raw JSON.

msgspec does the parsing (a schema library made for this: one C pass from bytes to typed
structs, strict about types, with bounds as annotations); docs/architecture.md says why it was
chosen. Unknown keys are ignored, so the edge may add a field without a new version
(docs/protocol.md, "Fleet telemetry"); a known key with a wrong type or out of its range
refuses the whole message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

from gateway.core.errors import FrameError
from gateway.core.topics import BOX_ID_PATTERN

MAX_MESSAGE_BYTES = 64 * 1024  # a heartbeat is ~600 bytes; anything near this is not ours

T = TypeVar("T")

# -- value types, with their bounds ------------------------------------------------------------------------
BoxId = Annotated[str, msgspec.Meta(pattern=BOX_ID_PATTERN)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # what a BIGINT column holds
Count32 = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]  # what an INTEGER column holds on both backends
Time = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]  # Unix seconds, finite (year < 5000)
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e10)]
Percent = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
Celsius = Annotated[float, msgspec.Meta(ge=-100.0, le=300.0)]
Text = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]  # no NUL, no control
Modality = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9_]{1,16}$")]
StudyKey = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16,64}$")]


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    pass


class _Telemetry(_Message, frozen=True, tag_field="kind"):
    """Birth, death and heartbeat carry their ``kind`` as a tag (docs/protocol.md)."""


class Backlog(_Message, frozen=True):
    items: Count = 0
    bytes: Count = 0
    spool_items: Count = 0
    outbox_items: Count = 0
    oldest_unacked_age_s: Seconds | None = None


class Disk(_Message, frozen=True):
    free_bytes: Count | None = None
    total_bytes: Count | None = None
    used_percent: Percent | None = None


class WorklistHealth(_Message, frozen=True):
    """The heartbeat's ``worklist``: the box's cache and feed, so ops can see a stale feed."""

    entries: Count = 0
    last_seq: Count = 0
    update_age_s: Seconds | None = None
    statuses_unacked: Count = 0
    frames_refused: Count = 0


class CommandHealth(_Message, frozen=True):
    """The heartbeat's ``commands``: remote commands on the box (edge/commands.py), refusals counted."""

    last_seq: Count = 0
    refused: Count = 0
    succeeded: Count = 0
    failed: Count = 0


class Birth(_Telemetry, frozen=True, tag="birth"):
    v: Literal[1]
    box_id: BoxId
    bd_seq: Count
    at: Time | None = None
    version: Text = ""
    site: Text = ""
    heartbeat_s: Seconds | None = None
    # the box's X25519 public key for its worklist feed (core.worklist_wire), hex; absent: no feed
    worklist_key: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$")] = ""
    # its site's rules as provisioning set them (the edge's [site]); the fleet checks them again
    time_zone: Text = ""
    weekly_hours: Annotated[list[Text], msgspec.Meta(max_length=14)] = []
    region: Text = ""
    config_version: Count = 0  # the remote-managed settings' version the box runs (0: never changed remotely)


class Death(_Telemetry, frozen=True, tag="death"):
    v: Literal[1]
    box_id: BoxId
    bd_seq: Count


class Heartbeat(_Telemetry, frozen=True, tag="heartbeat"):
    v: Literal[1]
    box_id: BoxId
    bd_seq: Count
    seq: Count = 0
    at: Time | None = None
    uptime_s: Seconds | None = None
    version: Text = ""
    site: Text = ""
    backlog: Backlog | None = None
    quarantine_items: Count = 0
    disk: Disk | None = None
    cpu_temp_c: Celsius | None = None
    reconnects: Count = 0
    uplink_connected: bool = False
    # Keys as the modality sent them (the alert rules skip odd ones); one odd key must not cost
    # the whole heartbeat, or the box would look offline.
    last_study: Annotated[dict[Annotated[str, msgspec.Meta(max_length=16)], Time], msgspec.Meta(max_length=32)] = {}
    cert_not_after: Time | None = None
    utilisation_unacked: Count = 0
    exams_dropped: Count = 0
    worklist: WorklistHealth | None = None  # absent: the box runs no worklist
    config_version: Count = 0  # as in the birth
    commands: CommandHealth | None = None  # absent: a box before remote commands


class ExamRecord(_Message, frozen=True):
    v: Literal[1]
    box_id: BoxId
    study_key: StudyKey
    revision: Count32
    modality: Modality
    start: Time
    end: Time
    images: Count32
    series: Count32
    source: Literal["mpps", "header", "received"]
    status: Literal["in_progress", "completed", "discontinued"]
    first_received_at: Time
    last_received_at: Time
    cloud_stored_at: Time | None = None
    site: Text = ""


Uid = Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]  # as the modality sent it


class ManifestV1(_Message, frozen=True, forbid_unknown_fields=True):
    """The sealed manifest of an object (chunk 0; docs/protocol.md): every key, none other."""

    v: Literal[1]
    codec: Annotated[int, msgspec.Meta(ge=0, le=255)]
    size: Count
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    sop_class_uid: Uid
    sop_instance_uid: Uid
    study_instance_uid: Uid
    series_instance_uid: Uid
    transfer_syntax_uid: Uid
    item_id: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # the edge's own row id; only echoed


# -- the worklist feed: cloud -> box (planned over MQTT; today ``mgw edge worklist import``) ---------------
# Bounded as DICOM bounds each VR (PS3.5 6.2); no control characters. Values are Unicode: the box
# encodes them in the modality's character set when it answers (core.worklist.answer_charset).
_NO_CONTROL = r"^[^\x00-\x1f\x7f\\]*$"  # no control character, no backslash (DICOM's value separator)
PersonName = Annotated[str, msgspec.Meta(max_length=194, pattern=_NO_CONTROL)]  # three groups of 64
LongString = Annotated[str, msgspec.Meta(max_length=64, pattern=_NO_CONTROL)]
ShortString = Annotated[str, msgspec.Meta(max_length=16, pattern=_NO_CONTROL)]
CodeString = Annotated[str, msgspec.Meta(max_length=16, pattern=r"^[A-Z0-9 _]*$")]
AeTitle = Annotated[str, msgspec.Meta(max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*$")]
DicomDate = Annotated[str, msgspec.Meta(pattern=r"^(\d{8})?$")]
DicomTime = Annotated[str, msgspec.Meta(pattern=r"^(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?$")]
DicomUid = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^([0-9]+(\.[0-9]+)*)?$")]
StepId = Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=_NO_CONTROL)]
WorklistRef = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{32})?$")]
MAX_WORKLIST_OPS = 2000
MAX_WORKLIST_BYTES = 8 * 1024 * 1024  # 2,000 entries of about 1 KiB, with room


class WorklistStep(_Message, frozen=True, forbid_unknown_fields=True):
    """One Scheduled Procedure Step (the item of (0040,0100))."""

    step_id: StepId
    modality: CodeString = ""
    station_ae_title: AeTitle = ""
    station_name: ShortString = ""
    start_date: DicomDate = ""
    start_time: DicomTime = ""
    performing_physician: PersonName = ""
    description: LongString = ""
    status: CodeString = "SCHEDULED"


class WorklistEntry(_Message, frozen=True, forbid_unknown_fields=True):
    """One Requested Procedure with its Scheduled Procedure Step (core.worklist.WorklistItem)."""

    accession_number: ShortString
    step: WorklistStep
    patient_name: PersonName = ""
    patient_id: LongString = ""
    birth_date: DicomDate = ""
    sex: Annotated[str, msgspec.Meta(pattern=r"^(M|F|O)?$")] = ""
    requested_procedure_id: ShortString = ""
    requested_procedure_description: LongString = ""
    study_instance_uid: DicomUid = ""
    referring_physician: PersonName = ""
    ref: WorklistRef = ""  # the cloud's random name for the entry; the box reports status by it


class WorklistUpsert(_Message, frozen=True, tag_field="op", tag="upsert", forbid_unknown_fields=True):
    """Insert, or replace, the entry with the same (step id, accession number)."""

    entry: WorklistEntry


class WorklistCancel(_Message, frozen=True, tag_field="op", tag="cancel", forbid_unknown_fields=True):
    """Remove the entry (step id, accession number): the RIS cancelled the order."""

    step_id: StepId
    accession_number: ShortString


class WorklistUpdate(_Message, frozen=True, forbid_unknown_fields=True):
    """One update of a box's worklist cache: operations applied in order, in one transaction.

    ``seq`` grows with every update the cloud makes for the box; the box applies an update only
    if its ``seq`` is above the last it applied, so a replayed or reordered older one is ignored.
    """

    v: Literal[1]
    box_id: BoxId
    seq: Count
    ops: Annotated[list[WorklistUpsert | WorklistCancel], msgspec.Meta(max_length=MAX_WORKLIST_OPS)]
    at: Time | None = None
    # True: ``ops`` upsert the box's whole worklist; every step they do not name leaves the cache
    # (the cloud's feed sends snapshots; a step the modality started stays done)
    replace: bool = False


PerformedStatus = Literal["IN PROGRESS", "COMPLETED", "DISCONTINUED"]


class WorklistStatus(_Message, frozen=True, forbid_unknown_fields=True):
    """Box -> cloud: MPPS says the entry ``ref`` is in progress, completed or discontinued. No PHI:
    the ref is the cloud's random name for the entry."""

    v: Literal[1]
    box_id: BoxId
    ref: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
    status: PerformedStatus
    at: Time


# -- enrolment requests (HTTPS bodies a box posts to the enrolment server) --------------------------------
Pem = Annotated[str, msgspec.Meta(min_length=1, max_length=16384)]
EnrolToken = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]


# -- remote commands ({prefix}/{box}/cmd, cmd/result, cmd/blob; core/command_wire.py) --------------------------
CommandId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
CommandState = Literal["received", "running", "succeeded", "failed", "refused"]
ResultKey = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$")]
ResultValue = Annotated[str, msgspec.Meta(max_length=512, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")] | int | float \
    | bool | None
MAX_RESULT_BYTES = 64 * 1024
MAX_BLOB_PART_BYTES = 136 * 1024  # one part's JSON: 96 KiB of data in base64, and the rest


class CommandArgs(_Message, frozen=True, forbid_unknown_fields=True):
    """The sealed part of a command frame: its arguments (checked by the box per kind) and who issued it."""

    args: Annotated[dict[Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$")], Any],
                    msgspec.Meta(max_length=32)]
    by: Text


class CommandResult(_Message, frozen=True, forbid_unknown_fields=True):
    """Box -> cloud: where a command stands. ``id`` and ``seq`` are absent only for a refused frame
    that did not parse; ``reason`` is a ``command_wire.Refusal`` code when ``state`` is refused; the
    ``detail`` is flat (what the console shows), never patient data."""

    v: Literal[1]
    box_id: BoxId
    state: CommandState
    at: Time
    id: CommandId | None = None
    seq: Seq | None = None
    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{1,16}$")] | None = None
    reason: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,32}$")] | None = None
    message: Annotated[str, msgspec.Meta(max_length=512, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    detail: Annotated[dict[ResultKey, ResultValue], msgspec.Meta(max_length=64)] = {}


class CommandBlobPart(_Message, frozen=True, forbid_unknown_fields=True):
    """Box -> cloud: one part of a command's sealed blob (the diagnostic bundle). ``sha256`` is the
    whole sealed blob's; the cloud keeps the blob once every part is in and the digest matches."""

    v: Literal[1]
    box_id: BoxId
    id: CommandId
    part: Annotated[int, msgspec.Meta(ge=0, le=63)]
    parts: Annotated[int, msgspec.Meta(ge=1, le=64)]
    size: Annotated[int, msgspec.Meta(ge=1, le=4 * 1024 * 1024)]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    data: Annotated[bytes, msgspec.Meta(min_length=1, max_length=96 * 1024)]  # base64 in JSON


# -- the signed commissioning report ({prefix}/{box}/commission; core/commissioning.py) ----------------------
LongText = Annotated[str, msgspec.Meta(max_length=512, pattern=r"^[^\x00-\x1f\x7f]*$")]
CheckKey = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,32}$")]
ReportId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
Engineer = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]
CheckOutcome = Literal["ok", "FAIL", "skipped", "manual", "confirmed"]  # manual: open; confirmed: attested
ReportResult = Literal["PASSED", "FAILED", "INCOMPLETE"]


class CommissioningCheck(_Message, frozen=True, forbid_unknown_fields=True):
    """One check of ``mgw commission``: when it started (Unix seconds), how long it took, its outcome."""

    key: CheckKey
    name: Text
    manual: bool
    outcome: CheckOutcome
    detail: LongText
    started_at: Time
    seconds: Seconds


class CommissioningReport(_Message, frozen=True, forbid_unknown_fields=True):
    """The commissioning report a box signs (version 1). Its bytes are canonical: ``encode_canonical``
    (keys sorted, no spaces); the cloud refuses a report whose bytes are not, or whose ``result``
    is not what its checks give (``core.commissioning.result_of``)."""

    v: Literal[1]
    kind: Literal["mgw-commissioning-report"]
    report_id: ReportId
    box_id: BoxId
    site: Text
    time_zone: Text
    engineer: Engineer
    modality: Text
    modality_make: Text
    modality_model: Text
    modality_ae: Text
    modality_address: Text
    software: Text
    started_at: Time
    finished_at: Time
    result: ReportResult
    checks: Annotated[list[CommissioningCheck], msgspec.Meta(min_length=1, max_length=32)]


class SignedCommissioningReport(_Message, frozen=True, forbid_unknown_fields=True):
    """What the box publishes: the report's exact bytes, its ECDSA P-256 / SHA-256 signature (DER) by
    the box key, and the box certificate (PEM) that the cloud chains to the fleet CA."""

    v: Literal[1]
    report: Annotated[bytes, msgspec.Meta(min_length=2, max_length=32 * 1024)]  # base64 in JSON
    signature: Annotated[bytes, msgspec.Meta(min_length=8, max_length=160)]
    certificate: Pem


def encode_canonical(value: _Message) -> bytes:
    """A message as canonical JSON: keys sorted, no whitespace (what a signature covers)."""
    return msgspec.json.encode(value, order="sorted")


class EnrolRequest(msgspec.Struct, frozen=True):
    """``POST simpleenroll``: a one-time token and the box's CSR (PEM). Unknown keys are ignored."""

    token: EnrolToken
    csr: Pem


class ReenrolRequest(msgspec.Struct, frozen=True):
    """``POST simplereenroll``: the CSR (PEM) for the renewed certificate."""

    csr: Pem


State = Birth | Death  # decoded by the "kind" tag


def parse(kind: type[T], payload: bytes, what: str, max_bytes: int = MAX_MESSAGE_BYTES) -> T:
    """``payload`` as a ``kind``, or ``FrameError("<what>: <reason>")``; never another exception."""
    if len(payload) > max_bytes:
        raise FrameError(f"{what}: {len(payload)} bytes, above the {max_bytes}-byte limit")
    try:
        return msgspec.json.decode(payload, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise FrameError(f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise FrameError(f"{what}: not JSON ({exc})") from None
    except RecursionError:
        raise FrameError(f"{what}: nested too deeply") from None


def convert(kind: type[T], value: Any, what: str) -> T:
    """Plain values (dicts, strings) as a ``kind``, strictly, or ``FrameError`` naming the field."""
    try:
        return msgspec.convert(value, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise FrameError(f"{what}: {exc}") from None


def parse_state(payload: bytes) -> Birth | Death:
    """A retained birth or death message (a union tagged by ``kind``)."""
    return parse(State, payload, "state")  # type: ignore[arg-type]


def encode(value: _Message) -> bytes:
    """A message as JSON bytes (what ``parse`` reads back)."""
    return msgspec.json.encode(value)


def to_builtins(value: _Message) -> dict[str, Any]:
    """A parsed message as plain JSON types (for storage and the API)."""
    out = msgspec.to_builtins(value)
    assert isinstance(out, dict)
    return out
