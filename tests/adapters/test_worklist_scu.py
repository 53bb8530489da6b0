"""The Modality Worklist C-FIND SCU (adapters/worklist_scu.py) reading a real RIS: Orthanc's
Modality Worklists plugin serving ``.wl`` files; the entries it reads are the feed's, which a box's
cache takes as they are."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.adapters.worklist_scu import RisPeer, query_worklist
from gateway.adapters.worklist_store import WorklistStore
from gateway.core import worklist
from gateway.core.errors import PeerError
from tests.orthanc import AET, orthanc
from tests.peers import closed_port

ZHANG = "张^伟"


def wl_file(folder: Path, name: str, step: str, accession: str, patient: str, station: str, date: str,
            modality: str = "CT", charset: str = "ISO_IR 192") -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, f"PID-{step}", "19800101", "F"
    ds.AccessionNumber, ds.RequestedProcedureID = accession, f"RP-{step}"
    ds.RequestedProcedureDescription, ds.StudyInstanceUID = "CT head", generate_uid()
    ds.ReferringPhysicianName = "Smith^Ann"
    sps = Dataset()
    sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledStationName = modality, station, "ROOM"
    sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = date, "093000"
    sps.ScheduledPerformingPhysicianName, sps.ScheduledProcedureStepID = "Lee^Bo", step
    sps.ScheduledProcedureStepDescription, sps.ScheduledProcedureStepStatus = "plain", "SCHEDULED"
    ds.ScheduledProcedureStepSequence = [sps]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"  # DCMTK's worklist file convention
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / f"{name}.wl", enforce_file_format=True)


def test_ris_worklist_is_read_typed_and_cached_by_a_box_when_orthanc_is_the_ris(tmp_path: Path) -> None:
    folder = tmp_path / "worklists"
    folder.mkdir()
    wl_file(folder, "a", "S1", "ACC1", "Doe^John", "CT1", "20261203")
    wl_file(folder, "b", "S2", "ACC2", ZHANG, "CT1", "20261203")
    wl_file(folder, "c", "S3", "ACC3", "Roe^Jane", "MR1", "20261203", modality="MR")
    wl_file(folder, "d", "S4", "ACC4", "Late^Tom", "CT1", "20261207")
    with orthanc(tmp_path / "orthanc", worklists=folder) as ris:
        peer = RisPeer("127.0.0.1", ris.dicom_port, AET)
        answer = query_worklist(peer, station_ae_title="CT1", start_date="20261203")
        everything = query_worklist(peer)
    assert (answer.refused, answer.dropped) == (0, 0)
    by_step = {e.step.step_id: e for e in answer.entries}
    assert sorted(by_step) == ["S1", "S2"]  # the RIS matched the station and the day
    assert by_step["S2"].patient_name == ZHANG and by_step["S2"].step.station_ae_title == "CT1"
    assert (by_step["S1"].accession_number, by_step["S1"].step.start_time) == ("ACC1", "093000")
    assert sorted(e.step.step_id for e in everything.entries) == ["S1", "S2", "S3", "S4"]
    # the entries are the feed's: a box's cache takes them as they are
    store = WorklistStore(tmp_path / "worklist.db", os.urandom(32))
    try:
        assert store.apply(worklist.update_of("box-1", 1, everything.entries), 1.0).upserted == 4
        assert sorted(i.patient_name for i in store.candidates("CT1")) == ["Doe^John", "Late^Tom", ZHANG]
    finally:
        store.close()


def test_ris_answer_is_skipped_and_counted_when_it_does_not_fit_an_entry(tmp_path: Path) -> None:
    folder = tmp_path / "worklists"
    folder.mkdir()
    wl_file(folder, "a", "S1", "ACC1", "Doe^John", "CT1", "20261203")
    wl_file(folder, "b", "", "ACC2", "No^Step", "CT1", "20261203")  # no Scheduled Procedure Step ID
    with orthanc(tmp_path / "orthanc", worklists=folder) as ris:
        answer = query_worklist(RisPeer("127.0.0.1", ris.dicom_port, AET), max_items=5)
    assert [e.step.step_id for e in answer.entries] == ["S1"] and answer.refused == 1


def test_unreachable_ris_is_a_peer_error_naming_it_when_nothing_listens() -> None:
    with closed_port() as port, pytest.raises(PeerError, match=f"RIS worklist {AET}@127.0.0.1:{port}"):
        query_worklist(RisPeer("127.0.0.1", port, AET, timeout_s=5.0))


def test_dcmtk_can_read_the_worklist_files_when_the_test_writes_them(tmp_path: Path) -> None:
    """The .wl files are what DCMTK's own worklist tools read (so Orthanc's plugin reads them too)."""
    from tests.peers import dcmtk

    wl_file(tmp_path, "a", "S1", "ACC1", ZHANG, "CT1", "20261203")
    out = subprocess.run([dcmtk("dcmdump"), str(tmp_path / "a.wl")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ScheduledProcedureStepID" in out.stdout
