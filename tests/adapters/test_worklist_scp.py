"""The Modality Worklist SCP against real modalities: DCMTK ``findscu -W`` and a pynetdicom SCU in
another process, answered from a real sealed SQLite cache (adapters/worklist_store.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from gateway.adapters.dicom_scp import DicomListener, VerificationScp
from gateway.adapters.exam_store import ExamStore
from gateway.adapters.mpps_scp import MppsService
from gateway.adapters.store import SpoolStore
from gateway.adapters.worklist_scp import WorklistScp
from gateway.adapters.worklist_store import WorklistStore
from gateway.config import DicomSettings, UtilisationSettings, WorklistSettings
from gateway.core import schema
from gateway.edge.exams import ExamRecorder
from tests.adapters.test_mpps_scp import mpps
from tests.peers import dcmtk, dcmtk_env, dimse_statuses

KEY = os.urandom(32)
ZHANG, LI = "张^伟", "李^娜"
PATIENTS = {"Doe^John": "PID-1001", "Roe^Jane": "PID-1002", ZHANG: "PID-1003", LI: "PID-1004",
            "Other^Station": "PID-1005"}
_ITEMS = [  # (step, accession, name, station, modality, date, time)
    ("S1", "ACC1", "Doe^John", "CT1", "CT", "20261203", "083000"),
    ("S2", "ACC2", "Roe^Jane", "CT1", "CT", "20261204", "100000"),
    ("S3", "ACC3", ZHANG, "CT1", "CT", "20261205", "140000"),
    ("S4", "ACC4", LI, "", "MR", "20261203", "120000"),  # no station: unassigned
    ("S5", "ACC5", "Other^Station", "CT2", "CT", "20261203", "090000"),  # another station's
]


def _ref(step: str) -> str:
    return f"{int(step[1:]):032x}"  # the cloud's random name for the entry, here a plain one


def _update() -> schema.WorklistUpdate:
    ops = [{"op": "upsert", "entry": {"ref": _ref(step),
        "accession_number": acc, "patient_name": name, "patient_id": PATIENTS[name], "birth_date": "19800101",
        "sex": "F", "requested_procedure_id": f"RP{step}", "requested_procedure_description": "CT head",
        "study_instance_uid": f"1.2.826.0.1.{step[1:]}", "referring_physician": "Smith^Ann",
        "step": {"step_id": step, "modality": modality, "station_ae_title": station, "station_name": "ROOM",
                 "start_date": date, "start_time": time_, "description": "plain", "status": "SCHEDULED"}}}
        for step, acc, name, station, modality, date, time_ in _ITEMS]
    body = json.dumps({"v": 1, "box_id": "box-1", "seq": 1, "ops": ops}).encode()
    return schema.parse(schema.WorklistUpdate, body, "update", schema.MAX_WORKLIST_BYTES)


def _serve(tmp_path: Path, updates: list[schema.WorklistUpdate], max_results: int) -> DicomListener:
    store = WorklistStore(tmp_path / "worklist.db", KEY)
    for update in updates:
        store.apply(update, 1.0)
    now = 1796342400.0  # 2026-12-03 00:00 UTC: nothing expires
    scp = WorklistScp(WorklistSettings(max_results=max_results), store, lambda: now)
    listener = DicomListener(DicomSettings(ae_title="MGW", bind_host="127.0.0.1", port=0), [VerificationScp(), scp])
    listener.start()
    return listener


@pytest.fixture
def mwl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[int]:
    caplog.set_level(logging.WARNING, logger="pynetdicom")  # as the service sets it (logs.setup) ...
    caplog.set_level(logging.DEBUG)  # ... and every level of ours
    listener = _serve(tmp_path, [_update()], 100)
    yield listener.port
    listener.stop()


def findscu(port: int, tmp_path: Path, *keys: str, calling: str = "CT1", query: Path | None = None,
            extra: tuple[str, ...] = ()) -> tuple[list[int], list[Any]]:
    out_dir = tmp_path / f"rsp{len(list(tmp_path.glob('rsp*')))}"
    out_dir.mkdir()
    args = [dcmtk("findscu"), "-d", "-W", "-aet", calling, "-aec", "MGW", "-X", "-od", str(out_dir), *extra]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port)]
    if query is not None:
        args.append(str(query))
    done = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return dimse_statuses(done.stdout + done.stderr), [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


BASE = ("PatientName", "PatientID", "AccessionNumber", "(0040,0100)[0].Modality",
        "(0040,0100)[0].ScheduledStationAETitle", "(0040,0100)[0].ScheduledProcedureStepStartDate",
        "(0040,0100)[0].ScheduledProcedureStepStartTime", "(0040,0100)[0].ScheduledProcedureStepID")


def _steps(answers: list[Any]) -> list[str]:
    return sorted(str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID) for a in answers)


def test_universal_query_returns_the_stations_items_when_findscu_asks(mwl: int, tmp_path: Path) -> None:
    statuses, answers = findscu(mwl, tmp_path, *BASE)
    assert statuses == [0xFF00] * 4 + [0x0000]
    assert _steps(answers) == ["S1", "S2", "S3", "S4"]  # S5 is scheduled at CT2: not returned
    first = next(a for a in answers if a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "S1")
    assert (str(first.PatientName), first.PatientID, first.AccessionNumber) == ("Doe^John", "PID-1001", "ACC1")
    step = first.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate) == (
        "CT", "CT1", "20261203")
    assert "PatientBirthDate" not in first  # only the keys asked for come back


def test_other_station_sees_only_its_items_and_unassigned_ones_when_it_calls(mwl: int, tmp_path: Path) -> None:
    _, answers = findscu(mwl, tmp_path, *BASE, calling="CT2")
    assert _steps(answers) == ["S4", "S5"]


@pytest.mark.parametrize(("keys", "expected"), [
    (("(0040,0100)[0].ScheduledProcedureStepStartDate=20261203-20261204",), ["S1", "S2", "S4"]),
    (("(0040,0100)[0].ScheduledProcedureStepStartDate=20261204-",), ["S2", "S3"]),
    (("(0040,0100)[0].ScheduledProcedureStepStartDate=20261203-20261204",
      "(0040,0100)[0].ScheduledProcedureStepStartTime=0900-1100"), ["S2", "S4"]),  # one date-time range
    (("(0040,0100)[0].Modality=MR",), ["S4"]),
    (("PatientName=R*",), ["S2"]),
    (("PatientName=doe^j*",), ["S1"]),  # PN is matched case-insensitively
    (("AccessionNumber=ACC3",), ["S3"]),
    (("AccessionNumber=ACC?",), ["S1", "S2", "S3", "S4"]),
])
def test_matching_keys_select_the_items_when_findscu_sends_them(
        mwl: int, tmp_path: Path, keys: tuple[str, ...], expected: list[str]) -> None:
    override = {k.split("=")[0] for k in keys}
    statuses, answers = findscu(mwl, tmp_path, *[k for k in BASE if k not in override], *keys)
    assert _steps(answers) == expected and statuses[-1] == 0x0000


def test_unsupported_optional_key_gets_ff01_and_comes_back_empty_when_asked(mwl: int, tmp_path: Path) -> None:
    statuses, answers = findscu(mwl, tmp_path, *BASE, "PatientWeight", "AccessionNumber=ACC1")
    assert statuses == [0xFF01, 0x0000]
    assert "PatientWeight" in answers[0] and answers[0].PatientWeight in (None, "")


def test_malformed_identifier_gets_a_failure_status_when_a_range_is_broken(mwl: int, tmp_path: Path) -> None:
    statuses, answers = findscu(mwl, tmp_path, *BASE[:3], "(0040,0100)[0].ScheduledProcedureStepStartDate=2026-12-03")
    assert statuses == [0xC000] and answers == []
    statuses, _ = findscu(mwl, tmp_path, *BASE[:3], "QueryRetrieveLevel=PATIENT")
    assert statuses == [0xA900]


_SCU = r"""
import json, sys
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL
port, charset, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ae = AE(ae_title="CT1")
ae.add_requested_context(MWL)
assoc = ae.associate("127.0.0.1", port, ae_title="MGW")
assert assoc.is_established
q = Dataset()
if charset:
    q.SpecificCharacterSet = charset
q.PatientName = name
q.PatientID = ""
item = Dataset(); item.Modality = ""; item.ScheduledProcedureStepID = ""
q.ScheduledProcedureStepSequence = [item]
out = []
try:
    for status, ds in assoc.send_c_find(q, MWL):
        row = {"status": int(status.Status)}
        if ds is not None:
            raw = ds.PatientName.original_string  # the bytes as they came on the wire
            row.update(charset=ds.get("SpecificCharacterSet", ""), name=str(ds.PatientName), id=ds.PatientID,
                       raw=bytes(raw).hex())
        out.append(row)
finally:
    assoc.release()
print(json.dumps(out))
"""


def pynetdicom_find(port: int, charset: str, name: str) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-c", _SCU, str(port), charset, name], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_gb18030_query_finds_the_chinese_name_and_is_answered_in_gb18030_when_pynetdicom_asks(mwl: int) -> None:
    rows = pynetdicom_find(mwl, "GB18030", "张*")
    assert [r["status"] for r in rows] == [0xFF00, 0x0000]
    assert (rows[0]["name"], rows[0]["id"], rows[0]["charset"]) == (ZHANG, "PID-1003", "GB18030")
    assert bytes.fromhex(rows[0]["raw"]) == ZHANG.encode("gb18030")  # the bytes on the wire


def test_utf8_query_finds_the_chinese_name_and_is_answered_in_utf8_when_pynetdicom_asks(mwl: int) -> None:
    rows = pynetdicom_find(mwl, "ISO_IR 192", ZHANG)
    assert [(r["status"], r.get("name"), r.get("charset")) for r in rows] == [
        (0xFF00, ZHANG, "ISO_IR 192"), (0x0000, None, None)]


def test_default_repertoire_query_is_answered_in_utf8_when_a_match_has_a_chinese_name(mwl: int) -> None:
    rows = pynetdicom_find(mwl, "", "*")
    chinese = [r for r in rows if r.get("name") == ZHANG]
    assert len(chinese) == 1 and chinese[0]["charset"] == "ISO_IR 192"
    plain = [r for r in rows if r.get("name") == "Doe^John"]
    assert plain[0]["charset"] == ""


def test_nothing_with_phi_is_logged_when_queries_are_answered(mwl: int, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    findscu(mwl, tmp_path, *BASE)
    findscu(mwl, tmp_path, *BASE[:3], "(0040,0100)[0].ScheduledProcedureStepStartDate=2026-12-03")
    pynetdicom_find(mwl, "GB18030", "张*")
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "worklist query answered" in text and "worklist query refused" in text
    for value in [*PATIENTS, *PATIENTS.values(), "ACC1", "张", "李", "Smith^Ann"]:
        assert value not in text, value


def test_cache_file_holds_no_plaintext_patient_name_when_the_scp_served_from_it(mwl: int, tmp_path: Path) -> None:
    findscu(mwl, tmp_path, *BASE)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("worklist.db"))
    for name in PATIENTS:
        for encoding in ("utf-8", "gb18030"):
            assert name.encode(encoding) not in raw


@pytest.fixture
def mwl_and_mpps(tmp_path: Path) -> Iterator[int]:
    """The worklist and MPPS on one AE, as the edge builds them: MPPS closes worklist steps."""
    store = WorklistStore(tmp_path / "worklist.db", KEY)
    store.apply(_update(), 1.0)
    SpoolStore(tmp_path / "spool.db").close()
    recorder = ExamRecorder(UtilisationSettings(), ExamStore(tmp_path / "utilisation.db", tmp_path / "spool.db"),
                            b"s" * 32, lambda: 1796342400.0)
    services = [VerificationScp(), WorklistScp(WorklistSettings(), store, lambda: 1796342400.0),
                MppsService(recorder, recorder.store, 0, lambda: 1796342400.0,
                            worklist=WorklistStore(tmp_path / "worklist.db", KEY))]
    listener = DicomListener(DicomSettings(ae_title="MGW", bind_host="127.0.0.1", port=0), services)
    listener.start()
    yield listener.port
    listener.stop()
    recorder.store.close()


def test_step_leaves_the_worklist_when_the_modality_reports_it_in_progress_by_mpps(
        mwl_and_mpps: int, tmp_path: Path) -> None:
    assert _steps(findscu(mwl_and_mpps, tmp_path, *BASE)[1]) == ["S1", "S2", "S3", "S4"]
    started = {"PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
               "PerformedProcedureStepStartDate": "20261203", "PerformedProcedureStepStartTime": "083500"}
    assert mpps(mwl_and_mpps, [{"op": "create", "uid": "1.2.826.0.1.99.1", "study": "1.2.826.0.1.2",
                                "scheduled": {"ScheduledProcedureStepID": "S2", "AccessionNumber": "ACC2"},
                                "attrs": started}]) == [0x0000]
    assert _steps(findscu(mwl_and_mpps, tmp_path, *BASE)[1]) == ["S1", "S3", "S4"]


def test_mpps_in_progress_then_completed_queue_two_statuses_by_ref_when_the_modality_reports_them(
        mwl_and_mpps: int, tmp_path: Path) -> None:
    started = {"PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
               "PerformedProcedureStepStartDate": "20261203", "PerformedProcedureStepStartTime": "083500"}
    done = {"PerformedProcedureStepStatus": "COMPLETED", "PerformedProcedureStepEndDate": "20261203",
            "PerformedProcedureStepEndTime": "084500"}
    uid = "1.2.826.0.1.99.2"
    assert mpps(mwl_and_mpps, [{"op": "create", "uid": uid, "study": "1.2.826.0.1.3",
                                "scheduled": {"ScheduledProcedureStepID": "S3", "AccessionNumber": "ACC3"},
                                "attrs": started},
                               {"op": "set", "uid": uid, "attrs": done}]) == [0x0000, 0x0000]
    store = WorklistStore(tmp_path / "worklist.db", KEY)
    try:
        assert [(p.ref, p.status) for p in store.due_statuses(2e9)] == [(_ref("S3"), "IN PROGRESS"),
                                                                        (_ref("S3"), "COMPLETED")]
    finally:
        store.close()


def test_answer_stops_at_max_results_earliest_first_when_more_items_match(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    listener = _serve(tmp_path, [_update()], 2)
    try:
        statuses, answers = findscu(listener.port, tmp_path, *BASE)
    finally:
        listener.stop()
    assert statuses == [0xFF00, 0xFF00, 0x0000]
    assert [a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for a in answers] == ["S1", "S4"]
    (record,) = [r for r in caplog.records if r.getMessage() == "worklist query answered"]
    assert (record.MATCHES, record.SENT) == (4, 2)  # type: ignore[attr-defined]


def test_unreadable_cache_gets_c001_when_it_was_sealed_with_another_key(tmp_path: Path) -> None:
    first = WorklistStore(tmp_path / "worklist.db", KEY)
    first.apply(_update(), 1.0)
    first.close()
    scp = WorklistScp(WorklistSettings(), WorklistStore(tmp_path / "worklist.db", os.urandom(32)),
                      lambda: 1796342400.0)
    listener = DicomListener(DicomSettings(ae_title="MGW", bind_host="127.0.0.1", port=0), [scp])
    listener.start()
    try:
        statuses, answers = findscu(listener.port, tmp_path, *BASE)
    finally:
        listener.stop()
    assert statuses == [0xC001] and answers == []


_MALFORMED_SCU = r"""
import json, sys
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL
port = int(sys.argv[1])
ae = AE(ae_title="CT1")
ae.add_requested_context(MWL)
assoc = ae.associate("127.0.0.1", port, ae_title="MGW")
assert assoc.is_established
def two_items():
    q = Dataset(); q.PatientName = ""
    a, b = Dataset(), Dataset(); a.Modality = "CT"; b.Modality = "MR"
    q.ScheduledProcedureStepSequence = [a, b]
    return q
def uid_wildcard():
    q = Dataset(); q.StudyInstanceUID = "1.2.*"
    return q
def name_as_sequence():
    q = Dataset(); q.ScheduledProcedureStepSequence = [Dataset()]
    q.add_new(0x00100010, "SQ", [Dataset()])
    return q
out = []
try:
    for make in (two_items, uid_wildcard, name_as_sequence):
        out.append([int(s.Status) if "Status" in s else None for s, _ in assoc.send_c_find(make(), MWL)])
finally:
    assoc.release()
print(json.dumps(out))
"""


def test_hostile_identifiers_get_a900_or_c000_and_the_association_goes_on_when_pynetdicom_sends_them(
        mwl: int) -> None:
    done = subprocess.run([sys.executable, "-c", _MALFORMED_SCU, str(mwl)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[0xA900], [0xC000], [0xA900]]


def test_gb18030_query_from_findscu_is_answered_in_gb18030_when_the_name_is_chinese(mwl: int, tmp_path: Path) -> None:
    out_dir = tmp_path / "gb"
    out_dir.mkdir()
    args: list[str | bytes] = [dcmtk("findscu"), "-W", "-aet", "CT1", "-aec", "MGW", "-X", "-od", str(out_dir),
                               "-k", "(0008,0005)=GB18030", "-k", b"PatientName=" + "张*".encode("gb18030"),
                               "-k", "PatientID", "127.0.0.1", str(mwl)]
    done = subprocess.run(args, env=dcmtk_env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    (answer,) = [dcmread(p) for p in out_dir.glob("rsp*.dcm")]
    assert (answer.SpecificCharacterSet, str(answer.PatientName), answer.PatientID) == ("GB18030", ZHANG, "PID-1003")
    assert answer.PatientName.original_string == ZHANG.encode("gb18030")
