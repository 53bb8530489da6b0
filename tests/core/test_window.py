"""The sender's sliding window (gateway/core/window.py): what is due, when, and that it always ends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.framing import to_ranges
from gateway.core.window import MIN_WINDOW_BYTES, Delivery, PathEstimate, TransferWindow

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


# -- bytes in flight and the path's bandwidth-delay product (PathEstimate) ----------------------

def test_in_flight_bytes_count_only_unacknowledged_chunks_when_progress_arrives() -> None:
    window = TransferWindow(final_seq=4)
    window.mark_sent([0, 1, 2], 0.0, [100, 2000, 2000])
    assert window.in_flight_bytes() == 4100
    deliveries = window.deliveries(((0, 2),), 0.25)
    assert [(d.seq, d.nbytes, d.rtt_s) for d in deliveries] == [(0, 100, 0.25), (1, 2000, 0.25)]
    assert window.in_flight_bytes() == 2000


def test_a_resent_chunk_gives_no_round_trip_sample_when_it_is_acknowledged() -> None:
    # Karn's rule: an ack of a chunk published twice may answer either copy
    window = TransferWindow(final_seq=1)
    window.mark_sent([0, 1], 0.0, [10, 10])
    window.forget_in_flight()  # the link dropped
    window.mark_sent([0, 1], 5.0, [10, 10])
    assert [d.rtt_s for d in window.deliveries(((0, 2),), 5.1)] == [None, None]


def test_window_is_the_floor_when_nothing_was_measured_yet() -> None:
    path = PathEstimate(ceiling_bytes=8 << 20)
    assert path.window_bytes() == MIN_WINDOW_BYTES
    path.on_delivered([Delivery(1, 5000, None)], 1.0)  # a resend: no round trip
    assert path.window_bytes() == MIN_WINDOW_BYTES


@settings(max_examples=200, deadline=None)
@given(
    ceiling=st.integers(1, 64 << 20),
    samples=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 1 << 20),
                               st.one_of(st.none(), st.floats(0.0, 3.0))), max_size=60),
)
def test_window_stays_between_floor_and_ceiling_when_any_deliveries_arrive(
        ceiling: int, samples: list[tuple[float, int, float | None]]) -> None:
    path, now = PathEstimate(ceiling_bytes=ceiling), 0.0
    for gap, nbytes, rtt in samples:
        now += gap
        path.on_delivered([Delivery(0, nbytes, rtt)], now)
        assert min(MIN_WINDOW_BYTES, ceiling) <= path.window_bytes() <= ceiling


def _simulate(rate_bps: float, delay_s: float, frame: int, ceiling: int, seconds: float) -> tuple[int, float, int]:
    """One transfer of endless chunks over a pipe of ``rate_bps`` and one-way ``delay_s`` each way,
    the sender filling ``PathEstimate``'s window as ``Sender.pump`` does. Returns (most bytes ever in
    flight minus the window then, bytes staged in the last quarter / what the pipe could carry, window)."""
    path, window = PathEstimate(ceiling_bytes=ceiling), TransferWindow(final_seq=10**7)
    pipe_free, now, seq, worst = 0.0, 0.0, 0, -(1 << 62)
    acks: list[tuple[float, int]] = []  # (time the PROGRESS arrives, seq staged)
    staged: set[int] = set()
    late_bytes = 0
    while now < seconds:
        while window.in_flight_bytes() < path.window_bytes():  # pump: room left, one more frame
            window.mark_sent([seq], now, [frame])
            pipe_free = max(pipe_free, now) + frame / rate_bps
            acks.append((pipe_free + 2 * delay_s, seq))
            seq += 1
            worst = max(worst, window.in_flight_bytes() - path.window_bytes())
        at, done = acks.pop(0)
        now = at
        staged.add(done)
        if now >= 0.75 * seconds:
            late_bytes += frame
        path.on_delivered(window.deliveries(((min(staged), max(staged) + 1),), now), now)
        staged = {max(staged)}
    return worst, late_bytes / (rate_bps * 0.25 * seconds), path.window_bytes()


@settings(max_examples=40, deadline=None)
@given(
    rate_bps=st.sampled_from([125_000.0, 1_250_000.0, 2_500_000.0, 6_250_000.0, 12_500_000.0]),
    delay_s=st.sampled_from([0.005, 0.02, 0.04, 0.1, 0.15]),
    frame=st.sampled_from([16_384, 65_536, 131_072]),
)
def test_window_fills_the_link_and_overshoots_by_less_than_a_frame_when_the_path_is_steady(
        rate_bps: float, delay_s: float, frame: int) -> None:
    """The law of the window: bytes in flight never exceed it by a frame or more, and it grows from
    its floor to twice the bandwidth-delay product, so the link (not the window) sets the rate."""
    rtt = 2 * delay_s + frame / rate_bps
    seconds = max(40 * rtt, 40 * frame / rate_bps, 4.0)
    worst, utilisation, window = _simulate(rate_bps, delay_s, frame, 1 << 30, seconds)
    assert worst < frame
    assert utilisation >= 0.95
    assert window <= max(MIN_WINDOW_BYTES, 2.2 * rate_bps * rtt) + frame


def test_window_is_capped_by_the_ceiling_when_the_path_is_longer_than_it() -> None:
    worst, utilisation, window = _simulate(12_500_000.0, 0.3, 131_072, 1 << 20, 30.0)
    assert window == 1 << 20 and worst < 131_072
    assert utilisation < 0.5  # the ceiling, not the link, limits: as configured


@settings(max_examples=300, deadline=None)
@given(
    final_seq=st.integers(0, 60),
    budget=st.integers(1, 16),
    acks=st.lists(st.integers(0, 60), max_size=30),
)
def test_a_link_cut_resends_at_most_what_was_in_flight_when_the_link_comes_back(
        final_seq: int, budget: int, acks: list[int]) -> None:
    """The resume law: after a cut, the chunks published again are at most those in flight at the
    cut (one window); everything the cloud staged stays staged."""
    window, sent, now, staged = TransferWindow(final_seq=final_seq), set(), 0.0, set()
    for upto in acks:
        published = _pump(window, now, budget)
        sent.update(published)
        staged |= {s for s in published if s <= upto}
        window.on_progress(to_ranges(staged), now)
        now += 0.1
    in_flight_at_cut = window.in_flight()
    window.forget_in_flight()
    again = [s for s in _pump(window, now, budget) if s in sent]
    assert len(again) <= in_flight_at_cut <= budget
    assert not set(again) & staged
