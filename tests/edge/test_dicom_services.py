"""The edge's DICOM service factory (gateway.edge.dicom_services) against a real listener.

Settings decide which services exist; what the listener then negotiates with a real peer (a
pynetdicom SCU in this process, DCMTK echoscu and storescu) follows; and one more builder in the
registry is one more service served.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
    Verification,
)

from gateway.adapters.dicom_receive import ReceivedInstance, StorageScp
from gateway.adapters.dicom_scp import DicomListener, DicomService, SupportedContext, VerificationScp
from gateway.adapters.exam_store import ExamStore
from gateway.adapters.mpps_scp import MppsService
from gateway.adapters.storage_commitment import StorageCommitmentScp
from gateway.adapters.store import SpoolStore
from gateway.adapters.worklist_scp import WorklistScp
from gateway.config import EdgeSettings, load_edge
from gateway.edge.dicom_services import REGISTRY, Builder, ServiceNeeds, build_dicom_services
from gateway.edge.exams import ExamRecorder
from gateway.paths import Paths
from tests.peers import dcmtk, dcmtk_env, echo, real_images

AE_TITLE = "MGW"
REQUESTED = (Verification, CTImageStorage, StorageCommitmentPushModel, ModalityPerformedProcedureStep,
             ModalityWorklistInformationFind)


class Sink:
    """Takes each received instance: the path leaves incoming, the call is counted."""

    def __init__(self) -> None:
        self.accepted: list[ReceivedInstance] = []

    def accept(self, instance: ReceivedInstance) -> int:
        self.accepted.append(instance)
        instance.path.unlink()
        return len(self.accepted)


def _settings(tmp_path: Path, body: str) -> EdgeSettings:
    key = base64.b64encode(os.urandom(32)).decode()
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[box]\nid = "box-1"\ncloud_public_key = "{key}"\n'
                    f'[dicom]\nae_title = "{AE_TITLE}"\nbind_host = "127.0.0.1"\nport = 0\n{body}')
    return load_edge([toml])


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., tuple[DicomListener, Sink, dict[str, DicomService]]]]:
    opened: list[tuple[DicomListener, ExamStore]] = []

    def make(body: str = "", registry: tuple[tuple[str, Builder], ...] = REGISTRY
             ) -> tuple[DicomListener, Sink, dict[str, DicomService]]:
        paths = Paths(tmp_path / "etc", tmp_path / f"state{len(opened)}", tmp_path / "run")
        paths.state_dir.mkdir(parents=True)
        SpoolStore(paths.spool_db).close()  # the schema the commitment store shares
        settings = _settings(tmp_path, body)
        exams = ExamRecorder(settings.utilisation, ExamStore(paths.state_dir / "utilisation.db", paths.spool_db),
                             b"s" * 32, lambda: 0.0)
        sink = Sink()
        services = build_dicom_services(ServiceNeeds(settings, paths, sink, exams, os.urandom(32), lambda: 0.0),
                                        registry)
        listener = DicomListener(settings.dicom, services.all)
        listener.start()
        opened.append((listener, exams.store))
        return listener, sink, services.by_name

    yield make
    for listener, store in opened:
        listener.stop()
        store.close()


def _accepted(port: int, requested: Sequence[str] = REQUESTED) -> set[str]:
    """The abstract syntaxes the listener accepts when a peer proposes ``requested``."""
    ae = AE(ae_title="MODALITY")
    for uid in requested:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()


def test_every_service_is_built_in_registry_order_when_the_settings_enable_them(build: Callable[..., Any]) -> None:
    listener, _, services = build()
    assert list(services) == ["C-ECHO", "C-STORE", "Storage Commitment", "MPPS", "Modality Worklist"]
    assert [type(s) for s in services.values()] == [VerificationScp, StorageScp, StorageCommitmentScp, MppsService,
                                                    WorklistScp]
    assert _accepted(listener.port) == set(REQUESTED)
    assert listener.alive()  # the Storage Commitment reporter thread was started with the listener


def test_echo_and_store_are_answered_by_real_peers_when_the_services_come_from_the_factory(
        build: Callable[..., Any]) -> None:
    listener, sink, _ = build()
    assert echo(listener.port, AE_TITLE).returncode == 0
    source = real_images()[0]
    out = subprocess.run([dcmtk("storescu"), "-aet", "MODALITY", "-aec", AE_TITLE, "127.0.0.1", str(listener.port),
                          str(source)], env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (instance,) = sink.accepted
    assert instance.calling_ae == "MODALITY" and instance.identity.sop_class_uid == CTImageStorage
    assert listener.counts()["datasets_refused"] == {} and "associations_rejected" in listener.counts()


def test_mpps_is_absent_and_its_context_refused_when_utilisation_turns_mpps_off(build: Callable[..., Any]) -> None:
    listener, _, services = build("[utilisation]\nmpps = false\n")
    assert "MPPS" not in services
    assert _accepted(listener.port) == set(REQUESTED) - {ModalityPerformedProcedureStep}


def test_worklist_is_absent_and_its_context_refused_when_the_worklist_is_disabled(
        build: Callable[..., Any]) -> None:
    listener, _, services = build("[worklist]\nenabled = false\n")
    assert "Modality Worklist" not in services
    assert _accepted(listener.port) == set(REQUESTED) - {ModalityWorklistInformationFind}


def test_storage_commitment_context_is_refused_when_commitment_is_disabled(build: Callable[..., Any]) -> None:
    listener, _, services = build("[commitment]\nenabled = false\n")
    assert isinstance(services["Storage Commitment"], StorageCommitmentScp)  # still woken by acks: does nothing
    assert _accepted(listener.port) == set(REQUESTED) - {StorageCommitmentPushModel}


class EmptyWorklist(DicomService):
    """A Modality Worklist C-FIND SCP with no scheduled procedure: what one more service looks like."""

    def __init__(self) -> None:
        self.queries = 0

    def contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(ModalityWorklistInformationFind)]

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_FIND, self._on_find)]

    def _on_find(self, event: Any) -> Iterator[tuple[int, None]]:
        self.queries += 1
        yield from ()  # no matches: pynetdicom answers the final 0x0000


def test_one_more_builder_in_the_registry_is_one_more_service_served_when_registered(
        build: Callable[..., Any]) -> None:
    from pydicom.dataset import Dataset

    worklist = EmptyWorklist()
    listener, _, services = build("[worklist]\nenabled = false\n",
                                  registry=(*REGISTRY, ("Worklist", lambda needs: worklist)))
    assert services["Worklist"] is worklist
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    assert assoc.is_established
    query = Dataset()
    query.PatientName = "*"
    statuses = [int(status.Status) for status, _ in assoc.send_c_find(query, ModalityWorklistInformationFind)]
    assoc.release()
    assert statuses == [0x0000] and worklist.queries == 1
