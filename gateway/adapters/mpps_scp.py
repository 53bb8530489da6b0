"""MPPS SCP (Modality Performed Procedure Step, PS3.4 Annex F): N-CREATE and N-SET.

A ``DicomService`` for the edge AE (see dicom_scp.py). The modality reports a procedure
step IN PROGRESS (N-CREATE), then COMPLETED or DISCONTINUED (N-SET); its start and end
times become the exam's times (source ``mpps``) in place of the image headers'. Only the
SOP Class ``1.2.840.10008.3.1.2.3.3`` is served: N-GET and the notification class are not.
Handlers never raise into pynetdicom; every failure is a DIMSE status.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event

from gateway.adapters.dicom_scp import DicomService, SupportedContext
from gateway.core import exam as exams
from gateway.core.errors import GatewayError
from gateway.core.exam import ExamStatus
from gateway.logs import MSG

log = logging.getLogger(__name__)

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
_STATUS = {"IN PROGRESS": ExamStatus.IN_PROGRESS, "COMPLETED": ExamStatus.COMPLETED,
           "DISCONTINUED": ExamStatus.DISCONTINUED}


class NStatus(enum.IntEnum):
    """N-CREATE / N-SET statuses we answer (PS3.7 Annex C, PS3.4 F.7.2)."""

    SUCCESS = 0x0000
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110  # also "may no longer be updated" (PS3.4 F.7.2.2.2), with a comment
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    NO_SUCH_SOP_CLASS = 0x0118
    MISSING_ATTRIBUTE_VALUE = 0x0121


class MppsSink(Protocol):
    """Where procedure steps go (the edge's ExamRecorder plus its ExamStore)."""

    def mpps(self, study_uid: str, modality: str, start: float | None, end: float | None,
             status: ExamStatus) -> str: ...


class StepBook(Protocol):
    def mpps_get(self, sop_instance_uid: str) -> tuple[str, ExamStatus] | None: ...
    def mpps_put(self, sop_instance_uid: str, study_uid: str, study_key: str, status: ExamStatus,
                 now: float) -> bool: ...


class WorklistBook(Protocol):
    """The worklist cache (``WorklistStore``): a step the modality started leaves the worklist, and
    its performed status is queued for the cloud by the entry's ref."""

    def perform(self, sop_instance_uid: str, steps: list[tuple[str, str]], now: float) -> tuple[int, int]: ...
    def performed(self, sop_instance_uid: str, status: str, now: float) -> int: ...
    def close(self) -> None: ...


class MppsService(DicomService):
    """N-CREATE/N-SET SCP for MPPS; one of the ``DicomListener``'s services.

    With a ``worklist``, an N-CREATE (IN PROGRESS) marks each scheduled step it names (Scheduled
    Step Attributes Sequence: Scheduled Procedure Step ID and Accession Number) done in the
    worklist cache, so the next worklist query no longer offers it, and queues IN PROGRESS for the
    cloud; an N-SET to COMPLETED or DISCONTINUED queues that status for the same steps (the
    telemetry thread reports them, ``edge/worklist_feed.py``)."""

    def __init__(self, sink: MppsSink, book: StepBook, utc_offset_s: int, clock: Callable[[], float],
                 worklist: WorklistBook | None = None) -> None:
        self._sink = sink
        self._book = book
        self._offset_s = utc_offset_s
        self._clock = clock
        self._worklist = worklist

    def stop(self) -> None:
        if self._worklist is not None:
            self._worklist.close()

    def contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(MPPS_SOP_CLASS, scu_role=True, scp_role=False)]

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_N_CREATE, self._on_create), (evt.EVT_N_SET, self._on_set)]

    # -- handlers: never raise ------------------------------------------------------------------------
    def _on_create(self, event: Event) -> tuple[Any, Dataset | None]:
        return self._guard("N-CREATE", event, self._create)

    def _on_set(self, event: Event) -> tuple[Any, Dataset | None]:
        return self._guard("N-SET", event, self._set)

    def _guard(self, what: str, event: Event, fn: Callable[[Event], tuple[Any, Dataset | None]]
               ) -> tuple[Any, Dataset | None]:
        try:
            status, ds = fn(event)
        except GatewayError as exc:
            log.error("MPPS %s not recorded: %s", what, exc, extra={"MESSAGE_ID": MSG.MPPS_REFUSED.value})
            return NStatus.PROCESSING_FAILURE, None
        except Exception:
            log.exception("MPPS %s failed", what, extra={"MESSAGE_ID": MSG.MPPS_REFUSED.value})
            return NStatus.PROCESSING_FAILURE, None
        code = int(status.Status) if isinstance(status, Dataset) else int(status)
        if code != NStatus.SUCCESS:
            log.warning("MPPS %s refused with 0x%04X", what, code, extra={
                "MESSAGE_ID": MSG.MPPS_REFUSED.value, "STATUS": f"0x{code:04X}"})
        return (status if isinstance(status, Dataset) else code), ds

    def _create(self, event: Event) -> tuple[Any, Dataset | None]:
        req = cast(N_CREATE, event.request)
        if str(req.AffectedSOPClassUID) != MPPS_SOP_CLASS:
            return NStatus.NO_SUCH_SOP_CLASS, None
        uid = str(req.AffectedSOPInstanceUID or "")
        if not uid:
            return NStatus.MISSING_ATTRIBUTE_VALUE, None
        ds = event.attribute_list
        if str(ds.get("PerformedProcedureStepStatus", "")).strip() != "IN PROGRESS":
            return NStatus.INVALID_ATTRIBUTE_VALUE, None
        study_uid = _study_uid(ds)
        if not study_uid:
            return NStatus.MISSING_ATTRIBUTE_VALUE, None
        if self._book.mpps_get(uid) is not None:
            return NStatus.DUPLICATE_SOP_INSTANCE, None
        key = self._sink.mpps(study_uid, str(ds.get("Modality", "") or ""), self._when(ds, "Start"), None,
                              ExamStatus.IN_PROGRESS)
        self._book.mpps_put(uid, study_uid, key, ExamStatus.IN_PROGRESS, self._clock())
        self._log(key, ExamStatus.IN_PROGRESS)
        self._close_scheduled(uid, ds)
        return NStatus.SUCCESS, ds

    def _close_scheduled(self, uid: str, ds: Dataset) -> None:
        """The worklist steps this procedure performs are done, IN PROGRESS queued for the cloud (a
        failure here never fails the N-CREATE)."""
        if self._worklist is None:
            return
        steps = [(str(item.get("ScheduledProcedureStepID", "") or ""), str(item.get("AccessionNumber", "") or ""))
                 for item in ds.get("ScheduledStepAttributesSequence") or [] if item.get("ScheduledProcedureStepID")]
        try:
            closed, queued = self._worklist.perform(uid, steps, self._clock())
        except Exception:
            log.exception("MPPS: marking worklist steps done failed", extra={"MESSAGE_ID": MSG.MPPS_REFUSED.value})
            return
        log.info("MPPS: worklist steps done", extra={"MESSAGE_ID": MSG.WORKLIST_UPDATED.value, "SOURCE": "mpps",
                                                     "DONE": closed, "QUEUED": queued})

    def _report_performed(self, uid: str, status: str) -> None:
        """COMPLETED or DISCONTINUED queued for the steps the instance performs (never fails the N-SET)."""
        if self._worklist is None:
            return
        try:
            queued = self._worklist.performed(uid, status, self._clock())
        except Exception:
            log.exception("MPPS: queueing the worklist status failed", extra={"MESSAGE_ID": MSG.MPPS_REFUSED.value})
            return
        log.info("MPPS: worklist status queued", extra={"MESSAGE_ID": MSG.WORKLIST_UPDATED.value, "SOURCE": "mpps",
                                                        "STATUS": status, "QUEUED": queued})

    def _set(self, event: Event) -> tuple[Any, Dataset | None]:
        req = cast(N_SET, event.request)
        if str(req.RequestedSOPClassUID) != MPPS_SOP_CLASS:
            return NStatus.NO_SUCH_SOP_CLASS, None
        uid = str(req.RequestedSOPInstanceUID or "")
        known = self._book.mpps_get(uid)
        if known is None:
            return NStatus.NO_SUCH_OBJECT_INSTANCE, None
        study_uid = known[0]
        if known[1] is not ExamStatus.IN_PROGRESS:
            return _comment("Performed Procedure Step may no longer be updated"), None
        ds = event.modification_list
        raw = str(ds.get("PerformedProcedureStepStatus", "IN PROGRESS") or "IN PROGRESS").strip()
        status = _STATUS.get(raw)
        if status is None:
            return NStatus.INVALID_ATTRIBUTE_VALUE, None
        end = self._when(ds, "End")
        if status is not ExamStatus.IN_PROGRESS and end is None:
            return NStatus.MISSING_ATTRIBUTE_VALUE, None  # F.7.2.2.2: end date/time required to finish
        key = self._sink.mpps(study_uid, str(ds.get("Modality", "") or ""), self._when(ds, "Start"), end, status)
        self._book.mpps_put(uid, study_uid, key, status, self._clock())
        self._log(key, status)
        if status is not ExamStatus.IN_PROGRESS:
            self._report_performed(uid, raw)
        return NStatus.SUCCESS, ds

    def _when(self, ds: Dataset, which: str) -> float | None:
        date = str(ds.get(f"PerformedProcedureStep{which}Date", "") or "")
        time = str(ds.get(f"PerformedProcedureStep{which}Time", "") or "")
        offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
        header = {"AcquisitionDate": date, "AcquisitionTime": time, "TimezoneOffsetFromUTC": offset}
        return exams.header_time(header, self._offset_s) if date and time else None

    @staticmethod
    def _log(key: str, status: ExamStatus) -> None:
        log.info("MPPS %s", status.value, extra={
            "MESSAGE_ID": MSG.MPPS_RECORDED.value, "STUDY_KEY": key, "STATUS": status.value})


def _study_uid(ds: Dataset) -> str:
    seq = ds.get("ScheduledStepAttributesSequence")
    if seq:
        return str(seq[0].get("StudyInstanceUID", "") or "")
    return ""


def _comment(text: str) -> Dataset:
    status = Dataset()
    status.Status = NStatus.PROCESSING_FAILURE
    status.ErrorComment = text[:64]
    status.ErrorID = 0xA710
    return status
