"""The edge AE's DICOM services, built from settings: one registration per service.

``build_dicom_services`` runs every builder of ``REGISTRY`` in order; each takes what the
edge hands it (``ServiceNeeds``) and returns its ``DicomService``, or None when its settings
switch it off. The ``DicomListener`` then negotiates, routes and runs them all. Adding a
service (a Modality Worklist SCP, say) is an adapter module with the service and one
builder line here (docs/development.md, "How to add a DICOM service").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.adapters.commitment_store import CommitmentStore
from gateway.adapters.dicom_receive import InstanceSink, StorageScp
from gateway.adapters.dicom_scp import DicomService, VerificationScp
from gateway.adapters.mpps_scp import MppsService
from gateway.adapters.storage_commitment import StorageCommitmentScp
from gateway.adapters.worklist_scp import WorklistScp
from gateway.adapters.worklist_store import WorklistStore
from gateway.config import EdgeSettings
from gateway.edge.exams import ExamRecorder
from gateway.paths import Paths

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceNeeds:
    """What the edge gives the builders: settings, places, the C-STORE sink and the clock."""

    settings: EdgeSettings
    paths: Paths
    sink: InstanceSink  # commits each received instance (the EdgeService)
    exams: ExamRecorder  # utilisation: MPPS reports procedure steps into it
    cache_key: bytes  # seals every received byte (core.atrest)
    clock: Callable[[], float]


def _verification(needs: ServiceNeeds) -> DicomService | None:
    return VerificationScp()


def _storage(needs: ServiceNeeds) -> DicomService | None:
    # Datasets land durably in the blob directory itself: the sink commits a row, nothing moves
    # (a landed file no row names is an orphan the edge's start-up sweep removes).
    return StorageScp(needs.paths.blob_dir, needs.paths.quarantine_dir, needs.sink, cache_key=needs.cache_key)


def _storage_commitment(needs: ServiceNeeds) -> DicomService | None:
    """Always built: with ``commitment.enabled`` off it offers no context and runs no thread."""
    s = needs.settings
    return StorageCommitmentScp(s.commitment, s.dicom, CommitmentStore(needs.paths.spool_db), needs.clock)


def _mpps(needs: ServiceNeeds) -> DicomService | None:
    u = needs.settings.utilisation
    if not u.mpps:
        return None
    book = WorklistStore(needs.paths.worklist_db, needs.cache_key) if needs.settings.worklist.enabled else None
    return MppsService(needs.exams, needs.exams.store, u.utc_offset_minutes * 60, needs.clock, worklist=book)


def _worklist(needs: ServiceNeeds) -> DicomService | None:
    w = needs.settings.worklist
    if not w.enabled:
        return None
    return WorklistScp(w, WorklistStore(needs.paths.worklist_db, needs.cache_key), needs.clock)


Builder = Callable[[ServiceNeeds], DicomService | None]
# (name, builder) in the order the listener starts them; it stops them in reverse.
REGISTRY: tuple[tuple[str, Builder], ...] = (
    ("C-ECHO", _verification),
    ("C-STORE", _storage),
    ("Storage Commitment", _storage_commitment),
    ("MPPS", _mpps),
    ("Modality Worklist", _worklist),
)


@dataclass(frozen=True)
class DicomServices:
    """The services the edge AE runs, by registry name (switched-off ones absent)."""

    by_name: dict[str, DicomService]

    @property
    def all(self) -> tuple[DicomService, ...]:
        return tuple(self.by_name.values())

    def one(self, kind: type[T]) -> T:
        """The service of type ``kind`` (the edge talks to a few directly: commitment, storage)."""
        found = [s for s in self.by_name.values() if isinstance(s, kind)]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} DICOM services of type {kind.__name__}, expected one")
        return found[0]


def build_dicom_services(needs: ServiceNeeds,
                         registry: tuple[tuple[str, Builder], ...] = REGISTRY) -> DicomServices:
    """Every registered service its settings switch on, in registry order."""
    built = {name: service for name, build in registry if (service := build(needs)) is not None}
    return DicomServices(built)
