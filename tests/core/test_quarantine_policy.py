"""Bounded resends and operator decisions on the spool machine."""

from __future__ import annotations

import pytest

from gateway.core import policy, spool
from gateway.core.errors import IllegalTransitionError
from gateway.core.spool import Effect, ItemState


def test_resends_go_to_quarantine_only_when_the_cloud_acknowledged_others() -> None:
    assert policy.delivery_exhausted(20, 20, cloud_acked_others_since=True)
    assert not policy.delivery_exhausted(19, 20, cloud_acked_others_since=True)
    assert not policy.delivery_exhausted(500, 20, cloud_acked_others_since=False)  # an outage, not a bad object


@pytest.mark.parametrize("state", [ItemState.PACKED, ItemState.SENDING])
def test_exhausted_transfer_is_quarantined_and_its_outbox_dropped_when_in_flight(state: ItemState) -> None:
    result = spool.step(state, spool.SendExhausted(reason="delivery"))
    assert result.state is ItemState.QUARANTINED
    assert Effect.DELETE_OUTBOX in result.effects and Effect.DELETE_BLOB not in result.effects


def test_only_a_quarantined_item_can_be_discarded_when_an_operator_deletes() -> None:
    assert spool.step(ItemState.QUARANTINED, spool.Discarded()).effects == (Effect.DELETE_BLOB,)
    for state in set(ItemState) - {ItemState.QUARANTINED}:
        with pytest.raises(IllegalTransitionError):
            spool.step(state, spool.Discarded())


def test_blob_is_deleted_only_after_ack_or_by_an_operator_when_any_event_applies() -> None:
    for (state, _event), (_new, effects) in spool.TRANSITIONS.items():
        if Effect.DELETE_BLOB in effects:
            assert state in (ItemState.ACKNOWLEDGED, ItemState.QUARANTINED)


def test_only_an_acknowledged_item_is_sent_again_when_a_resend_is_requested() -> None:
    result = spool.step(ItemState.ACKNOWLEDGED, spool.ResendRequested())
    assert result.state is ItemState.RECEIVED and result.effects == ()  # the original stays
    for state in set(ItemState) - {ItemState.ACKNOWLEDGED}:
        with pytest.raises(IllegalTransitionError):
            spool.step(state, spool.ResendRequested())
