"""Storage Commitment decisions: committed only after the cloud's ack, failures with reasons."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.commitment import (
    CommitmentState,
    EventType,
    FailureReason,
    Reference,
    SpooledCopy,
    Timing,
    after_failed_delivery,
    decide,
    parse_modality,
    validate_request,
)
from gateway.core.spool import ItemState

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
TIMING = Timing(absent_grace_s=60.0, max_wait_s=3600.0)


def ref(n: int, cls: str = CT) -> Reference:
    return Reference(cls, f"1.2.3.{n}")


def test_verdict_waits_when_any_instance_is_not_yet_acknowledged() -> None:
    copies = {"1.2.3.1": [SpooledCopy(CT, ItemState.ACKNOWLEDGED)], "1.2.3.2": [SpooledCopy(CT, ItemState.SENDING)]}
    assert decide([ref(1), ref(2)], copies, 0.0, 10.0, TIMING) is None


def test_all_committed_when_every_instance_is_acknowledged_or_purged() -> None:
    copies = {"1.2.3.1": [SpooledCopy(CT, ItemState.PURGED)], "1.2.3.2": [SpooledCopy(CT, ItemState.ACKNOWLEDGED)]}
    verdict = decide([ref(1), ref(2)], copies, 0.0, 10.0, TIMING)
    assert verdict is not None and verdict.event_type is EventType.ALL_COMMITTED
    assert verdict.committed == (ref(1), ref(2)) and verdict.failed == ()


def test_never_received_instance_fails_only_after_the_grace_period() -> None:
    assert decide([ref(1)], {}, 0.0, 59.0, TIMING) is None
    verdict = decide([ref(1)], {}, 0.0, 60.0, TIMING)
    assert verdict is not None and verdict.failed == ((ref(1), FailureReason.NO_SUCH_OBJECT_INSTANCE),)
    assert verdict.event_type is EventType.FAILURES_EXIST


def test_quarantined_and_class_conflict_fail_at_once_when_no_copy_was_acknowledged() -> None:
    copies = {"1.2.3.1": [SpooledCopy(CT, ItemState.QUARANTINED)], "1.2.3.2": [SpooledCopy(MR, ItemState.ACKNOWLEDGED)]}
    verdict = decide([ref(1), ref(2)], copies, 0.0, 1.0, TIMING)
    assert verdict is not None
    assert verdict.failed == ((ref(1), FailureReason.PROCESSING_FAILURE),
                              (ref(2), FailureReason.CLASS_INSTANCE_CONFLICT))


def test_instance_sent_twice_is_committed_when_one_copy_is_acknowledged() -> None:
    copies = {"1.2.3.1": [SpooledCopy(CT, ItemState.QUARANTINED), SpooledCopy(CT, ItemState.ACKNOWLEDGED)]}
    verdict = decide([ref(1)], copies, 0.0, 1.0, TIMING)
    assert verdict is not None and verdict.committed == (ref(1),)


def test_unacknowledged_instance_fails_when_the_maximum_wait_is_over() -> None:
    copies = {"1.2.3.1": [SpooledCopy(CT, ItemState.PACKED)]}
    assert decide([ref(1)], copies, 0.0, 3599.0, TIMING) is None
    verdict = decide([ref(1)], copies, 0.0, 3600.0, TIMING)
    assert verdict is not None and verdict.failed == ((ref(1), FailureReason.PROCESSING_FAILURE),)


STATES = st.sampled_from(list(ItemState))


@given(st.lists(st.tuples(st.integers(0, 5), STATES, st.booleans()), max_size=12), st.floats(0, 10_000))
def test_nothing_is_committed_that_the_cloud_did_not_acknowledge_when_states_are_arbitrary(
        rows: list[tuple[int, ItemState, bool]], now: float) -> None:
    copies: dict[str, list[SpooledCopy]] = {}
    for n, state, same_class in rows:
        copies.setdefault(f"1.2.3.{n}", []).append(SpooledCopy(CT if same_class else MR, state))
    refs = [ref(n) for n in range(6)]
    verdict = decide(refs, copies, 0.0, now, TIMING)
    if verdict is None:
        return
    assert len(verdict.committed) + len(verdict.failed) == len(refs)
    for r in verdict.committed:
        assert any(c.sop_class_uid == CT and c.state in (ItemState.ACKNOWLEDGED, ItemState.PURGED)
                   for c in copies[r.sop_instance_uid])


def test_delivery_retries_back_off_then_abandon_when_attempts_are_exhausted() -> None:
    state, at = after_failed_delivery(1, 3, 100.0, 5.0, 600.0, 0.0)
    assert state is CommitmentState.PENDING and at == pytest.approx(102.5)
    state, at2 = after_failed_delivery(2, 3, 100.0, 5.0, 600.0, 0.0)
    assert at2 > at
    assert after_failed_delivery(3, 3, 100.0, 5.0, 600.0, 0.0)[0] is CommitmentState.ABANDONED


@pytest.mark.parametrize("entry", ["CT1@10.0.0.5:104", "MR 2@[::1]:11112", "US@us-1.clinic.local:4006"])
def test_modality_address_parses_when_well_formed(entry: str) -> None:
    address = parse_modality(entry)
    assert 0 < address.port < 65536 and address.host and address.ae_title


@pytest.mark.parametrize("entry", ["CT1@host", "@h:1", "CT1@h:0", "CT1@h:70000", "A" * 17 + "@h:1", "CT\\1@h:1"])
def test_modality_address_is_refused_when_malformed(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_modality(entry)


def test_n_action_status_names_what_is_wrong_when_the_request_is_invalid() -> None:
    good = [ref(1)]
    cls, inst = "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1"
    assert validate_request(1, cls, inst, "1.2.3", good) == 0x0000
    assert validate_request(2, cls, inst, "1.2.3", good) == 0x0123
    assert validate_request(1, "1.2.3", inst, "1.2.3", good) == 0x0118
    assert validate_request(1, cls, "1.2.3", "1.2.3", good) == 0x0112
    assert validate_request(1, cls, inst, "", good) == 0x0120
    assert validate_request(1, cls, inst, "1.2.3", []) == 0x0120
    assert validate_request(1, cls, inst, "1.02.3", good) == 0x0106


def test_association_is_quiet_only_when_no_request_waits_and_nothing_arrived_for_the_quiet_time() -> None:
    from gateway.core.commitment import Activity

    a = Activity(now=100.0)
    assert not a.quiet(100.5, 1.0) and a.quiet(101.0, 1.0)
    a.request_received(101.0)  # a C-STORE-RQ: busy until our response, however long it takes
    assert not a.quiet(500.0, 1.0)
    a.response_sent()
    assert a.quiet(500.0, 1.0)
    a.received(500.2)  # the next request's first PDU
    assert not a.quiet(500.9, 1.0) and a.quiet(501.2, 1.0)
    a.response_sent()  # a stray response never makes the count negative
    a.request_received(600.0)
    assert not a.quiet(700.0, 1.0)
