"""Storage Commitment with a real pynetdicom modality against `mgw edge run`, uplink down then up.

The modality (this test process) stores a study with DCMTK storescu, asks for commitment
(N-ACTION) while the broker is down, and listens for the N-EVENT-REPORT either on the same
association or as an SCP on its own port. Each report records, as it arrives, how many
instances the edge's spool shows acknowledged by the cloud.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from gateway.core.commitment import STORAGE_COMMITMENT_INSTANCE
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.peers import real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile, state_count
from tests.system.test_end_to_end import _send

Deploy = Callable[..., LoopbackDeployment]
MODALITY = "MODALITY"


@dataclass
class Report:
    event_type: int
    committed: list[str]
    failed: list[tuple[str, int]]
    transaction_uid: str
    acknowledged_at_arrival: int


@dataclass
class Modality:
    """The modality's side: records every N-EVENT-REPORT it is sent."""

    d: LoopbackDeployment
    reports: list[Report] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event_report(self, event: Event) -> tuple[int, None]:
        info = event.event_information
        report = Report(
            event_type=int(event.event_type),
            committed=[str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])],
            failed=[(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in info.get("FailedSOPSequence", [])],
            transaction_uid=str(info.TransactionUID), acknowledged_at_arrival=acknowledged_count(self.d))
        with self.lock:
            self.reports.append(report)
        return 0x0000, None  # (status, event reply): pynetdicom aborts the association on anything else


def _ae() -> AE:
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
    return ae


def _action(assoc: Association, transaction_uid: str, refs: list[tuple[str, str]]) -> int:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        ds.ReferencedSOPSequence.append(item)
    status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    return int(status.Status)


def _refs(files: list[Path]) -> list[tuple[str, str]]:
    out = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


@pytest.fixture
def modality_scp() -> Iterator[tuple[int, list[Modality]]]:
    """The modality's own SCP for reports sent on a new association."""
    holder: list[Modality] = []
    ae = AE(ae_title=MODALITY)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[  # any free port, held from here
        (evt.EVT_N_EVENT_REPORT, lambda event: holder[0].on_event_report(event))])
    try:
        yield int(server.server_address[1]), holder
    finally:
        server.shutdown()


def _files() -> list[Path]:
    by_name = {p.name: p for p in real_images()}
    return [by_name[n] for n in ("693_UNCI.dcm", "MR2_UNCI.dcm", "US1_UNCI.dcm")]


def test_committed_report_arrives_only_after_cloud_ack_when_the_uplink_was_down(
        deploy: Deploy, modality_scp: tuple[int, list[Modality]]) -> None:
    port, holder = modality_scp
    d = deploy(edge_overrides={"commitment": {"modalities": [f"{MODALITY}@127.0.0.1:{port}"]}})
    modality = Modality(d)
    holder.append(modality)
    d.broker.stop()  # the uplink is down
    files = _files()
    _send(d, files)
    wait_for(lambda: state_count(d, "packed") == len(files), 60, "every instance packed, waiting for the uplink")
    assoc = _ae().associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE)
    assert assoc.is_established
    uid = generate_uid()
    refs = _refs(files)
    assert _action(assoc, uid, refs) == 0x0000
    assoc.release()
    # the edge restarts while the request is pending: it must not forget it
    d.kill_edge()
    d.start_edge()
    wait_for(lambda: state_count(d, "packed") == len(files), 30, "the restarted edge to resume")
    assert modality.reports == [] and acknowledged_count(d) == 0
    d.broker.start()  # the uplink comes back
    wait_for(lambda: modality.reports, 120, "the N-EVENT-REPORT")
    (report,) = modality.reports
    assert report.event_type == 1 and report.failed == []
    assert report.transaction_uid == uid
    assert sorted(report.committed) == sorted(i for _, i in refs)
    assert report.acknowledged_at_arrival == len(files)  # only after the cloud acknowledged every one
    assert reconcile(d, files).clean


def test_report_on_the_same_association_lists_never_received_instances_as_failed(deploy: Deploy) -> None:
    d = deploy(edge_overrides={"commitment": {"absent_grace_s": 2.0}})
    modality = Modality(d)
    files = _files()[:1]
    _send(d, files)
    ae = _ae()
    ext = [build_role(StorageCommitmentPushModel, scu_role=True, scp_role=False)]
    assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE, ext_neg=ext,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, modality.on_event_report)])
    assert assoc.is_established
    refs = _refs(files)
    never_sent = ("1.2.840.10008.5.1.4.1.1.2", generate_uid())
    assert _action(assoc, generate_uid(), [*refs, never_sent]) == 0x0000
    wait_for(lambda: modality.reports, 60, "the N-EVENT-REPORT on the open association")
    assoc.release()
    (report,) = modality.reports
    assert report.event_type == 2
    assert report.committed == [refs[0][1]]
    assert report.failed == [(never_sent[1], 0x0112)]
    assert report.acknowledged_at_arrival == 1


def test_n_action_is_refused_with_a_status_when_the_request_is_malformed(deploy: Deploy) -> None:
    d = deploy()
    assoc = _ae().associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE)
    assert assoc.is_established
    assert _action(assoc, "", [("1.2.3", "1.2.3.4")]) == 0x0120  # no Transaction UID
    assert _action(assoc, generate_uid(), [("1.2.3", "not-a-uid")]) == 0x0106
    info = Dataset()
    info.TransactionUID = generate_uid()
    status, _ = assoc.send_n_action(info, 7, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    assert int(status.Status) == 0x0123  # no such action
    assoc.release()


@pytest.mark.slow  # a minute of sending while the box packs and delivers: the slow target (.ci/run runs it)
def test_report_waits_for_a_quiet_moment_when_the_modality_keeps_sending_on_the_same_association(
        deploy: Deploy) -> None:
    """The modality asks for commitment, then goes on storing on the same association while the
    cloud acknowledges: no N-EVENT-REPORT may land between its C-STORE-RQ and our response, so
    every C-STORE succeeds and the report comes on that association once it is quiet."""
    d = deploy(edge_overrides={"commitment": {"same_association_quiet_s": 5.0}})  # far above any gap, loaded
    modality = Modality(d)
    source = dcmread(next(p for p in real_images() if p.name == "MR2_UNCI.dcm"))
    ae = _ae()
    ae.add_requested_context(source.SOPClassUID, source.file_meta.TransferSyntaxUID)
    ext = [build_role(StorageCommitmentPushModel, scu_role=True, scp_role=False)]
    assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE, ext_neg=ext,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, modality.on_event_report)])
    assert assoc.is_established

    def store() -> tuple[str, int]:
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        status = assoc.send_c_store(source)
        return str(source.SOPInstanceUID), int(status.Status) if "Status" in status else -1

    first = [store() for _ in range(3)]
    assert [status for _, status in first] == [0, 0, 0]
    assert _action(assoc, generate_uid(), [(str(source.SOPClassUID), uid) for uid, _ in first]) == 0x0000
    statuses = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(statuses) < 2000:  # keep sending until the report is due
        statuses.append(store()[1])
        if acknowledged_count(d) >= 3 and len(statuses) >= 20:
            break
    for _ in range(20):  # and well after: the report is due now, and must not interleave
        statuses.append(store()[1])
    assert set(statuses) == {0} and assoc.is_established
    assert modality.reports == []  # nothing while the modality was sending
    wait_for(lambda: modality.reports, 60, "the N-EVENT-REPORT once the association is quiet")
    assert assoc.is_established
    assoc.release()
    (report,) = modality.reports
    assert report.event_type == 1 and sorted(report.committed) == sorted(uid for uid, _ in first)
    assert "VIA=same association" in (d.root / "edge.log").read_text(errors="replace")
