"""The sender's sliding window (gateway/core/window.py): what is due, when, and that it always ends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.framing import to_ranges
from gateway.core.window import TransferWindow

TIMEOUT_S = 2.0


def _pump(window: TransferWindow, now: float, window_chunks: int) -> list[int]:
    """What the edge sender does each turn for one transfer."""
    window.expire(now, TIMEOUT_S)
    seqs = window.due(now, window_chunks - window.in_flight(), TIMEOUT_S)
    window.mark_sent(seqs, now)
    return seqs


def test_first_chunks_are_due_in_order_when_nothing_was_sent() -> None:
    window = TransferWindow(final_seq=9)
    assert _pump(window, 0.0, 4) == [0, 1, 2, 3]
    assert window.in_flight() == 4
    assert _pump(window, 0.1, 4) == []


def test_lost_window_is_resent_when_every_chunk_in_flight_times_out() -> None:
    # The regression: a broker with no subscriber yet PUBACKs and drops a whole window;
    # the budget was all in flight, so nothing was ever resent.
    window = TransferWindow(final_seq=9)
    assert _pump(window, 0.0, 4) == [0, 1, 2, 3]
    assert _pump(window, TIMEOUT_S - 0.01, 4) == []
    assert _pump(window, TIMEOUT_S, 4) == [0, 1, 2, 3]
    assert window.silent_rounds == 1


def test_timeout_doubles_when_rounds_stay_silent_and_resets_on_progress() -> None:
    window = TransferWindow(final_seq=3)
    _pump(window, 0.0, 4)
    assert _pump(window, 2.0, 4) == [0, 1, 2, 3]  # round 1 after 2 s
    assert _pump(window, 5.9, 4) == []  # round 2 waits 4 s
    assert _pump(window, 6.0, 4) == [0, 1, 2, 3]
    assert window.on_progress(((0, 2),), 6.5) == 2
    assert window.silent_rounds == 0
    assert _pump(window, 8.5, 4) == [2, 3]


def test_only_missing_chunks_are_due_when_the_cloud_reports_progress() -> None:
    window = TransferWindow(final_seq=5)
    _pump(window, 0.0, 6)
    window.on_progress(((0, 2), (3, 6)), 0.5)
    assert window.in_flight() == 1
    assert _pump(window, 2.0, 6) == [2]


def test_manifest_poke_is_due_when_all_chunks_are_staged_but_no_stored_ack_comes() -> None:
    window = TransferWindow(final_seq=2)
    _pump(window, 0.0, 8)
    window.on_progress(((0, 3),), 0.5)
    assert window.all_staged
    assert _pump(window, 2.0, 8) == []
    assert _pump(window, 2.5, 8) == [0]


def test_everything_unacked_is_due_at_once_when_the_link_comes_back() -> None:
    window = TransferWindow(final_seq=7)
    _pump(window, 0.0, 4)
    window.on_progress(((0, 1),), 0.2)
    window.forget_in_flight()
    assert _pump(window, 0.3, 4) == [1, 2, 3, 4]


@settings(max_examples=300, deadline=None)
@given(
    final_seq=st.integers(0, 40),
    window_chunks=st.integers(1, 8),
    lost=st.lists(st.booleans(), max_size=200),
)
def test_transfer_always_completes_when_the_cloud_eventually_stages_every_sent_chunk(
    final_seq: int, window_chunks: int, lost: list[bool]
) -> None:
    """Liveness under any pattern of lost chunks: sent chunks are staged unless the pattern says
    lost; after the pattern runs out nothing is lost. The cloud reports cumulative progress."""
    window, staged, now, losses = TransferWindow(final_seq=final_seq), set(), 0.0, iter(lost)
    for _ in range(len(lost) + 4 * (final_seq + 1) + 64):
        sent = _pump(window, now, window_chunks)
        for seq in sent:
            if not next(losses, False):
                staged.add(seq)
        window.on_progress(to_ranges(staged), now)
        if window.all_staged:
            break
        now += 0.5 if sent else 700.0  # an idle turn waits past the longest ack timeout
    assert window.all_staged
    assert window.in_flight() <= window_chunks
