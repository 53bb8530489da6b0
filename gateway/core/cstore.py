"""The C-STORE SCP's rules, without I/O: what is read of a received dataset, and how we answer.

The edge's storage service (``adapters/dicom_receive.py``) seals each received dataset, feeds
it to the structure walk (``core.dataset``) and answers one of ``StoreStatus``. This module
says which top-level tags that walk keeps (``WANTED``), what becomes of them
(``InstanceHeader``) and which status answers each outcome (``status_for``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.core.dataset import Walked
from gateway.core.errors import DatasetLimitError, DatasetStructureError, InstanceMismatchError, SpoolFullError
from gateway.core.exam import HEADER_TAGS


class StoreStatus(enum.IntEnum):
    """C-STORE statuses we answer (PS3.4 B.2.3; 0xC210/0xC211 in pynetdicom's usage)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC210
    PROCESSING_FAILURE = 0xC211
    TOO_COSTLY = 0xC212  # cannot understand: reading it would pass the reader's limits (core.dataset.Limits)
    INVALID_INSTANCE = 0x0117  # PS3.7 C.4.2: invalid SOP Instance (absent, or not the command's)
    CLASS_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, Data Set does not match SOP Class


def status_for(exc: BaseException) -> StoreStatus:
    """The answer to a C-STORE that raised ``exc``: a full spool is 0xA700, data past a reader
    limit 0xC212, unparseable data 0xC210, a dataset that is not the command's instance its own
    (``InstanceHeader.mismatch``), anything else 0xC211."""
    if isinstance(exc, InstanceMismatchError):
        return StoreStatus(exc.status)
    if isinstance(exc, SpoolFullError):
        return StoreStatus.OUT_OF_RESOURCES
    if isinstance(exc, DatasetLimitError):
        return StoreStatus.TOO_COSTLY
    if isinstance(exc, DatasetStructureError):
        return StoreStatus.CANNOT_UNDERSTAND
    return StoreStatus.PROCESSING_FAILURE


SOP_CLASS_UID, SOP_INSTANCE_UID = 0x00080016, 0x00080018
STUDY_UID, SERIES_UID = 0x0020000D, 0x0020000E
REQUESTED_PRIORITY, STUDY_PRIORITY = 0x00401003, 0x0032000C  # for priority rules (core.priority)
# Utilisation's header strings (core.exam.HEADER_TAGS: DA, TM, DT, CS, SH; all short ASCII), read
# by the same walk at no extra I/O. Tag numbers from the DICOM data dictionary (PS3.6).
HEADER_TAG_NUMBERS: Mapping[str, int] = MappingProxyType({
    "Modality": 0x00080060,
    "AcquisitionDateTime": 0x0008002A,
    "AcquisitionDate": 0x00080022,
    "AcquisitionTime": 0x00080032,
    "ContentDate": 0x00080023,
    "ContentTime": 0x00080033,
    "SeriesDate": 0x00080021,
    "SeriesTime": 0x00080031,
    "StudyDate": 0x00080020,
    "StudyTime": 0x00080030,
    "TimezoneOffsetFromUTC": 0x00080201,
})
WANTED = frozenset({SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_UID, SERIES_UID, REQUESTED_PRIORITY, STUDY_PRIORITY,
                    *HEADER_TAG_NUMBERS.values()})


@dataclass(frozen=True)
class InstanceHeader:
    """What the edge keeps of a dataset's top level, all met on the structure walk; never the pixels."""

    study_instance_uid: str = ""  # "" if absent
    series_instance_uid: str = ""  # "" if absent
    header: dict[str, str] = field(default_factory=dict)  # utilisation strings by keyword; empty ones omitted
    requested_priority: str = ""  # (0040,1003) Requested Procedure Priority, else (0032,000C) Study Priority ID
    sop_class_uid: str = ""  # (0008,0016) as the dataset says; "" if absent
    sop_instance_uid: str = ""  # (0008,0018) as the dataset says; "" if absent

    @classmethod
    def of(cls, walked: Walked) -> InstanceHeader:
        header = {kw: text for kw in HEADER_TAGS if (text := walked.text(HEADER_TAG_NUMBERS[kw]))}
        return cls(walked.text(STUDY_UID), walked.text(SERIES_UID), header,
                   walked.text(REQUESTED_PRIORITY) or walked.text(STUDY_PRIORITY),
                   walked.text(SOP_CLASS_UID), walked.text(SOP_INSTANCE_UID))

    def mismatch(self, command_class_uid: str, command_instance_uid: str) -> tuple[StoreStatus, str] | None:
        """Why the dataset is not the instance the C-STORE command names, with the status that
        refuses it; None when it is. The SOP UID policy (docs/conformance.md): an instance is
        identified end to end by its SOP Instance UID, so a dataset without one, or whose own
        differs from the command's Affected SOP Instance UID, is refused (0x0117) rather than
        stored under a name it does not carry; one of another SOP Class than the command's is
        refused with 0xA900."""
        if not self.sop_instance_uid:
            return StoreStatus.INVALID_INSTANCE, "the dataset has no SOP Instance UID (0008,0018)"
        if self.sop_instance_uid != command_instance_uid:
            return StoreStatus.INVALID_INSTANCE, ("the dataset's SOP Instance UID (0008,0018) differs from the "
                                                  "command's Affected SOP Instance UID")
        if self.sop_class_uid != command_class_uid:
            return StoreStatus.CLASS_MISMATCH, ("the dataset's SOP Class UID (0008,0016) differs from the "
                                                "command's Affected SOP Class UID" if self.sop_class_uid else
                                                "the dataset has no SOP Class UID (0008,0016)")
        return None
