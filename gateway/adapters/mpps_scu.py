"""Modality Performed Procedure Step SCU: a step's performed status sent on to the RIS (PS3.4 Annex F).

The cloud takes a box's performed status (``schema.WorklistStatus``) for an order it read from
the RIS by C-FIND, and passes it on as a modality would: N-CREATE (IN PROGRESS) of an MPPS
instance, then N-SET (COMPLETED or DISCONTINUED) of the same instance. The instance UID is
derived from the entry's ref (``2.25.<ref as an integer>``), so a retry names the same instance;
an N-CREATE answered "duplicate SOP instance" (0x0111) was done before, and one the RIS took
(``created``) is not sent again. A status that reaches COMPLETED without an IN PROGRESS first is
created IN PROGRESS, then set. A failure status or a
broken association is a ``PeerError`` naming the RIS, never a patient.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from gateway.adapters.worklist_scu import RisPeer, associate
from gateway.core.errors import PeerError
from gateway.core.schema import WorklistEntry

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
_DUPLICATE = 0x0111


@dataclass(frozen=True)
class MppsPeer(RisPeer):
    """The RIS's MPPS SCP."""


def instance_uid(ref: str) -> str:
    return f"2.25.{int(ref, 16)}"


def send_status(peer: MppsPeer, entry: WorklistEntry, ref: str, status: str, station_ae: str = "",
                created: bool = False) -> None:
    """N-CREATE (unless ``created``: the RIS took it before) and, for COMPLETED or DISCONTINUED,
    N-SET of the entry's MPPS instance."""
    where = f"RIS MPPS {peer.called_ae_title}@{peer.host}:{peer.port}"
    assoc = associate(peer, MPPS_SOP_CLASS, where)
    uid = instance_uid(ref)
    try:
        if not created:
            answer, _ = assoc.send_n_create(_created(entry, station_ae), MPPS_SOP_CLASS, uid)
            code = _code(answer)
            if code not in (0x0000, _DUPLICATE):
                raise PeerError(f"{where}: N-CREATE ended with status {_status_text(code)}")
        if status in ("COMPLETED", "DISCONTINUED"):
            change = Dataset()
            change.PerformedProcedureStepStatus = status
            change.PerformedProcedureStepEndDate = entry.step.start_date
            answer, _ = assoc.send_n_set(change, MPPS_SOP_CLASS, uid)
            code = _code(answer)
            if code != 0x0000:
                raise PeerError(f"{where}: N-SET ended with status {_status_text(code)}")
    finally:
        if assoc.is_established:
            assoc.release()


def _code(answer: Dataset | None) -> int:
    return int(answer.Status) if answer is not None and "Status" in answer else -1


def _status_text(code: int) -> str:
    return "none (association lost)" if code < 0 else f"0x{code:04X}"


def _created(entry: WorklistEntry, station_ae: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = entry.patient_name
    ds.PatientID = entry.patient_id
    ds.PatientBirthDate = entry.birth_date
    ds.PatientSex = entry.sex
    item = Dataset()
    item.AccessionNumber = entry.accession_number
    item.StudyInstanceUID = entry.study_instance_uid
    item.RequestedProcedureID = entry.requested_procedure_id
    item.RequestedProcedureDescription = entry.requested_procedure_description
    item.ScheduledProcedureStepID = entry.step.step_id
    item.ScheduledProcedureStepDescription = entry.step.description
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID = entry.step.step_id
    ds.PerformedStationAETitle = station_ae or entry.step.station_ae_title
    ds.PerformedProcedureStepStartDate = entry.step.start_date
    ds.PerformedProcedureStepStartTime = entry.step.start_time
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = entry.step.modality
    ds.PerformedSeriesSequence = []
    return ds
