"""Every JSON message from a box is parsed into typed values or refused with FrameError: never
another exception, whatever the bytes (the h11 fuzz invariant, for the cloud's JSON inputs)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import fleet, schema
from gateway.core.errors import FrameError
from gateway.core.fleet import MessageKind

KINDS: list[type[Any]] = [schema.Heartbeat, schema.ExamRecord, schema.Birth, schema.Death]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


def heartbeat(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "kind": "heartbeat", "box_id": "box-1", "bd_seq": 3, "seq": 1, "at": 1e9,
                           "backlog": {"items": 1, "bytes": 2, "oldest_unacked_age_s": 3.0},
                           "disk": {"free_bytes": 1, "total_bytes": 2, "used_percent": 50.0},
                           "last_study": {"CT": 1e9}, "cert_not_after": 2e9}
    doc.update(over)
    return doc


@given(st.binary(max_size=300))
def test_parse_raises_only_frame_error_when_bytes_are_arbitrary(payload: bytes) -> None:
    for kind in KINDS:
        try:
            schema.parse(kind, payload, "x")
        except FrameError:
            pass


@settings(max_examples=300)
@given(st.sampled_from(list(schema.Heartbeat.__struct_fields__)), json_values)
def test_heartbeat_is_typed_or_refused_when_any_field_holds_any_json_value(key: str, value: Any) -> None:
    payload = json.dumps(heartbeat(**{key: value})).encode()
    try:
        parsed = schema.parse(schema.Heartbeat, payload, "heartbeat")
    except FrameError as exc:
        assert str(exc).startswith("heartbeat: ")
        return
    body = schema.to_builtins(parsed)  # what the fleet keeps: every figure is what its rules expect
    assert isinstance(body["bd_seq"], int) and not isinstance(body["bd_seq"], bool)
    assert body["backlog"] is None or isinstance(body["backlog"], dict)
    assert body["disk"] is None or isinstance(body["disk"], dict)
    assert isinstance(body["last_study"], dict)
    assert all(isinstance(v, float) for v in body["last_study"].values())


@pytest.mark.parametrize("over, field", [
    ({"backlog": [1, 2]}, "backlog"),  # the crash users found: a list where an object belongs
    ({"disk": "full"}, "disk"),
    ({"bd_seq": True}, "bd_seq"),
    ({"bd_seq": 2**63}, "bd_seq"),
    ({"at": 1e999}, "at"),
    ({"cert_not_after": "soon"}, "cert_not_after"),
    ({"site": "a\nFORGED LOG LINE"}, "site"),
    ({"version": "x" * 65}, "version"),
    ({"last_study": {"CT": "yesterday"}}, "last_study"),
    ({"v": 2}, "v"),
])
def test_heartbeat_is_refused_with_the_field_named_when_a_field_has_the_wrong_type(over: dict[str, Any],
                                                                                    field: str) -> None:
    with pytest.raises(FrameError, match=field):
        fleet.decode("health", "box-1", json.dumps(heartbeat(**over)).encode())


def test_parse_refuses_when_nesting_is_deep_or_the_message_is_huge() -> None:
    deep = b'{"v":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(FrameError, match="nested|limit"):
        schema.parse(schema.Heartbeat, deep, "heartbeat")
    with pytest.raises(FrameError, match="limit"):
        schema.parse(schema.Heartbeat, b" " * (schema.MAX_MESSAGE_BYTES + 1), "heartbeat")


def test_decode_refuses_when_state_kind_differs_from_what_was_expected() -> None:
    death = fleet.encode(MessageKind.DEATH, "box-1", 4)
    assert fleet.decode("state", "box-1", death).kind is MessageKind.DEATH
    with pytest.raises(FrameError, match="death"):
        fleet.decode(MessageKind.BIRTH, "box-1", death)
    with pytest.raises(FrameError):
        fleet.decode("state", "box-1", fleet.encode(MessageKind.HEARTBEAT, "box-1", 4))


def test_stored_health_is_dropped_when_it_predates_the_checks() -> None:
    assert fleet.health_of({"backlog": [1], "v": 1, "box_id": "box-1", "bd_seq": 1}) == {}
    good = schema.to_builtins(schema.parse(schema.Heartbeat, json.dumps(heartbeat()).encode(), "h"))
    assert fleet.health_of(good) == good


def test_exam_record_is_refused_when_a_count_does_not_fit_a_column() -> None:
    record = {"v": 1, "box_id": "box-1", "study_key": "ab" * 16, "revision": 2**31, "modality": "CT",
              "start": 1.0, "end": 2.0, "images": 1, "series": 1, "source": "header", "status": "completed",
              "first_received_at": 1.0, "last_received_at": 2.0}
    with pytest.raises(FrameError, match="revision"):
        schema.parse(schema.ExamRecord, json.dumps(record).encode(), "util")
    record["revision"] = 2**31 - 1
    assert schema.parse(schema.ExamRecord, json.dumps(record).encode(), "util").revision == 2**31 - 1


# -- the worklist update (cloud -> box; today `mgw edge worklist import`) ---------------------------------
_sh = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, blacklist_characters="\\\x7f"), max_size=16)
_steps = st.builds(schema.WorklistStep, step_id=_sh.filter(bool), modality=st.sampled_from(["", "CT", "MR"]),
                   station_ae_title=st.sampled_from(["", "CT1"]), start_date=st.sampled_from(["", "20261203"]),
                   start_time=st.sampled_from(["", "09", "0930", "093000.5"]), performing_physician=_sh,
                   description=_sh)
_entries = st.builds(schema.WorklistEntry, accession_number=_sh, step=_steps, patient_name=_sh, patient_id=_sh,
                     birth_date=st.sampled_from(["", "19700101"]), sex=st.sampled_from(["", "M", "F", "O"]))
_ops = st.lists(st.one_of(st.builds(schema.WorklistUpsert, entry=_entries),
                          st.builds(schema.WorklistCancel, step_id=_sh.filter(bool), accession_number=_sh)), max_size=4)


@given(st.builds(schema.WorklistUpdate, v=st.just(1), box_id=st.just("box-1"), seq=st.integers(0, 2**40),
                 ops=_ops))
def test_worklist_update_round_trips_when_the_struct_accepts_it(update: schema.WorklistUpdate) -> None:
    assert schema.parse(schema.WorklistUpdate, schema.encode(update), "update") == update


@given(st.sampled_from(list(schema.WorklistEntry.__struct_fields__)), json_values)
def test_worklist_entry_is_typed_or_refused_when_any_field_holds_any_json_value(key: str, value: Any) -> None:
    doc = {"accession_number": "A1", "step": {"step_id": "S1"}, key: value}
    try:
        entry = schema.parse(schema.WorklistEntry, json.dumps(doc).encode(), "entry")
    except FrameError as exc:
        assert key in str(exc) or "step" in str(exc) or "Expected" in str(exc)
        return
    assert isinstance(getattr(entry, key), str | schema.WorklistStep)


# -- the signed commissioning report (box -> cloud, {prefix}/{box}/commission) ---------------------------
_times = st.floats(min_value=0.0, max_value=1e10, allow_nan=False)
_checks = st.builds(schema.CommissioningCheck, key=st.sampled_from(["certificate", "modality-echo", "end-to-end"]),
                    name=_sh, manual=st.booleans(),
                    outcome=st.sampled_from(["ok", "FAIL", "skipped", "manual", "confirmed"]), detail=_sh,
                    started_at=_times, seconds=_times)
_reports = st.builds(schema.CommissioningReport, v=st.just(1), kind=st.just("mgw-commissioning-report"),
                     report_id=st.text("0123456789abcdef", min_size=32, max_size=32), box_id=st.just("box-1"),
                     site=_sh, time_zone=_sh, engineer=_sh.filter(bool), modality=_sh, modality_make=_sh,
                     modality_model=_sh, modality_ae=_sh, modality_address=_sh, software=_sh, started_at=_times,
                     finished_at=_times, result=st.sampled_from(["PASSED", "FAILED", "INCOMPLETE"]),
                     checks=st.lists(_checks, min_size=1, max_size=8))


@given(_reports)
def test_commissioning_report_round_trips_canonically_when_the_struct_accepts_it(
        report: schema.CommissioningReport) -> None:
    body = schema.encode_canonical(report)
    parsed = schema.parse(schema.CommissioningReport, body, "report")
    assert parsed == report and schema.encode_canonical(parsed) == body  # the bytes a signature covers


@settings(max_examples=200)
@given(_reports, st.sampled_from(list(schema.CommissioningReport.__struct_fields__)), json_values)
def test_commissioning_report_is_typed_or_refused_when_any_field_holds_any_json_value(
        report: schema.CommissioningReport, key: str, value: Any) -> None:
    doc = {**schema.to_builtins(report), key: value}
    try:
        parsed = schema.parse(schema.CommissioningReport, json.dumps(doc).encode(), "report")
    except FrameError as exc:
        assert str(exc).startswith("report: ")
        return
    assert schema.to_builtins(parsed)[key] == value or key in ("started_at", "finished_at")  # 1 and 1.0


@given(st.binary(max_size=300))
def test_signed_report_parse_raises_only_frame_error_when_bytes_are_arbitrary(payload: bytes) -> None:
    for kind in (schema.SignedCommissioningReport, schema.CommissioningReport):
        try:
            schema.parse(kind, payload, "x")
        except FrameError:
            pass
