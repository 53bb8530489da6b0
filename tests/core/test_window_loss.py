"""The sender's window when chunks vanish (gateway.core.window): lost chunks never hold it shut."""

from __future__ import annotations

from gateway.core.window import TransferWindow


def test_window_frees_its_slots_when_every_chunk_in_flight_is_past_its_ack_timeout() -> None:
    window = TransferWindow(final_seq=9)
    window.mark_sent(window.due(0.0, 4, 2.0), 0.0)  # 0..3, then all four are lost (dead worker)

    assert window.awaiting(1.9, 2.0) == 4  # still waiting: the window is full
    assert window.awaiting(2.0, 2.0) == 0  # timed out: the slots are free again
    assert window.due(2.0, 4, 2.0) == [0, 1, 2, 3]  # and the lost chunks are due first


def test_window_keeps_a_slot_when_its_chunk_is_acked_late_or_still_in_time() -> None:
    window = TransferWindow(final_seq=9)
    window.mark_sent([0, 1], 0.0)
    window.mark_sent([2], 1.5)
    window.on_progress(((0, 1),), 1.6)

    assert window.awaiting(2.5, 2.0) == 1  # 0 acked, 1 timed out, 2 still in time
