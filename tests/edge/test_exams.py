"""Exam bookkeeping (gateway/edge/exams.py) on a real utilisation database beside a real spool:
instances fold into exams, quiet exams close, and turnaround waits for the whole study in the cloud."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.dicom_receive import ReceivedInstance
from gateway.adapters.exam_store import ExamStore
from gateway.config import UtilisationSettings
from gateway.core import spool
from gateway.core.exam import ExamStatus, TimeSource
from gateway.core.instance import InstanceIdentity
from gateway.edge.exams import ExamRecorder
from tests.edge.conftest import Box

MakeBox = Callable[..., Box]
SECRET = bytes(32)
QUIET_S = 300.0


def recorder(box: Box) -> ExamRecorder:
    store = ExamStore(box.paths.state_dir / "utilisation.db", box.paths.spool_db)
    return ExamRecorder(UtilisationSettings(exam_quiet_s=QUIET_S), store, SECRET, box.clock)


def instance(box: Box, study: str, series: str, acquired: float | None = None) -> ReceivedInstance:
    header = {"Modality": "CT"}
    if acquired is not None:
        header["AcquisitionDateTime"] = time.strftime("%Y%m%d%H%M%S", time.gmtime(acquired)) + "+0000"
    identity = InstanceIdentity("1.2.840.10008.5.1.4.1.1.2", f"{study}.{series}.1", study, series,
                                "1.2.840.10008.1.2.1", 1, "0" * 64)
    return ReceivedInstance(Path("unused"), identity, "MODALITY", "127.0.0.1", header)


def test_instances_fold_into_one_exam_that_closes_only_once_the_study_was_quiet(make_box: MakeBox) -> None:
    box = make_box()
    exams = recorder(box)
    try:
        t0 = box.clock()
        exams.observe(instance(box, "1.2.3", "1.2.3.1", acquired=t0 - 120))
        exams.observe(instance(box, "1.2.3", "1.2.3.1", acquired=t0 - 60))
        exams.observe(instance(box, "1.2.3", "1.2.3.2", acquired=t0 - 30))
        exams.observe(instance(box, "", "9.9"))  # no study: nothing to attribute it to
        assert exams.pump() == []
        stored = exams.store.get(exams.key("1.2.3"))
        assert stored is not None and not stored.closed
        assert (stored.exam.images, stored.exam.series, stored.exam.source) == (3, 2, TimeSource.HEADER)
        assert (stored.exam.start, stored.exam.end) == (t0 - 120, t0 - 30)
        box.clock.now += QUIET_S - 1
        assert exams.pump() == []
        box.clock.now += 2
        (closed,) = exams.pump()
        assert closed.exam.study_key == exams.key("1.2.3") != "1.2.3"  # the study's name outside the box
        after = exams.store.get(exams.key("1.2.3"))
        assert after is not None and after.closed and after.exam.status is not ExamStatus.IN_PROGRESS
        assert after.exam.cloud_stored_at is None  # nothing of it is in the cloud yet
    finally:
        exams.store.close()


def test_turnaround_is_set_only_once_every_instance_of_the_study_is_acknowledged(make_box: MakeBox) -> None:
    box = make_box()
    first, second = box.receive("CT_small.dcm", study_uid="7.7.7"), box.receive("MR_small.dcm", study_uid="7.7.7")
    exams = recorder(box)
    try:
        exams.observe(instance(box, "7.7.7", "7.7.7.1"))
        box.clock.now += QUIET_S + 1
        exams.pump()
        for event in (spool.Packed(), spool.SendStarted()):
            box.store.transition(first.id, event, box.clock())
            box.store.transition(second.id, event, box.clock())
        box.clock.now += 10
        box.store.transition(first.id, spool.CloudStored(), box.clock())
        assert exams.pump() == []  # one of two in the cloud: no turnaround yet
        box.clock.now += 10
        box.store.transition(second.id, spool.CloudStored(), box.clock())
        (settled,) = exams.pump()
        after = exams.store.get(exams.key("7.7.7"))
        assert after is not None and after.exam.cloud_stored_at == box.clock()
        assert exams.pump() == []  # settled once
    finally:
        exams.store.close()


def test_final_mpps_without_images_closes_the_exam_at_once_and_with_images_waits_for_quiet(
        make_box: MakeBox) -> None:
    box = make_box()
    exams = recorder(box)
    try:
        t0 = box.clock()
        empty = exams.mpps("5.5.5", "CT", t0 - 600, t0 - 300, ExamStatus.COMPLETED)
        assert exams.store.get(empty).closed  # type: ignore[union-attr]
        exams.observe(instance(box, "6.6.6", "6.6.6.1"))
        exams.pump()
        busy = exams.mpps("6.6.6", "CT", t0 - 600, t0 - 10, ExamStatus.COMPLETED)
        stored = exams.store.get(busy)
        assert stored is not None and not stored.closed and stored.exam.source is TimeSource.MPPS
        assert (stored.exam.start, stored.exam.end) == (t0 - 600, t0 - 10)
    finally:
        exams.store.close()


def test_commissioning_probe_produces_no_exam_when_the_box_receives_it(make_box: MakeBox, tmp_path: Path) -> None:
    from gateway.adapters import dicom_scu
    from gateway.adapters.dicom_receive import check_dataset
    from gateway.core import cstore

    probe = tmp_path / "commissioning.dcm"
    dicom_scu.write_test_object(probe, "20261203120000123")  # exactly what `mgw commission` sends
    with open(probe, "rb") as fh:
        found = cstore.InstanceHeader.of(check_dataset(fh, "1.2.840.10008.1.2.1"))  # as the listener reads it
    assert found.header.get("Modality") == "OT"
    identity = InstanceIdentity("1.2.840.10008.5.1.4.1.1.7", "probe", found.study_instance_uid,
                                found.series_instance_uid, "1.2.840.10008.1.2.1", probe.stat().st_size, "0" * 64)
    box = make_box()
    exams = recorder(box)
    try:
        exams.observe(ReceivedInstance(probe, identity, "MGW", "127.0.0.1", found.header))
        exams.observe(instance(box, "1.2.4", "1.2.4.1"))  # a patient's study beside it is recorded
        exams.mpps(found.study_instance_uid, "OT", box.clock(), None, ExamStatus.IN_PROGRESS)
        box.clock.now += QUIET_S + 1
        (closed,) = exams.pump()
        assert closed.exam.study_key == exams.key("1.2.4")
        assert exams.store.get(exams.key(found.study_instance_uid)) is None
    finally:
        exams.store.close()
