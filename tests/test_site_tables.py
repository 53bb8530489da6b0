"""gateway/site_tables.py: the tables provisioning may set, their layers, and the options that make them."""

from __future__ import annotations

import pytest

from gateway import site_tables
from gateway.core.errors import ConfigError


def test_options_make_only_the_tables_they_name_when_some_are_given() -> None:
    assert site_tables.from_options() == {}
    made = site_tables.from_options(ae_title="MGW_CT", port=104, peers=["CT@10.0.0.5"], time_zone="Asia/Shanghai")
    assert made == {"dicom": {"ae_title": "MGW_CT", "port": 104, "allowed_peers": ["CT@10.0.0.5"]},
                    "site": {"time_zone": "Asia/Shanghai"}}
    assert site_tables.check(made, "options") == made


def test_later_layers_win_key_by_key_when_merged() -> None:
    token = {"dicom": {"ae_title": "A", "port": 104}, "site": {"time_zone": "Asia/Urumqi"}}
    bundle = {"dicom": {"port": 11112}}
    command_line = {"dicom": {"bind_host": "10.0.0.2"}}
    assert site_tables.merge(token, bundle, command_line) == {
        "dicom": {"ae_title": "A", "port": 11112, "bind_host": "10.0.0.2"}, "site": {"time_zone": "Asia/Urumqi"}}
    assert token == {"dicom": {"ae_title": "A", "port": 104}, "site": {"time_zone": "Asia/Urumqi"}}  # untouched


@pytest.mark.parametrize("tables", [[], {"dicom": []}, {"dicom": {"port": "104"}}, {"site": {"region": 5}}])
def test_tables_are_refused_when_they_have_the_wrong_shape(tables: object) -> None:
    with pytest.raises(ConfigError):
        site_tables.check(tables, "test")


def test_network_table_is_taken_and_a_usb_link_refused_when_provisioning_names_the_links() -> None:
    links = {"network": {"uplink_interfaces": ["enp1s0"], "modality_interfaces": ["3c:ec:ef:12:34:56"]}}
    assert site_tables.check(links, "bundle") == links
    with pytest.raises(ConfigError, match="usb0"):
        site_tables.check({"network": {"uplink_interfaces": ["usb*"]}}, "bundle")
