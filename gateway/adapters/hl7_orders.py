"""HL7 v2 orders from a RIS (ORM^O01, IHE RAD-4 "Procedure Scheduled") into worklist entries (hl7apy).

The second way the cloud takes the site's worklist (the first is a C-FIND to the RIS,
``worklist_scu``): the RIS sends orders over MLLP (``adapters/mllp.py``) and gets an ACK for each.
``parse_order`` turns one message into an ``Order``: a new or changed order (ORC-1 ``NW``, ``XO``,
``SC``) is the feed's typed ``WorklistEntry``, a cancelled or discontinued one (``CA``, ``DC``) its
``WorklistCancel``. Every value is checked as the feed checks it (``core.schema``); a message that
does not fit is refused with a reason naming the field, never its value (no PHI in an ACK or a log).

Where each attribute comes from (IHE RAD TF-2 4.4, HL7 v2.3.1):

| worklist | HL7 |
|---|---|
| Patient ID, Name, Birth Date, Sex | PID-3.1, PID-5 (family^given^middle), PID-7 (first 8), PID-8 |
| Referring Physician | PV1-8 (family^given, components 2 and 3) |
| Accession Number | OBR-18 (Placer Field 1) |
| Requested Procedure ID | OBR-19 (Placer Field 2) |
| Scheduled Procedure Step ID | OBR-20 (Filler Field 1) |
| Requested Procedure / Step Description | OBR-4.2 (Universal Service ID, text) |
| Modality | OBR-24 (Diagnostic Service Section ID) |
| Scheduled start | OBR-27.4 (Quantity/Timing, start date/time), else OBR-7 |
| Study Instance UID | ZDS-1.1 |

The Scheduled Station AE Title is not in the order: the cloud assigns stations (planned). Text is
decoded as MSH-18 says (``UNICODE UTF-8``, ``GB 18030-2000``; UTF-8 when empty).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from gateway.core import schema
from gateway.core.errors import FrameError
from gateway.core.schema import WorklistCancel, WorklistEntry
from gateway.logs import MSG

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
_ENCODINGS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "GB 18030-2000": "gb18030",
              "ASCII": "ascii", "8859/1": "latin-1"}
_NEW = ("NW", "XO", "SC")
_CANCEL = ("CA", "DC")


@dataclass(frozen=True)
class Order:
    message_control_id: str  # MSH-10, echoed in the ACK
    control: str  # ORC-1
    entry: WorklistEntry | None = None
    cancel: WorklistCancel | None = None


def parse_order(raw: bytes) -> Order:
    """One ORM^O01 as an ``Order``; ``FrameError`` with a reason (a field, never a value)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise FrameError(f"HL7 message of {len(raw)} bytes, above {MAX_MESSAGE_BYTES}")
    text = _decode(raw)
    try:
        message = parse_message(text.replace("\n", "\r").strip("\r"), find_groups=False)
    except (HL7apyException, ValueError, IndexError, KeyError) as exc:
        raise FrameError(f"HL7 message does not parse ({type(exc).__name__})") from None
    if _field(message, "MSH", 9, 1) != "ORM" or _field(message, "MSH", 9, 2) != "O01":
        raise FrameError("HL7 message is not ORM^O01")
    control_id = _field(message, "MSH", 10)
    control = _field(message, "ORC", 1)
    accession, step_id = _field(message, "OBR", 18), _field(message, "OBR", 20)
    if control in _CANCEL:
        cancel = schema.convert(WorklistCancel, {"step_id": step_id, "accession_number": accession}, "HL7 order")
        return Order(control_id, control, cancel=cancel)
    if control not in _NEW:
        raise FrameError("ORC-1 order control is not NW, XO, SC, CA or DC")
    return Order(control_id, control, entry=schema.convert(WorklistEntry, _entry_doc(message), "HL7 order"))


def _decode(raw: bytes) -> str:
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = head.split(b"|")
    charset = fields[17].decode("ascii", "replace").strip() if len(fields) > 17 else ""
    encoding = _ENCODINGS.get(charset)
    if encoding is None:
        raise FrameError("MSH-18 names a character set we do not read")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        raise FrameError(f"HL7 message is not valid {encoding}") from None


def _entry_doc(message: Any) -> dict[str, Any]:
    start = _field(message, "OBR", 27, 4) or _field(message, "OBR", 7)
    description = _field(message, "OBR", 4, 2)
    name = "^".join(_field(message, "PID", 5, c) for c in (1, 2, 3)).rstrip("^")
    referring = "^".join(_field(message, "PV1", 8, c) for c in (2, 3)).rstrip("^")
    return {
        "accession_number": _field(message, "OBR", 18), "patient_id": _field(message, "PID", 3, 1),
        "patient_name": name, "birth_date": _field(message, "PID", 7)[:8],
        "sex": s if (s := _field(message, "PID", 8)) in ("M", "F", "O") else "",
        "requested_procedure_id": _field(message, "OBR", 19), "requested_procedure_description": description,
        "study_instance_uid": _field(message, "ZDS", 1, 1), "referring_physician": referring,
        "step": {"step_id": _field(message, "OBR", 20), "modality": _field(message, "OBR", 24),
                 "start_date": start[:8], "start_time": start[8:14], "description": description,
                 "status": "SCHEDULED"},
    }


def _field(message: Any, segment: str, number: int, component: int = 0) -> str:
    """The text of ``segment``-``number`` (its ``component``, 1-based, when given); empty when absent."""
    for child in message.children:
        if child.name == segment:
            fields = child.to_er7().split("|")
            index = number if segment != "MSH" else number - 1  # MSH-1 is the field separator itself
            value = fields[index] if len(fields) > index else ""
            value = value.split("~")[0]
            if component:
                parts = value.split("^")
                value = parts[component - 1] if len(parts) >= component else ""
            return value.strip()
    return ""


def ack(raw: bytes, code: str, text: str = "") -> bytes:
    """The ACK for ``raw`` (MSA-1 ``AA`` accepted, ``AE`` error, ``AR`` rejected; MSA-3 ``text``)."""
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("ascii", "replace").split("|")
    def at(i: int) -> str:
        return head[i] if len(head) > i else ""
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    msh = "|".join(["MSH", "^~\\&", at(4), at(5), at(2), at(3), now, "", "ACK^O01", f"ACK{at(9)}"[:20],
                    at(10) or "P", at(11) or "2.3.1"])
    msa = "|".join(["MSA", code, at(9), text.replace("|", " ")[:80]])
    return f"{msh}\r{msa}\r".encode()


def answer(raw: bytes, accept: Callable[[Order], None]) -> bytes:
    """The ACK for one message: ``AA`` once ``accept`` took its order, ``AE`` with the reason when it
    does not parse or fit, ``AR`` when ``accept`` failed (the RIS sends it again)."""
    try:
        order = parse_order(raw)
    except FrameError as exc:
        log.warning("HL7 order refused", extra={"MESSAGE_ID": MSG.WORKLIST_ORDER_REFUSED.value, "ACK": "AE",
                                                "REASON": str(exc)})
        return ack(raw, "AE", str(exc))
    try:
        accept(order)
    except Exception:
        log.exception("HL7 order not taken", extra={"MESSAGE_ID": MSG.WORKLIST_ORDER_REFUSED.value, "ACK": "AR"})
        return ack(raw, "AR", "not taken; send again")
    return ack(raw, "AA")


# -- performed status back to the RIS (IHE RAD-... "Procedure Status Update", ORM^O01 with ORC-1 SC) -------
# ORC-5 Order Status, HL7 v2.5 table 0038: IP in process, CM completed, DC discontinued.
ORDER_STATUS = {"IN PROGRESS": "IP", "COMPLETED": "CM", "DISCONTINUED": "DC"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("~", "\\R\\"), ("&", "\\T\\"), ("^", "\\S\\"))


def _escaped(value: str, keep_components: bool = False) -> str:
    """A value as HL7 text: its delimiters escaped (``^`` kept when it separates a name's components)."""
    for raw, escape in _ESCAPES:
        if not (keep_components and raw == "^"):
            value = value.replace(raw, escape)
    return value


def status_message(entry: WorklistEntry, status: str, control_id: str, *, sending: str = "MGW",
                   receiving: str = "RIS", at: float | None = None) -> bytes:
    """The ORM^O01 status update (ORC-1 ``SC``, ORC-5 ``IP``/``CM``/``DC``) for an order the RIS sent:
    the order's identifiers as it sent them (OBR-18 accession, OBR-19 requested procedure, OBR-20
    step), UTF-8 (MSH-18 ``UNICODE UTF-8``). ``KeyError`` for a status with no ORC-5 code."""
    code = ORDER_STATUS[status]
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() if at is None else at))
    step = entry.step
    segments = [
        "|".join(["MSH", "^~\\&", sending, "", receiving, "", now, "", "ORM^O01", _escaped(control_id)[:20], "P",
                  "2.5", "", "", "", "", "UNICODE UTF-8"]),
        "|".join(["PID", "1", "", _escaped(entry.patient_id), "", _escaped(entry.patient_name, keep_components=True)]),
        "|".join(["ORC", "SC", _escaped(entry.accession_number), "", "", code]),
        "|".join(["OBR", "1", _escaped(entry.accession_number), "", "^" + _escaped(step.description), "", "", "",
                  "", "", "", "", "", "", "", "", "", "", _escaped(entry.accession_number),
                  _escaped(entry.requested_procedure_id), _escaped(step.step_id), "", "", "", _escaped(step.modality),
                  code]),
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def ack_code(answer: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-3 of an ACK (``("", "")`` when it has no MSA segment)."""
    for segment in answer.decode("utf-8", "replace").replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "MSA":
            return (fields[1] if len(fields) > 1 else ""), (fields[3] if len(fields) > 3 else "")[:200]
    return "", ""
