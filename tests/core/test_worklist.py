"""Modality Worklist matching (core.worklist): PS3.4 C.2.2.2 as tables, and laws with hypothesis."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import schema
from gateway.core.errors import FrameError
from gateway.core.worklist import (
    STEP_KEYS,
    TOP_KEYS,
    QueryError,
    ScheduledStep,
    WorklistItem,
    answer,
    answer_charset,
    document,
    for_station,
    from_document,
    matches,
    parse_query,
)

ITEM = WorklistItem(
    patient_name="Doe^John", patient_id="P1", birth_date="19700101", sex="M", accession_number="A100",
    requested_procedure_id="RP1", requested_procedure_description="CT head", study_instance_uid="1.2.3.4",
    referring_physician="Smith^Ann",
    step=ScheduledStep(modality="CT", station_ae_title="CT1", station_name="CT ROOM 1", start_date="20261203",
                       start_time="093000", performing_physician="Lee^Bo", step_id="S1",
                       description="head without contrast", status="SCHEDULED"))


def _q(top: dict[str, str] | None = None, step: dict[str, str] | None = None) -> bool:
    return matches(ITEM, parse_query(top or {}, step))


@pytest.mark.parametrize(("top", "step", "expected"), [
    ({}, None, True),  # universal: no key at all
    ({"PatientName": "", "PatientID": ""}, {"Modality": ""}, True),  # universal: empty keys
    ({"PatientID": "P1"}, None, True),  # single value
    ({"PatientID": "P2"}, None, False),
    ({"PatientID": "p1"}, None, False),  # LO is case-sensitive
    ({"PatientID": " P1 "}, None, True),  # padding is not significant
    ({"PatientName": "doe^john"}, None, True),  # PN: case-insensitive (our choice, documented)
    ({"PatientName": "DOE^JOHN^^"}, None, True),  # PN: trailing empty components
    ({"PatientName": "Doe*"}, None, True),  # wildcards
    ({"PatientName": "D?e^J*"}, None, True),
    ({"PatientName": "D?^J*"}, None, False),  # ? is exactly one character
    ({"PatientName": "*"}, None, True),
    ({"AccessionNumber": "A1*"}, None, True),
    ({"AccessionNumber": "a1*"}, None, False),  # SH wildcards are case-sensitive
    ({"AccessionNumber": "A10"}, None, False),
    ({"PatientBirthDate": "19600101-19751231"}, None, True),  # date ranges
    ({"PatientBirthDate": "19710101-"}, None, False),
    ({"PatientBirthDate": "-19700101"}, None, True),
    ({"StudyInstanceUID": "1.2.3.5\\1.2.3.4"}, None, True),  # list of UID matching
    ({"StudyInstanceUID": "1.2.3.5\\1.2.3.6"}, None, False),
    (None, {}, True),  # sequence asked for, everything returned
    (None, {"Modality": "CT"}, True),  # sequence matching
    (None, {"Modality": "MR"}, False),
    (None, {"Modality": "CT", "ScheduledStationAETitle": "CT2"}, False),
    (None, {"ScheduledProcedureStepStartDate": "20261203"}, True),
    (None, {"ScheduledProcedureStepStartDate": "20261201-20261205"}, True),
    (None, {"ScheduledProcedureStepStartDate": "20261204-"}, False),
    (None, {"ScheduledProcedureStepStartDate": "-20261202"}, False),
    (None, {"ScheduledProcedureStepStartTime": "09-10"}, True),  # 09:00:00 to 10:59:59.999999
    (None, {"ScheduledProcedureStepStartTime": "0931-"}, False),
    (None, {"ScheduledProcedureStepStartTime": "-0929"}, False),
    (None, {"ScheduledProcedureStepStartTime": "-0930"}, True),  # 09:30 covers 09:30:59
    # combined date-time range (C.2.2.2.5.2): from 2 Dec 10:00 to 3 Dec 09:00 excludes 3 Dec 09:30 ...
    (None, {"ScheduledProcedureStepStartDate": "20261202-20261203",
            "ScheduledProcedureStepStartTime": "1000-0900"}, False),
    # ... from 2 Dec 10:00 to 3 Dec 09:45 includes it, though 09:30 is before 10:00 taken alone
    (None, {"ScheduledProcedureStepStartDate": "20261202-20261203",
            "ScheduledProcedureStepStartTime": "1000-0945"}, True),
    (None, {"ScheduledProcedureStepStartDate": "20261203-",
            "ScheduledProcedureStepStartTime": "0945-"}, False),
    (None, {"ScheduledProcedureStepStatus": "SCHEDULED"}, True),
])
def test_item_matches_as_ps34_says_when_a_query_uses_each_kind_of_matching(
        top: dict[str, str] | None, step: dict[str, str] | None, expected: bool) -> None:
    assert _q(top, step) is expected


def test_empty_attribute_matches_only_universal_matching_when_the_item_lacks_it() -> None:
    item = dataclasses.replace(ITEM, patient_id="")
    assert matches(item, parse_query({"PatientID": ""}, None))
    assert not matches(item, parse_query({"PatientID": "*"}, None))


@pytest.mark.parametrize(("top", "step"), [
    ({"PatientBirthDate": "1970*"}, None),  # no wildcard in DA
    ({"PatientBirthDate": "1970-01-01"}, None),
    ({"PatientBirthDate": "-"}, None),
    ({"StudyInstanceUID": "1.2.*"}, None),
    (None, {"ScheduledProcedureStepStartDate": "2026120"}),
    (None, {"ScheduledProcedureStepStartTime": "9:30-10"}),
    (None, {"ScheduledProcedureStepStartTime": "2500?"}),
])
def test_query_is_refused_when_a_key_cannot_be_matched(top: dict[str, str] | None, step: dict[str, str] | None) -> None:
    with pytest.raises(QueryError):
        parse_query(top or {}, step)


def test_every_requested_key_comes_back_when_answered() -> None:
    query = parse_query({"PatientName": "", "PatientSex": "", "StudyInstanceUID": ""}, {"Modality": ""},
                        unsupported=("PatientWeight",))
    top, step = answer(dataclasses.replace(ITEM, sex=""), query)
    assert top == {"PatientName": "Doe^John", "PatientSex": "", "StudyInstanceUID": "1.2.3.4", "PatientWeight": ""}
    assert step == {"Modality": "CT"}
    _, everything = answer(ITEM, parse_query({}, {}))
    assert everything is not None and set(everything) == set(STEP_KEYS)
    assert answer(ITEM, parse_query({}, None))[1] is None


@pytest.mark.parametrize(("station", "calling", "unassigned", "expected"), [
    ("CT1", "CT1", False, True), ("CT1", "CT2", True, False), ("", "CT2", True, True), ("", "CT2", False, False),
])
def test_station_rule_admits_the_calling_ae_when_the_step_is_scheduled_there(
        station: str, calling: str, unassigned: bool, expected: bool) -> None:
    item = dataclasses.replace(ITEM, step=dataclasses.replace(ITEM.step, station_ae_title=station))
    assert for_station(item, calling, unassigned) is expected


@pytest.mark.parametrize(("asked", "values", "expected"), [
    (("GB18030",), ["张^三"], "GB18030"),
    (("ISO_IR 192",), ["张^三"], "ISO_IR 192"),
    ((), ["Doe^John"], ""),
    ((), ["张^三"], "ISO_IR 192"),  # the default repertoire cannot say it
    (("ISO_IR 100",), ["Müller"], "ISO_IR 100"),
    (("ISO_IR 100",), ["张"], "ISO_IR 192"),
    (("ISO 2022 IR 87",), ["山田"], "ISO_IR 192"),  # not one we answer in
    (("", "ISO 2022 IR 58"), ["张"], "ISO_IR 192"),
])
def test_answer_charset_is_the_querys_when_it_can_carry_every_value(
        asked: tuple[str, ...], values: list[str], expected: str) -> None:
    assert answer_charset(asked, values) == expected


# -- laws -------------------------------------------------------------------------------------------------
_text = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\*?=^"), max_size=12)
_date = st.dates(min_value=datetime.date(1900, 1, 1)).map(lambda d: d.strftime("%Y%m%d"))
_time = st.times().map(lambda t: t.strftime("%H%M%S"))
_steps = st.builds(ScheduledStep, modality=st.sampled_from(["CT", "MR", "US"]), station_ae_title=st.sampled_from(
    ["CT1", "MR1", ""]), start_date=_date, start_time=_time, step_id=st.text("ABC123", min_size=1, max_size=8))
_items = st.builds(WorklistItem, patient_name=_text.map(str.strip), patient_id=_text.map(str.strip),
                   accession_number=st.text("A0123", min_size=1, max_size=8), birth_date=_date, step=_steps)


@given(_items)
def test_item_matches_when_every_key_is_universal_or_its_own_value(item: WorklistItem) -> None:
    assert matches(item, parse_query(dict.fromkeys(TOP_KEYS, ""), dict.fromkeys(STEP_KEYS, "")))
    own = {k: getattr(item, f) for k, (f, _) in TOP_KEYS.items() if getattr(item, f)}
    own_step = {k: getattr(item.step, f) for k, (f, _) in STEP_KEYS.items() if getattr(item.step, f)}
    assert matches(item, parse_query(own, own_step))


@given(_items, _text)
def test_prefix_wildcard_matches_when_the_name_starts_with_the_prefix(item: WorklistItem, tail: str) -> None:
    name = item.patient_name
    if not name:
        return
    assert matches(item, parse_query({"PatientName": name[:3] + "*"}, None))
    assert matches(item, parse_query({"PatientName": "?" * len(name)}, None))
    assert not matches(item, parse_query({"PatientName": "?" * (len(name) + 1)}, None))


@given(_items, _date, _date)
def test_date_range_matches_when_and_only_when_the_start_date_lies_in_it(item: WorklistItem, a: str, b: str) -> None:
    low, high = min(a, b), max(a, b)
    inside = low <= item.step.start_date <= high
    assert matches(item, parse_query({}, {"ScheduledProcedureStepStartDate": f"{low}-{high}"})) is inside
    assert matches(item, parse_query({}, {"ScheduledProcedureStepStartDate": f"{low}-"})) is (
        item.step.start_date >= low)


@given(_items, _date, _time, _date, _time)
def test_combined_range_matches_when_the_start_date_time_lies_between_its_ends(
        item: WorklistItem, d1: str, t1: str, d2: str, t2: str) -> None:
    (ld, lt), (hd, ht) = sorted([(d1, t1), (d2, t2)])
    have = item.step.start_date + item.step.start_time
    query = parse_query({}, {"ScheduledProcedureStepStartDate": f"{ld}-{hd}",
                             "ScheduledProcedureStepStartTime": f"{lt}-{ht}"})
    assert matches(item, query) is (ld + lt <= have <= hd + ht)


@given(_items)
def test_document_round_trips_when_an_item_is_sealed_and_read_back(item: WorklistItem) -> None:
    if len(item.patient_name) > 64 or "\\" in item.patient_name:
        return
    assert from_document(document(item)) == item


@given(st.binary(max_size=200))
def test_document_refuses_with_frame_error_when_bytes_are_not_an_entry(raw: bytes) -> None:
    try:
        from_document(raw)
    except FrameError:
        pass


def test_update_message_refuses_with_the_field_named_when_a_value_breaks_its_vr() -> None:
    good = (b'{"v":1,"box_id":"box-1","seq":1,"ops":[{"op":"upsert","entry":{"accession_number":"A1",'
            b'"step":{"step_id":"S1","start_date":"20261203"}}}]}')
    assert schema.parse(schema.WorklistUpdate, good, "update").seq == 1
    for bad, field in [(good.replace(b"20261203", b"2026-12-03"), "start_date"),
                       (good.replace(b'"S1"', b'""'), "step_id"),
                       (good.replace(b'"upsert"', b'"delete"'), "op"),
                       (good.replace(b'"A1"', b'"A1\\\\A2"'), "accession_number")]:
        with pytest.raises(FrameError, match=field):
            schema.parse(schema.WorklistUpdate, bad, "update")
