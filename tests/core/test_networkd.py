"""core/networkd.py: the image's networkd files name only the designated links, never a USB link."""

from __future__ import annotations

import configparser

import pytest

from gateway.config import NetworkSettings
from gateway.core import networkd


def sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # networkd keys are case-sensitive
    parser.read_string(text)
    return parser


def defaults() -> networkd.LinkPatterns:
    return networkd.parse_patterns(NetworkSettings().uplink_interfaces, "network.uplink_interfaces")


def test_default_renders_dhcp_on_wired_names_only_and_never_a_usb_link_when_nothing_is_designated() -> None:
    files = networkd.render(defaults(), networkd.LinkPatterns((), ()), "127.0.0.1", 24)
    assert list(files) == ["80-mgw-uplink.network"]
    net = sections(files["80-mgw-uplink.network"])
    assert net["Match"]["Name"] == "eno* ens* enp* eth*" and net["Match"]["Type"] == "ether"
    assert net["Match"]["Path"] == "!*-usb-*" and net["Match"]["Driver"] == "!g_ether"
    assert net["Network"]["DHCP"] == "yes"


def test_modality_link_gets_the_listener_address_static_and_sorts_first_when_designated_by_mac() -> None:
    modality = networkd.parse_patterns(("AA:BB:CC:DD:EE:01",), "network.modality_interfaces")
    uplink = networkd.parse_patterns(("enp1s0",), "network.uplink_interfaces")
    files = networkd.render(uplink, modality, "192.168.10.5", 24)
    assert sorted(files) == ["70-mgw-modality-mac.network", "80-mgw-uplink.network"]
    net = sections(files["70-mgw-modality-mac.network"])
    assert net["Match"]["MACAddress"] == "aa:bb:cc:dd:ee:01" and net["Match"]["Path"] == "!*-usb-*"
    assert net["Network"]["Address"] == "192.168.10.5/24" and net["Network"]["DHCP"] == "no"
    assert net["Network"]["IPv6AcceptRA"] == "no" and net["Network"]["LinkLocalAddressing"] == "no"
    assert sections(files["80-mgw-uplink.network"])["Match"]["Name"] == "enp1s0"


def test_names_and_macs_go_to_separate_files_when_a_role_has_both() -> None:
    """networkd ANDs Name= and MACAddress= in one [Match]: each kind gets its own file (either matches)."""
    uplink = networkd.parse_patterns(("enp1s0", "00:11:22:33:44:55"), "network.uplink_interfaces")
    files = networkd.render(uplink, networkd.LinkPatterns((), ()), "127.0.0.1", 24)
    assert sorted(files) == ["80-mgw-uplink-mac.network", "80-mgw-uplink.network"]
    assert "Name" not in sections(files["80-mgw-uplink-mac.network"])["Match"]


@pytest.mark.parametrize("pattern", ["usb*", "usb0", "*", "?*", "e*", "en*", "rndis*", "enx*", "en?001122334455"])
def test_pattern_is_refused_when_it_could_match_a_usb_link(pattern: str) -> None:
    with pytest.raises(ValueError, match="network.uplink_interfaces"):
        networkd.parse_patterns((pattern,), "network.uplink_interfaces")


@pytest.mark.parametrize("pattern", ["enp1s0; rm", "enp 1", "", "a" * 16, "aa:bb:cc:dd:ee"])
def test_pattern_is_refused_when_it_is_neither_a_name_nor_a_mac(pattern: str) -> None:
    with pytest.raises(ValueError, match="neither an interface name"):
        networkd.parse_patterns((pattern,), "network.modality_interfaces")


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "not-an-address"])  # noqa: S104 - refused cases
def test_modality_links_are_refused_when_the_listener_has_no_modality_side_address(address: str) -> None:
    modality = networkd.parse_patterns(("enp2s0",), "network.modality_interfaces")
    with pytest.raises(ValueError, match="modality"):
        networkd.render(defaults(), modality, address, 24)
