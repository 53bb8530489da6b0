"""Storage Commitment with a real modality against `mgw edge run`, uplink down then up.

The modality (this test process) stores a study with DCMTK storescu, asks for commitment
(N-ACTION) while the broker is down, and listens for the N-EVENT-REPORT either on the same
association or as an SCP on its own port. Each report records, as it arrives, how many
instances the edge's spool shows acknowledged by the cloud.

DCMTK (3.6.7, Debian 12) has no Storage Commitment tool: none of its command-line programs
sends an N-ACTION for the Storage Commitment Push Model or accepts an N-EVENT-REPORT (storescu
and storescp speak only C-STORE and C-ECHO; dcmprscu's N-ACTION is Basic Film Session print
management). So the commitment requests and reports here are pynetdicom's, and DCMTK storescu
is the modality that keeps sending, under the same calling AE title, while the reports arrive.
"""

from __future__ import annotations

import subprocess
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
from tests.peers import dcmtk, dcmtk_env, real_images, storescu_profile_args, wait_for
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
    arrived_monotonic: float = field(default_factory=time.monotonic)


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


def _storing_association(d: Deploy, modality: Modality) -> tuple[Association, Callable[[], tuple[str, int]], str]:
    """The modality's association for storing and commitment, a function that stores one new
    instance on it (its UID and the C-STORE status), and the SOP class stored."""
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

    return assoc, store, str(source.SOPClassUID)


@pytest.mark.slow  # a minute of sending while the box packs and delivers: the slow target (.ci/run runs it)
def test_report_waits_for_a_quiet_moment_when_the_modality_keeps_sending_on_the_same_association(
        deploy: Deploy) -> None:
    """The modality asks for commitment, then goes on storing on the same association while the
    cloud acknowledges: no N-EVENT-REPORT may land between its C-STORE-RQ and our response, so
    every C-STORE succeeds and the report comes on that association once it is quiet."""
    d = deploy(edge_overrides={"commitment": {"same_association_quiet_s": 5.0}})  # far above any gap, loaded
    modality = Modality(d)
    assoc, store, sop_class = _storing_association(d, modality)
    first = [store() for _ in range(3)]
    assert [status for _, status in first] == [0, 0, 0]
    assert _action(assoc, generate_uid(), [(sop_class, uid) for uid, _ in first]) == 0x0000
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


@pytest.mark.slow  # sending until the report is due and past the wait: the slow target (.ci/run runs it)
def test_report_goes_on_a_new_association_after_the_wait_when_the_asking_association_never_goes_quiet(
        deploy: Deploy, modality_scp: tuple[int, list[Modality]]) -> None:
    """The modality keeps storing on the association that asked for commitment and never pauses
    for the quiet time: the box waits ``same_association_max_wait_s`` for a quiet moment, then
    sends the report on a new association to the modality's SCP; no C-STORE on the busy
    association fails or meets our request."""
    port, holder = modality_scp
    max_wait = 3.0
    d = deploy(edge_overrides={"commitment": {"modalities": [f"{MODALITY}@127.0.0.1:{port}"],
                                              "same_association_quiet_s": 30.0,  # never reached while sending
                                              "same_association_max_wait_s": max_wait}})
    modality = Modality(d)
    holder.append(modality)
    assoc, store, sop_class = _storing_association(d, modality)
    first = [store() for _ in range(3)]
    assert _action(assoc, generate_uid(), [(sop_class, uid) for uid, _ in first]) == 0x0000
    statuses = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not modality.reports and len(statuses) < 20000:
        statuses.append(store()[1])  # busy the whole time: the report cannot come on this association
    assert modality.reports, "no N-EVENT-REPORT within 180 s"
    statuses.extend(store()[1] for _ in range(5))
    assert set(statuses) == {0} and assoc.is_established
    assoc.release()
    (report,) = modality.reports
    assert report.event_type == 1 and sorted(report.committed) == sorted(uid for uid, _ in first)
    (line,) = [ln for ln in (d.root / "edge.log").read_text(errors="replace").splitlines()
               if "storage commitment reported" in ln]
    assert "VIA=new association" in line, line


@dataclass(frozen=True)
class StorescuRun:
    """One DCMTK storescu association: its files, exit code, output and when it ran."""

    uids: list[str]
    returncode: int
    output: str
    started: float
    ended: float

    @property
    def successes(self) -> int:
        return self.output.count("Received Store Response (Success)")


def _copies(source: Path, out: Path, n: int) -> list[tuple[Path, str]]:
    """``n`` copies of ``source`` as new instances (a fresh SOP Instance UID each), one study."""
    out.mkdir(parents=True, exist_ok=True)
    ds = dcmread(source)
    made = []
    for _ in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made.append((path, str(ds.SOPInstanceUID)))
    return made


def _dcmtk_store(port: int, batch: list[tuple[Path, str]], profile: Path) -> StorescuRun:
    """One storescu association (verbose, halting on the first failure) calling as the modality."""
    files = [p for p, _ in batch]
    args = [dcmtk("storescu"), "-v", "-aet", MODALITY, "-aec", EDGE_AE, "-ta", "60", "-td", "60",
            *storescu_profile_args(files, profile), "127.0.0.1", str(port), *map(str, files)]
    started = time.monotonic()
    result = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=300)
    return StorescuRun([uid for _, uid in batch], result.returncode, result.stdout + result.stderr,
                       started, time.monotonic())


def _keep_sending(port: int, out: Path, modality: Modality, runs: list[StorescuRun], after_report: int,
                  deadline_s: float, most: int = 150) -> None:
    """DCMTK storescu, one association after another (3 new instances each), until ``after_report``
    associations have run after the modality's first report (or the deadline, or ``most`` associations)."""
    source = next(p for p in real_images() if p.name == "693_J2KR.dcm")  # a CT slice of 107 KB
    deadline, after = time.monotonic() + deadline_s, 0
    while time.monotonic() < deadline and after < after_report and len(runs) < most:
        reported = bool(modality.reports)
        runs.append(_dcmtk_store(port, _copies(source, out / str(len(runs)), 3), out / "profile.cfg"))
        after += reported
        if runs[-1].returncode != 0:
            return


@pytest.mark.parametrize("report_via", ["same association", "new association"])
def test_every_instance_is_committed_and_no_dcmtk_association_fails_when_dcmtk_keeps_sending_during_the_report(
        deploy: Deploy, modality_scp: tuple[int, list[Modality]], tmp_path: Path, report_via: str) -> None:
    """DCMTK storescu (calling AE MODALITY) stores a study; the modality's commitment component
    (pynetdicom, same calling AE) asks for commitment with the uplink down, then storescu goes on
    sending, association after association, while the uplink comes back and the report arrives:
    on the commitment association, kept open and quiet, or on a new association to the modality's
    SCP once that one is released. No storescu association may see a failure or an abort (a report
    on one of them would be an invalid response to its C-STORE), every instance is committed, and
    the cloud holds every one exactly once. The study is packed before storescu goes on: the box
    defers packing while reception goes on (PACK_MAX_DEFER_S), which would delay the report, not
    change it."""
    port, holder = modality_scp
    d = deploy(edge_overrides={"commitment": {"modalities": [f"{MODALITY}@127.0.0.1:{port}"]},
                               "dicom": {"network_timeout_s": 300.0}})  # the quiet association outlives the test
    modality = Modality(d)
    holder.append(modality)
    d.broker.stop()  # the uplink is down: the report cannot come before the sending below
    source = next(p for p in real_images() if p.name == "693_J2KR.dcm")
    study = _dcmtk_store(d.dicom_port, _copies(source, tmp_path / "study", 4), tmp_path / "profile.cfg")
    assert study.returncode == 0 and study.successes == 4, study.output
    # packed before the sending below: the box packs only in a pause of reception (or after deferring)
    wait_for(lambda: state_count(d, "packed") == 4, 60, "the study packed, waiting for the uplink")
    ae = _ae()
    ae.network_timeout = 300  # quiet for as long as the test runs
    ext = [build_role(StorageCommitmentPushModel, scu_role=True, scp_role=False)]
    assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE, ext_neg=ext,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, modality.on_event_report)])
    assert assoc.is_established
    sop_class = str(dcmread(source, stop_before_pixels=True).SOPClassUID)
    assert _action(assoc, generate_uid(), [(sop_class, uid) for uid in study.uids]) == 0x0000
    if report_via == "new association":
        assoc.release()
    runs: list[StorescuRun] = []
    sender = threading.Thread(target=_keep_sending, args=(d.dicom_port, tmp_path / "more", modality, runs, 2, 240))
    sender.start()
    try:
        wait_for(lambda: runs or not sender.is_alive(), 60, "storescu's first association")
        d.broker.start()  # the uplink comes back while storescu is sending
        wait_for(lambda: modality.reports or not sender.is_alive(), 240, "the N-EVENT-REPORT")
    finally:
        sender.join(300)
    assert not sender.is_alive()
    for run in runs:  # every DCMTK association: exit 0, every C-STORE answered Success, nothing aborted
        assert run.returncode == 0 and run.successes == len(run.uids), run.output
        assert "abort" not in run.output.lower() and "fail" not in run.output.lower(), run.output
    (report,) = modality.reports
    assert report.event_type == 1 and report.failed == []
    assert sorted(report.committed) == sorted(study.uids)
    assert runs[0].started < report.arrived_monotonic < runs[-1].started  # storescu sent before and after it
    def reported() -> list[str]:  # the edge logs the report once the modality has answered it
        log = (d.root / "edge.log").read_text(errors="replace")
        return [line for line in log.splitlines() if "storage commitment reported" in line]

    lines = wait_for(reported, 60, "the edge's COMMITMENT_REPORTED line")
    assert f"VIA={report_via}" in lines[0], lines

    sent = [*study.uids, *(uid for run in runs for uid in run.uids)]  # now commit everything storescu sent
    if report_via == "new association":
        assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE, ext_neg=ext,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, modality.on_event_report)])
        assert assoc.is_established
    assert _action(assoc, generate_uid(), [(sop_class, uid) for uid in sent]) == 0x0000
    wait_for(lambda: len(modality.reports) == 2, 240, "the report on every instance storescu sent")
    assoc.release()
    last = modality.reports[1]
    assert last.event_type == 1 and last.failed == [] and sorted(last.committed) == sorted(sent)
    assert last.acknowledged_at_arrival == len(sent)
    files = [*sorted((tmp_path / "study").glob("*.dcm")), *sorted((tmp_path / "more").rglob("*.dcm"))]
    assert len(files) == len(sent) and reconcile(d, files).clean  # nothing lost, corrupted or doubled
