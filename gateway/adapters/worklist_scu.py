"""Modality Worklist C-FIND SCU: the site's worklist read from its RIS (an upstream MWL SCP).

The cloud takes the worklist it feeds to the boxes from the RIS; one way is to ask the RIS as a
modality would (PS3.4 Annex K, SOP class 1.2.840.10008.5.1.4.31). ``query_worklist`` sends one
C-FIND asking for every attribute the box's cache keeps (``core.worklist``), narrowed by station,
modality and scheduled date, and turns each answer into the feed's typed entry
(``core.schema.WorklistEntry``). The RIS is hostile like any peer: an answer that does not fit the
entry (no step ID, a malformed date) is counted and skipped, never half-used; at most
``max_items`` are kept; a failure status or a broken association is a ``PeerError`` naming the
RIS, never a patient. Which box gets which entry, and the MQTT feed, are the cloud's (planned).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from gateway.adapters.dicom_scp import UNCOMPRESSED
from gateway.adapters.worklist_scp import text_value
from gateway.core import worklist
from gateway.core.errors import FrameError, PeerError
from gateway.core.schema import WorklistEntry
from gateway.core.worklist import STEP_KEYS, STEP_SEQUENCE, TOP_KEYS

_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class RisPeer:
    """An upstream RIS service (its MWL SCP, or its MPPS SCP): where it listens and the AE titles
    of the association."""

    host: str
    port: int
    called_ae_title: str
    calling_ae_title: str = "MGW-CLOUD"
    timeout_s: float = 30.0


def associate(peer: RisPeer, sop_class: str, where: str) -> Association:
    """An established association to ``peer`` offering ``sop_class``, or ``PeerError`` naming ``where``."""
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout_s
    ae.add_requested_context(sop_class, list(UNCOMPRESSED))
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae_title)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PeerError(f"{where}: {exc}") from exc
    if not assoc.is_established:
        raise PeerError(f"{where}: association rejected or aborted")
    return assoc


@dataclass(frozen=True)
class RisAnswer:
    entries: list[WorklistEntry]
    refused: int  # answers that did not fit an entry (skipped)
    dropped: int  # answers beyond max_items (skipped)


def query_worklist(peer: RisPeer, *, station_ae_title: str = "", modality: str = "", start_date: str = "",
                   max_items: int = 2000) -> RisAnswer:
    """The RIS's scheduled steps matching the narrowing keys (empty: any), as typed entries."""
    where = f"RIS worklist {peer.called_ae_title}@{peer.host}:{peer.port}"
    assoc = associate(peer, worklist.MODALITY_WORKLIST_FIND, where)
    entries: list[WorklistEntry] = []
    refused = dropped = 0
    try:
        for status, identifier in assoc.send_c_find(_query(station_ae_title, modality, start_date),
                                                    worklist.MODALITY_WORKLIST_FIND):
            code = int(status.Status) if status is not None and "Status" in status else -1
            if code in _PENDING and identifier is not None:
                if len(entries) >= max_items:
                    dropped += 1
                    continue
                try:
                    entries.append(_entry(identifier))
                except (FrameError, ValueError, TypeError, LookupError):
                    refused += 1
            elif code != 0x0000:
                raise PeerError(f"{where}: C-FIND ended with status "
                                f"{'none (association lost)' if code < 0 else f'0x{code:04X}'}")
    finally:
        if assoc.is_established:
            assoc.release()
    return RisAnswer(entries, refused, dropped)


def _query(station_ae_title: str, modality: str, start_date: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = worklist.UTF8
    for keyword in TOP_KEYS:
        setattr(ds, keyword, "")
    step = Dataset()
    for keyword in STEP_KEYS:
        setattr(step, keyword, "")
    step.ScheduledStationAETitle = station_ae_title
    step.Modality = modality
    step.ScheduledProcedureStepStartDate = start_date
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def _entry(identifier: Dataset) -> WorklistEntry:
    """One answer as an entry; its first Scheduled Procedure Step item is the step."""
    top = {k: text_value(identifier[k]) for k in TOP_KEYS if k in identifier}
    items = list(identifier.get(STEP_SEQUENCE) or [])
    step = {k: text_value(items[0][k]) for k in STEP_KEYS if k in items[0]} if items else {}
    return worklist.entry_from_attributes(top, step)
