"""Exams from DICOM headers and MPPS: pure, no I/O, no clock (``now`` is a parameter).

An *exam* is one study on one modality: its start and end (seconds since the epoch, UTC),
how many series and images it holds, and where the times came from. The edge derives it
from the headers of the instances it receives; an MPPS for the same study replaces the
times. The study is known to the cloud only by a keyed hash (``study_key``), never its UID.

Header times, in order of preference (PS3.3 C.7.3.1, C.7.6.1, C.7.6.16):
AcquisitionDateTime; AcquisitionDate + AcquisitionTime; ContentDate + ContentTime;
SeriesDate + SeriesTime; StudyDate + StudyTime. Vendor quirks handled here: a time without
its date borrows the next date in that list; ACR-NEMA style ``HH:MM:SS`` and ``YYYY.MM.DD``;
fractional seconds of any length; a DT with or without ``&ZZXX`` offset; a date of
00000000 / 19000101 / 19700101 (unset clocks) is ignored; an AcquisitionDateTime holding
only a date is ignored in favour of a fuller one.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from dataclasses import dataclass, replace

HEADER_TAGS = (
    "Modality", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime",
    "SeriesDate", "SeriesTime", "StudyDate", "StudyTime", "TimezoneOffsetFromUTC",
)
# The gateway's UID root for the objects it makes itself: ``mgw commission``'s probe (every UID of it,
# study included, lies under this root, adapters/dicom_scu.py). Such an object is no patient's exam.
COMMISSIONING_UID_ROOT = "1.2.826.0.1.3680043.10.1394."
_UNSET_DATES = frozenset({"00000000", "19000101", "19700101"})
_DATE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TIME = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(r"^(\d{8})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def is_test_object(study_uid: str) -> bool:
    """True for a study the gateway made to test itself (a commissioning probe): never an exam."""
    return study_uid.startswith(COMMISSIONING_UID_ROOT)


class TimeSource(enum.StrEnum):
    """Where an exam's start and end came from (in order of trust)."""

    MPPS = "mpps"
    HEADER = "header"
    RECEIVED = "received"  # no usable header time: when the edge received the instances


class ExamStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    DISCONTINUED = "discontinued"


@dataclass(frozen=True)
class InstanceTime:
    """What one received instance tells about its exam."""

    study_key: str
    series_key: str
    modality: str
    acquired_at: float  # epoch seconds
    source: TimeSource
    received_at: float


@dataclass(frozen=True)
class Exam:
    study_key: str
    modality: str
    start: float
    end: float
    images: int
    series: int
    source: TimeSource
    status: ExamStatus
    first_received_at: float
    last_received_at: float
    cloud_stored_at: float | None = None  # all instances durable in the cloud (edge clock)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)


def study_key(secret: bytes, study_uid: str) -> str:
    """The study's name outside the box: HMAC-SHA256 under a per-box secret, 32 hex digits.
    A plain hash would let anyone who can guess UIDs (org root + date + counter) test them."""
    return hmac.new(secret, study_uid.encode("ascii", "replace"), hashlib.sha256).hexdigest()[:32]


def _offset_s(text: str) -> int | None:
    m = _OFFSET.match(text.strip())
    if not m:
        return None
    sign = -1 if m.group(1) == "-" else 1
    return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)


def parse_date(text: str) -> tuple[int, int, int] | None:
    m = _DATE.match(text.strip())
    if not m or m.group(0).replace(".", "") in _UNSET_DATES:
        return None
    y, mo, d = (int(g) for g in m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= _month_days(y, mo)):
        return None
    return y, mo, d


def _month_days(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_time(text: str) -> float | None:
    """Seconds since midnight of a TM value, or None."""
    m = _TIME.match(text.strip())
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if h > 23 or mi > 59 or s > 60:
        return None
    frac = float("0." + m.group(4)) if m.group(4) else 0.0
    return h * 3600 + mi * 60 + min(s, 59) + frac


def _epoch(date: tuple[int, int, int], seconds: float, offset_s: int) -> float:
    return days_from_civil(*date) * 86400.0 + seconds - offset_s


def parse_datetime(text: str, default_offset_s: int) -> float | None:
    """Epoch seconds of a DT value that carries at least a time, or None."""
    m = _DT.match(text.strip())
    if not m or not m.group(2):
        return None
    date = parse_date(m.group(1))
    raw = m.group(2)
    hhmmss = raw.split(".")[0]
    if date is None or len(hhmmss) % 2:
        return None
    seconds = parse_time(raw if len(hhmmss) == 6 else hhmmss)
    if seconds is None:
        return None
    offset = _offset_s(m.group(3)) if m.group(3) else default_offset_s
    return _epoch(date, seconds, default_offset_s if offset is None else offset)


def header_time(header: dict[str, str], default_offset_s: int) -> float | None:
    """The acquisition time of one instance from its header strings, or None."""
    offset = _offset_s(header.get("TimezoneOffsetFromUTC", "")) if header.get("TimezoneOffsetFromUTC") else None
    offset = default_offset_s if offset is None else offset
    if header.get("AcquisitionDateTime"):
        when = parse_datetime(header["AcquisitionDateTime"], offset)
        if when is not None:
            return when
    dates = [parse_date(header.get(f"{p}Date", "")) for p in ("Acquisition", "Content", "Series", "Study")]
    for i, prefix in enumerate(("Acquisition", "Content", "Series", "Study")):
        seconds = parse_time(header.get(f"{prefix}Time", ""))
        if seconds is None:
            continue
        date = next((d for d in dates[i:] if d is not None), None)
        if date is not None:
            return _epoch(date, seconds, offset)
    return None


def instance_time(header: dict[str, str], *, study_key: str, series_key: str, received_at: float,
                  default_offset_s: int, max_header_age_s: float, max_header_ahead_s: float) -> InstanceTime:
    """Choose the instance's acquisition time: the header's when plausible, else the receive time.

    A header time later than ``received_at + max_header_ahead_s`` (a modality clock ahead) or older
    than ``received_at - max_header_age_s`` (a wrong clock, or an old study re-sent) is not used.
    """
    when = header_time(header, default_offset_s)
    source = TimeSource.HEADER
    if when is None or not received_at - max_header_age_s <= when <= received_at + max_header_ahead_s:
        when, source = received_at, TimeSource.RECEIVED
    modality = (header.get("Modality") or "OT").strip().upper()[:16] or "OT"
    return InstanceTime(study_key, series_key, modality, when, source, received_at)


def fold(exam: Exam | None, inst: InstanceTime, new_series: bool) -> Exam:
    """The exam after one more instance. MPPS times, once there, are never replaced by headers."""
    if exam is None:
        return Exam(inst.study_key, inst.modality, inst.acquired_at, inst.acquired_at, 1, 1, inst.source,
                    ExamStatus.IN_PROGRESS, inst.received_at, inst.received_at)
    start, end, source = exam.start, exam.end, exam.source
    if exam.source is not TimeSource.MPPS:
        if exam.source is TimeSource.RECEIVED and inst.source is TimeSource.HEADER:
            start, end, source = inst.acquired_at, inst.acquired_at, TimeSource.HEADER
        elif inst.source is exam.source:
            start, end = min(start, inst.acquired_at), max(end, inst.acquired_at)
    return replace(exam, start=start, end=end, source=source, images=exam.images + 1,
                   series=exam.series + (1 if new_series else 0),
                   first_received_at=min(exam.first_received_at, inst.received_at),
                   last_received_at=max(exam.last_received_at, inst.received_at))


def apply_mpps(exam: Exam | None, *, study_key: str, modality: str, start: float | None, end: float | None,
               status: ExamStatus, now: float) -> Exam:
    """The exam after an MPPS N-CREATE or N-SET: its times win over the headers'."""
    if exam is None:
        begin = start if start is not None else now
        return Exam(study_key, modality or "OT", begin, end if end is not None else begin, 0, 0,
                    TimeSource.MPPS, status, now, now)
    new_start = start if start is not None else exam.start
    new_end = end if end is not None else (exam.end if exam.source is not TimeSource.MPPS else new_start)
    return replace(exam, start=new_start, end=max(new_start, new_end), source=TimeSource.MPPS, status=status,
                   modality=modality or exam.modality)


def close(exam: Exam) -> Exam:
    """A quiet exam built from headers is complete; an MPPS one keeps its MPPS status."""
    if exam.status is ExamStatus.IN_PROGRESS and exam.source is not TimeSource.MPPS:
        return replace(exam, status=ExamStatus.COMPLETED)
    return exam


def to_record(exam: Exam, box_id: str, revision: int) -> dict[str, object]:
    """The utilisation record sent to the cloud (docs/protocol.md): no UID, no patient data."""
    return {
        "v": 1, "box_id": box_id, "study_key": exam.study_key, "revision": revision, "modality": exam.modality,
        "start": round(exam.start, 3), "end": round(exam.end, 3), "images": exam.images, "series": exam.series,
        "source": exam.source.value, "status": exam.status.value,
        "first_received_at": round(exam.first_received_at, 3), "last_received_at": round(exam.last_received_at, 3),
        "cloud_stored_at": None if exam.cloud_stored_at is None else round(exam.cloud_stored_at, 3),
    }
