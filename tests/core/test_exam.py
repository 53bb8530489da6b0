"""core.exam: header times with vendor quirks, the choice of source, folding and MPPS."""

from __future__ import annotations

import calendar

from hypothesis import given
from hypothesis import strategies as st

from gateway.core import exam
from gateway.core.exam import ExamStatus, TimeSource

T0 = calendar.timegm((2026, 11, 24, 8, 30, 15))  # 2026-11-24 08:30:15 UTC


def test_acquisition_datetime_wins_when_present_with_its_own_offset() -> None:
    header = {"AcquisitionDateTime": "20261124163015.123+0800", "ContentDate": "20261124", "ContentTime": "000000"}
    assert exam.header_time(header, default_offset_s=0) == T0 + 0.123


def test_time_borrows_a_later_date_when_its_own_date_is_missing() -> None:
    # AcquisitionTime without AcquisitionDate (seen on CR/DX units): the series/study date is used.
    header = {"AcquisitionTime": "083015", "SeriesDate": "20261124"}
    assert exam.header_time(header, default_offset_s=0) == T0


def test_acr_nema_separators_and_site_offset_are_understood_when_no_offset_in_header() -> None:
    header = {"ContentTime": "16:30:15", "ContentDate": "2026.11.24"}
    assert exam.header_time(header, default_offset_s=8 * 3600) == T0


def test_unset_clock_dates_are_ignored_when_a_later_source_has_a_real_date() -> None:
    header = {"AcquisitionDate": "19700101", "AcquisitionTime": "083015", "StudyDate": "20261124"}
    assert exam.header_time(header, default_offset_s=0) == T0


def test_date_only_acquisition_datetime_falls_back_when_it_has_no_time() -> None:
    header = {"AcquisitionDateTime": "20261124", "SeriesDate": "20261124", "SeriesTime": "083015"}
    assert exam.header_time(header, default_offset_s=0) == T0


def test_no_time_at_all_gives_none_when_headers_are_empty_or_invalid() -> None:
    assert exam.header_time({}, 0) is None
    assert exam.header_time({"AcquisitionDate": "20261131", "AcquisitionTime": "083015"}, 0) is None
    assert exam.header_time({"ContentDate": "20261124", "ContentTime": "256000"}, 0) is None


@given(st.dictionaries(st.sampled_from(exam.HEADER_TAGS), st.text(max_size=30)), st.integers(-50000, 50000))
def test_header_time_never_raises_when_headers_are_arbitrary(header: dict[str, str], offset: int) -> None:
    value = exam.header_time(header, offset)
    assert value is None or isinstance(value, float)


def _inst(header: dict[str, str], received_at: float) -> exam.InstanceTime:
    return exam.instance_time(header, study_key="k", series_key="s1", received_at=received_at, default_offset_s=0,
                              max_header_age_s=86400, max_header_ahead_s=300)


def test_receive_time_is_used_when_the_header_time_is_implausible() -> None:
    header = {"AcquisitionDateTime": "19931105101010", "Modality": "ct"}
    inst = _inst(header, received_at=T0)
    assert (inst.acquired_at, inst.source, inst.modality) == (T0, TimeSource.RECEIVED, "CT")
    ahead = _inst({"AcquisitionDateTime": "20261124093015"}, received_at=T0)  # an hour in the future
    assert ahead.source is TimeSource.RECEIVED


def test_exam_spans_its_instances_when_folded() -> None:
    e = None
    for i, (series, hhmmss) in enumerate([("a", "083015"), ("a", "084015"), ("b", "082015")]):
        inst = exam.instance_time({"AcquisitionDate": "20261124", "AcquisitionTime": hhmmss, "Modality": "MR"},
                                  study_key="k", series_key=series, received_at=T0 + 3600 + i,
                                  default_offset_s=0, max_header_age_s=86400, max_header_ahead_s=300)
        e = exam.fold(e, inst, new_series=(i != 1))
    assert e is not None
    assert (e.start, e.end, e.images, e.series, e.source) == (T0 - 600, T0 + 600, 3, 2, TimeSource.HEADER)
    assert exam.close(e).status is ExamStatus.COMPLETED


def test_mpps_times_win_and_stay_when_images_arrive_later() -> None:
    e = exam.apply_mpps(None, study_key="k", modality="CT", start=T0, end=None, status=ExamStatus.IN_PROGRESS, now=T0)
    e = exam.apply_mpps(e, study_key="k", modality="CT", start=None, end=T0 + 900, status=ExamStatus.COMPLETED,
                        now=T0 + 900)
    inst = _inst({"AcquisitionDateTime": "20261124084015"}, received_at=T0 + 1000)
    e = exam.fold(e, inst, new_series=True)
    assert (e.start, e.end, e.source, e.status, e.images, e.series) == (
        T0, T0 + 900, TimeSource.MPPS, ExamStatus.COMPLETED, 1, 1)
    record = exam.to_record(e, "box-1", revision=3)
    assert record["study_key"] == "k" and record["source"] == "mpps" and "study_uid" not in record


def test_study_key_is_keyed_when_hashing_a_uid() -> None:
    uid = "1.2.840.113619.2.55.3.604688119"
    assert exam.study_key(b"a" * 32, uid) != exam.study_key(b"b" * 32, uid)
    assert len(exam.study_key(b"a" * 32, uid)) == 32 and uid not in exam.study_key(b"a" * 32, uid)
