from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.core import netlink
from gateway.core.errors import FrameError

UP = netlink.IFF_UP | netlink.IFF_RUNNING | netlink.IFF_LOWER_UP


def test_link_counts_as_up_when_it_is_up_with_carrier() -> None:
    assert netlink.parse_links(netlink.encode_link(3, UP)) == [netlink.LinkStatus(3, True)]
    assert netlink.parse_links(netlink.encode_link(3, netlink.IFF_UP)) == [netlink.LinkStatus(3, False)]
    assert netlink.parse_links(netlink.encode_link(3, UP, netlink.RTM_DELLINK)) == [netlink.LinkStatus(3, False)]


def test_tracker_fires_once_when_a_link_comes_up_and_again_after_it_went_down() -> None:
    tracker = netlink.LinkTracker()
    feed = [netlink.encode_link(2, UP), netlink.encode_link(2, UP), netlink.encode_link(2, netlink.IFF_UP),
            netlink.encode_link(2, UP)]
    assert [tracker.feed(netlink.parse_links(m)) for m in feed] == [True, False, False, True]


def test_tracker_ignores_loopback_when_it_comes_up() -> None:
    tracker = netlink.LinkTracker()
    assert not tracker.feed(netlink.parse_links(netlink.encode_link(1, UP | netlink.IFF_LOOPBACK)))


def test_several_messages_parse_when_batched_in_one_datagram() -> None:
    datagram = netlink.encode_link(2, UP) + netlink.encode_link(3, 0)
    assert [s.index for s in netlink.parse_links(datagram)] == [2, 3]


@given(st.binary(max_size=200))
def test_parse_returns_or_raises_frame_error_when_fed_any_bytes(data: bytes) -> None:
    try:
        netlink.parse_links(data)
    except FrameError:
        pass
