"""MPPS SCP and header-derived exams against real peers: a pynetdicom MPPS SCU in another
process, DCMTK storescu for the images, real SQLite files for spool and utilisation."""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.adapters.dicom_receive import ReceivedInstance
from gateway.adapters.exam_store import ExamStore
from gateway.adapters.mpps_scp import MppsService
from gateway.adapters.store import SpoolStore
from gateway.config import DicomSettings, UtilisationSettings
from gateway.core.exam import ExamStatus, TimeSource, study_key
from gateway.edge.exams import ExamRecorder
from tests.adapters.test_dicom_scp import store_listener
from tests.peers import dcmtk, dcmtk_env

SECRET = b"k" * 32
_MPPS_SCU = r"""
import json, sys
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
port, ops = int(sys.argv[1]), json.loads(sys.argv[2])
ae = AE(ae_title="MODALITY")
ae.add_requested_context(MPPS)
assoc = ae.associate("127.0.0.1", port, ae_title="MGW")
assert assoc.is_established
out = []
for op in ops:
    ds = Dataset()
    for k, v in op["attrs"].items():
        setattr(ds, k, v)
    if op.get("study"):
        item = Dataset(); item.StudyInstanceUID = op["study"]
        for k, v in op.get("scheduled", {}).items():
            setattr(item, k, v)
        ds.ScheduledStepAttributesSequence = [item]
    if op["op"] == "create":
        status, _ = assoc.send_n_create(ds, MPPS, op["uid"])
    else:
        status, _ = assoc.send_n_set(ds, MPPS, op["uid"])
    out.append(int(status.Status) if status else None)
assoc.release()
print(json.dumps(out))
"""


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Sink:
    def __init__(self, recorder: ExamRecorder) -> None:
        self.recorder = recorder

    def accept(self, instance: ReceivedInstance) -> None:
        self.recorder.observe(instance)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[int, ExamRecorder, Clock]]:
    SpoolStore(tmp_path / "spool.db").close()
    clock = Clock()
    settings = UtilisationSettings(exam_quiet_s=5.0)
    recorder = ExamRecorder(settings, ExamStore(tmp_path / "utilisation.db", tmp_path / "spool.db"), SECRET, clock)
    mpps = MppsService(recorder, recorder.store, 0, clock)
    listener = store_listener(DicomSettings(ae_title="MGW", bind_host="127.0.0.1", port=0),
                              tmp_path / "spool" / "incoming", Sink(recorder), bytes(32), services=(mpps,))
    listener.start()
    yield listener.port, recorder, clock
    listener.stop()
    recorder.store.close()


def mpps(port: int, ops: list[dict]) -> list[int | None]:
    out = subprocess.run([sys.executable, "-c", _MPPS_SCU, str(port), json.dumps(ops)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def ct_file(tmp_path: Path, study: str, acquired: str) -> Path:
    import pydicom

    ds = dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AcquisitionDateTime = acquired
    ds.TimezoneOffsetFromUTC = "+0000"  # the file says -0500: our header times are UTC
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def storescu(port: int, *files: Path) -> None:
    args = [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "MGW", "127.0.0.1", str(port), *map(str, files)]
    subprocess.run(args, env=dcmtk_env(), check=True, capture_output=True, timeout=60)


def test_mpps_statuses_follow_ps34_when_steps_are_created_and_set(edge: tuple[int, ExamRecorder, Clock]) -> None:
    port, recorder, _ = edge
    study, step, other = generate_uid(), generate_uid(), generate_uid()
    start = {"PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
             "PerformedProcedureStepStartDate": "20261124", "PerformedProcedureStepStartTime": "083000"}
    done = {"PerformedProcedureStepStatus": "COMPLETED", "PerformedProcedureStepEndDate": "20261124",
            "PerformedProcedureStepEndTime": "084500"}
    statuses = mpps(port, [
        {"op": "create", "uid": step, "study": study, "attrs": start},
        {"op": "create", "uid": step, "study": study, "attrs": start},  # duplicate
        {"op": "create", "uid": generate_uid(), "study": study, "attrs": {**start, "PerformedProcedureStepStatus":
                                                                           "COMPLETED"}},  # must start IN PROGRESS
        {"op": "create", "uid": other, "study": generate_uid(), "attrs": start},
        {"op": "set", "uid": other, "attrs": {"PerformedProcedureStepStatus": "COMPLETED"}},  # no end time
        {"op": "set", "uid": step, "attrs": done},
        {"op": "set", "uid": step, "attrs": done},  # final: may no longer be updated
        {"op": "set", "uid": generate_uid(), "attrs": done},  # unknown instance
    ])
    assert statuses == [0x0000, 0x0111, 0x0106, 0x0000, 0x0121, 0x0000, 0x0110, 0x0112]
    stored = recorder.store.get(study_key(SECRET, study))
    assert stored is not None and stored.closed
    e = stored.exam
    assert (e.source, e.status, e.modality, e.end - e.start) == (TimeSource.MPPS, ExamStatus.COMPLETED, "CT", 900)


def test_images_keep_mpps_times_when_the_study_had_a_procedure_step(
        edge: tuple[int, ExamRecorder, Clock], tmp_path: Path) -> None:
    port, recorder, clock = edge
    study, step = generate_uid(), generate_uid()
    assert mpps(port, [{"op": "create", "uid": step, "study": study, "attrs": {
        "PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
        "PerformedProcedureStepStartDate": "20261124", "PerformedProcedureStepStartTime": "083000"}}]) == [0]
    now = time.gmtime(time.time() - 600)
    header_study = generate_uid()
    storescu(port, ct_file(tmp_path, study, time.strftime("%Y%m%d%H%M%S", now)),
             ct_file(tmp_path, header_study, time.strftime("%Y%m%d%H%M%S", now)))
    recorder.pump()
    clock.offset = 10.0  # past exam_quiet_s
    recorder.pump()
    with_mpps = recorder.store.get(study_key(SECRET, study))
    from_header = recorder.store.get(study_key(SECRET, header_study))
    assert with_mpps is not None and from_header is not None
    assert (with_mpps.exam.source, with_mpps.exam.images, with_mpps.exam.status) == (
        TimeSource.MPPS, 1, ExamStatus.IN_PROGRESS)
    assert from_header.closed and from_header.exam.source is TimeSource.HEADER
    assert from_header.exam.start == calendar.timegm(now)
    assert from_header.exam.modality == "CT" and from_header.exam.images == 1

