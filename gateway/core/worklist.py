"""Modality Worklist (PS3.4 Annex K): the scheduled procedure step and C-FIND matching (pure).

A ``WorklistItem`` is one Requested Procedure with one Scheduled Procedure Step, the unit a
modality picks from its worklist; the cache on the box holds them (``adapters/worklist_store``),
the SCP answers from them (``adapters/worklist_scp``). Values are Python strings: the adapter
decodes a query in the modality's Specific Character Set and encodes the answer (``answer_charset``).

Matching, per PS3.4 C.2.2.2 as Annex K applies it (docs/conformance.md, "Modality Worklist"):

- an absent or empty key matches everything (universal matching);
- ``*`` and ``?`` in a key of a string VR (not DA, TM, UI) are wildcards (any run, one character);
- DA and TM keys take ranges ``a-b``, ``a-`` and ``-b``; Scheduled Procedure Step Start Date and
  Start Time given together match as one date-time range (C.2.2.2.5.2);
- a UI key may list several UIDs separated by ``\\`` (list of UID matching);
- the Scheduled Procedure Step Sequence's one item is matched key by key (sequence matching);
- anything else is single value matching, exact after leading and trailing spaces are dropped.

Our choice (C.2.2.2.1 leaves it to the SCP): PN is matched case-insensitively, with trailing
empty components ignored (``DOE^JOHN^^`` is ``DOE^JOHN``); every other VR is case-sensitive.
An item whose attribute is empty matches only universal matching of that key.

Every requested key comes back, empty when the item has no value for it; a zero-length
Scheduled Procedure Step Sequence (or its empty item) asks for every step attribute.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from gateway.core import schema
from gateway.core.errors import PeerError

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
STEP_SEQUENCE = "ScheduledProcedureStepSequence"


class QueryError(PeerError):
    """The identifier cannot be matched: a malformed range, a wildcard where none is allowed."""


@dataclass(frozen=True)
class ScheduledStep:
    """One item of the Scheduled Procedure Step Sequence (0040,0100)."""

    modality: str = ""
    station_ae_title: str = ""
    station_name: str = ""
    start_date: str = ""  # DA, YYYYMMDD, in the site's local time
    start_time: str = ""  # TM, HHMMSS[.ffffff]
    performing_physician: str = ""  # PN
    step_id: str = ""
    description: str = ""
    status: str = "SCHEDULED"  # SCHEDULED, ARRIVED, READY, STARTED, DEPARTED, ...


@dataclass(frozen=True)
class WorklistItem:
    """One Requested Procedure with its Scheduled Procedure Step: one C-FIND match."""

    patient_name: str = ""  # PN
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    study_instance_uid: str = ""
    referring_physician: str = ""  # PN
    step: ScheduledStep = ScheduledStep()

    @property
    def key(self) -> tuple[str, str]:
        """What identifies it in the cache: (Scheduled Procedure Step ID, Accession Number)."""
        return self.step.step_id, self.accession_number


# keyword -> (field, VR). The top level, then the step's sequence item.
TOP_KEYS: dict[str, tuple[str, str]] = {
    "PatientName": ("patient_name", "PN"),
    "PatientID": ("patient_id", "LO"),
    "PatientBirthDate": ("birth_date", "DA"),
    "PatientSex": ("sex", "CS"),
    "AccessionNumber": ("accession_number", "SH"),
    "RequestedProcedureID": ("requested_procedure_id", "SH"),
    "RequestedProcedureDescription": ("requested_procedure_description", "LO"),
    "StudyInstanceUID": ("study_instance_uid", "UI"),
    "ReferringPhysicianName": ("referring_physician", "PN"),
}
STEP_KEYS: dict[str, tuple[str, str]] = {
    "Modality": ("modality", "CS"),
    "ScheduledStationAETitle": ("station_ae_title", "AE"),
    "ScheduledStationName": ("station_name", "SH"),
    "ScheduledProcedureStepStartDate": ("start_date", "DA"),
    "ScheduledProcedureStepStartTime": ("start_time", "TM"),
    "ScheduledPerformingPhysicianName": ("performing_physician", "PN"),
    "ScheduledProcedureStepID": ("step_id", "SH"),
    "ScheduledProcedureStepDescription": ("description", "LO"),
    "ScheduledProcedureStepStatus": ("status", "CS"),
}
# Keys of the identifier that are not attributes to match (the adapter handles them).
CONTROL_KEYS = frozenset({"SpecificCharacterSet"})
_NO_WILDCARD = frozenset({"DA", "TM", "UI"})
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_TIME_TOP = "235959999999"  # the latest HHMMSSffffff: pads an upper bound


@dataclass(frozen=True)
class Query:
    """A parsed C-FIND identifier: the keys asked for, with the value each is matched against.

    ``step`` is None when the identifier has no Scheduled Procedure Step Sequence; an empty
    mapping when it has one asking for every step attribute (zero-length, or an empty item).
    ``unsupported`` are keys of the identifier we neither match nor know (answered empty, 0xFF01).
    """

    top: Mapping[str, str]
    step: Mapping[str, str] | None
    unsupported: tuple[str, ...] = ()

    @property
    def all_step_keys(self) -> bool:
        return self.step is not None and not self.step


def parse_query(top: Mapping[str, str], step: Mapping[str, str] | None,
                unsupported: tuple[str, ...] = ()) -> Query:
    """A ``Query`` from the identifier's values by keyword (decoded strings); ``QueryError`` when a
    key's value cannot be matched (a malformed date or time range, a wildcard in DA, TM or UI)."""
    for keyword, value in top.items():
        _check(keyword, TOP_KEYS[keyword][1], value)
    for keyword, value in (step or {}).items():
        _check(keyword, STEP_KEYS[keyword][1], value)
    return Query(dict(top), None if step is None else dict(step), unsupported)


def _check(keyword: str, vr: str, value: str) -> None:
    value = value.strip()
    if not value:
        return
    if vr in _NO_WILDCARD and ("*" in value or "?" in value):
        raise QueryError(f"{keyword}: wildcards are not allowed in {vr}")
    if vr == "DA":
        _range(keyword, value, _DATE)
    elif vr == "TM":
        _range(keyword, value.replace(":", ""), _TIME)


def _range(keyword: str, value: str, pattern: re.Pattern[str]) -> tuple[str, str]:
    """``(low, high)`` of a single value or range; an open end is ``""``."""
    if value.count("-") > 1:
        raise QueryError(f"{keyword}: malformed range")
    low, _, high = value.partition("-") if "-" in value else (value, "", value)
    if (not low and not high) or any(part and not pattern.match(part) for part in (low, high)):
        raise QueryError(f"{keyword}: malformed value or range")
    return low, high


# -- matching ----------------------------------------------------------------------------------------------
def matches(item: WorklistItem, query: Query) -> bool:
    """Whether ``item`` answers ``query`` (the query was made by ``parse_query``)."""
    for keyword, value in query.top.items():
        field_name, vr = TOP_KEYS[keyword]
        if not _matches_value(getattr(item, field_name), value, vr):
            return False
    step = query.step or {}
    date, time = step.get("ScheduledProcedureStepStartDate", "").strip(), \
        step.get("ScheduledProcedureStepStartTime", "").strip()
    combined = bool(date and time)
    if combined and not _matches_datetime(item.step, date, time):
        return False
    for keyword, value in step.items():
        if combined and keyword in ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"):
            continue
        field_name, vr = STEP_KEYS[keyword]
        if not _matches_value(getattr(item.step, field_name), value, vr):
            return False
    return True


def _matches_value(have: str, want: str, vr: str) -> bool:
    want, have = want.strip(), have.strip()
    if not want:
        return True  # universal matching
    if not have:
        return False
    if vr == "UI":
        return have in want.split("\\")
    if vr == "DA":
        low, high = _range("", want, _DATE)
        return (not low or have >= low) and (not high or have <= high)
    if vr == "TM":
        low, high = _range("", want.replace(":", ""), _TIME)
        t = _time(have)
        return (not low or t >= _time(low)) and (not high or t <= _time(high, upper=True))
    folded = vr == "PN"
    if folded:
        have, want = _pn(have), _pn(want)
    if "*" in want or "?" in want:
        return wildcard(want, folded).fullmatch(have) is not None
    return have.casefold() == want.casefold() if folded else have == want


def _pn(value: str) -> str:
    """A person name as we compare it: trailing empty components dropped in each group."""
    return "=".join(group.rstrip("^ ") for group in value.split("=")).rstrip("=")


def _time(value: str, upper: bool = False) -> str:
    """A TM as 12 comparable digits HHMMSSffffff: a lower value padded with 0s, an upper bound with
    the latest time it covers (``10`` up to 10:59:59.999999)."""
    whole, _, fraction = value.replace(":", "").partition(".")
    if upper:
        return whole + _TIME_TOP[len(whole):6] + fraction + "9" * (6 - len(fraction))
    return whole + "0" * (6 - len(whole)) + fraction + "0" * (6 - len(fraction))


def _matches_datetime(step: ScheduledStep, date: str, time: str) -> bool:
    """C.2.2.2.5.2: Start Date and Start Time together are one range, date1time1 to date2time2."""
    if not step.start_date.strip():
        return False
    d_low, d_high = _range("", date, _DATE)
    t_low, t_high = _range("", time.replace(":", ""), _TIME)
    have = step.start_date.strip() + _time(step.start_time.strip() or "00")
    low = d_low + _time(t_low or "00") if d_low else ""
    high = d_high + _time(t_high or "23", upper=True) if d_high else ""
    return (not low or have >= low) and (not high or have <= high)


@functools.lru_cache(maxsize=256)
def wildcard(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """``*`` any run (possibly empty), ``?`` one character, everything else itself."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


# -- the station rule --------------------------------------------------------------------------------------
def for_station(item: WorklistItem, calling_ae: str, include_unassigned: bool) -> bool:
    """Whether a modality calling as ``calling_ae`` may see ``item``: its Scheduled Station AE Title
    is the calling AE, or empty when ``include_unassigned``."""
    station = item.step.station_ae_title.strip()
    return station == calling_ae.strip() or (include_unassigned and not station)


# -- the answer ----------------------------------------------------------------------------------------------
def answer(item: WorklistItem, query: Query) -> tuple[dict[str, str], dict[str, str] | None]:
    """The return keys: every key asked for, with the item's value or empty; the step's item too
    (every step attribute when the query's sequence was empty)."""
    top = {keyword: getattr(item, TOP_KEYS[keyword][0]) for keyword in query.top}
    top.update({keyword: "" for keyword in query.unsupported})
    if query.step is None:
        return top, None
    wanted = STEP_KEYS if query.all_step_keys else query.step
    return top, {keyword: getattr(item.step, STEP_KEYS[keyword][0]) for keyword in wanted}


# -- character sets ---------------------------------------------------------------------------------------
# Specific Character Set values we answer in, and the Python codec of each ("" = the default repertoire).
CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf-8",
            "GB18030": "gb18030"}
UTF8 = "ISO_IR 192"


def answer_charset(query_charset: tuple[str, ...], values: list[str]) -> str:
    """The Specific Character Set of an answer: the query's, when it is one of ``CHARSETS`` (a single
    value) and every returned value can be written in it; otherwise UTF-8 (ISO_IR 192)."""
    asked = query_charset[0].strip() if len(query_charset) == 1 else "" if not query_charset else None
    if asked is None or asked not in CHARSETS:
        return UTF8
    codec = CHARSETS[asked]
    try:
        for value in values:
            value.encode(codec)
    except UnicodeEncodeError:
        return UTF8
    return asked


def item_values(item: WorklistItem) -> list[str]:
    """Every string of an item (to choose the answer's character set)."""
    return [getattr(item, f.name) for f in fields(item) if f.name != "step"] + \
        [getattr(item.step, f.name) for f in fields(item.step)]


# -- the feed's typed messages (core.schema) to items, and the cache's document ---------------------------
def item_of(entry: schema.WorklistEntry) -> WorklistItem:
    """The item a parsed worklist entry describes."""
    step = ScheduledStep(**{f.name: getattr(entry.step, f.name) for f in fields(ScheduledStep)})
    top = {f.name: getattr(entry, f.name) for f in fields(WorklistItem) if f.name != "step"}
    return WorklistItem(**top, step=step)


def entry_of(item: WorklistItem) -> schema.WorklistEntry:
    step = schema.WorklistStep(**{f.name: getattr(item.step, f.name) for f in fields(ScheduledStep)})
    top = {f.name: getattr(item, f.name) for f in fields(WorklistItem) if f.name != "step"}
    return schema.WorklistEntry(**top, step=step)


def document(item: WorklistItem) -> bytes:
    """The item as the JSON document the cache seals."""
    return schema.encode(entry_of(item))


def from_document(raw: bytes) -> WorklistItem:
    """An item back from its document; ``FrameError`` if it is not one."""
    return item_of(schema.parse(schema.WorklistEntry, raw, "worklist document"))


def entry_from_attributes(top: Mapping[str, str], step: Mapping[str, str]) -> schema.WorklistEntry:
    """The feed's entry for a worklist answer read from a RIS (its values by keyword, decoded);
    ``FrameError`` naming the field when a value does not fit (no step ID, a date that is not one)."""
    doc: dict[str, object] = {TOP_KEYS[k][0]: v.strip() for k, v in top.items() if k in TOP_KEYS}
    doc["step"] = {STEP_KEYS[k][0]: v.strip() for k, v in step.items() if k in STEP_KEYS}
    return schema.convert(schema.WorklistEntry, doc, "worklist answer")


def update_of(box_id: str, seq: int, entries: list[schema.WorklistEntry], at: float | None = None
              ) -> schema.WorklistUpdate:
    """One update that (re)schedules ``entries`` for a box."""
    return schema.WorklistUpdate(v=1, box_id=box_id, seq=seq, ops=[schema.WorklistUpsert(entry=e) for e in entries],
                                 at=at)
