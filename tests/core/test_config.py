"""gateway/config.py: strict TOML, one frozen Settings tree, errors that name the file and the key.

Every test writes real files in ``tmp_path`` and loads them with ``load_edge`` / ``load_cloud``.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path

import pytest

from gateway.config import (
    BoxSettings,
    CloudSettings,
    DicomSettings,
    EdgeSettings,
    IngestSettings,
    MqttSettings,
    SpoolSettings,
    UplinkSettings,
    iter_keys,
    load_cloud,
    load_edge,
)
from gateway.core.errors import ConfigError, LocalError
from gateway.core.framing import MAX_FRAME_BYTES, MIN_FRAME_BYTES

CLOUD_KEY = base64.b64encode(bytes(range(32))).decode()
MINIMAL_EDGE = f"""
[box]
id = "box-01"
cloud_public_key = "{CLOUD_KEY}"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edge_error(tmp_path: Path, text: str, name: str = "gateway.toml") -> tuple[str, Path]:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_edge([path])
    return str(info.value), path


# --- a valid file -------------------------------------------------------------------------


def test_load_edge_fills_every_default_when_the_file_is_minimal(tmp_path: Path) -> None:
    settings = load_edge([write(tmp_path, "gateway.toml", MINIMAL_EDGE)])
    assert settings.box == BoxSettings(id="box-01", cloud_public_key=CLOUD_KEY)
    assert settings.dicom == DicomSettings()
    assert settings.mqtt == MqttSettings()
    assert settings.uplink == UplinkSettings()
    assert settings.spool == SpoolSettings()
    assert settings.dicom.port == 11112 and settings.dicom.allowed_calling_aets == ()
    assert settings.uplink.max_frame_bytes == MAX_FRAME_BYTES


def test_load_edge_returns_frozen_settings_when_loaded(tmp_path: Path) -> None:
    settings = load_edge([write(tmp_path, "gateway.toml", MINIMAL_EDGE)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.mqtt.host = "elsewhere"  # type: ignore[misc]


def test_load_edge_reads_every_table_when_all_are_given(tmp_path: Path) -> None:
    text = MINIMAL_EDGE + """
[dicom]
ae_title = "CT_GATEWAY"
port = 104
allowed_calling_aets = ["CT01", "MR02"]
network_timeout_s = 5
[mqtt]
host = "broker.example"
port = 8883
[uplink]
max_frame_bytes = 65536
[spool]
high_water_percent = 95.5
"""
    settings = load_edge([write(tmp_path, "gateway.toml", text)])
    assert settings.dicom.ae_title == "CT_GATEWAY" and settings.dicom.port == 104
    assert settings.dicom.allowed_calling_aets == ("CT01", "MR02")
    assert settings.dicom.network_timeout_s == 5.0 and type(settings.dicom.network_timeout_s) is float
    assert (settings.mqtt.host, settings.mqtt.port) == ("broker.example", 8883)
    assert settings.uplink.max_frame_bytes == 65536
    assert settings.spool.high_water_percent == 95.5


# --- unknown keys, wrong types, missing keys ----------------------------------------------


@pytest.mark.parametrize(
    "extra, dotted",
    [
        ('[mqtt]\nhots = "x"\n', "mqtt.hots"),
        ("[dicom]\nport = 104\nbogus = 1\n", "dicom.bogus"),
        ('[box]\nid = "box-01"\n', None),  # duplicate table: a TOML error, still a ConfigError
        ("[bogus]\nx = 1\n", "bogus"),
        ("toplevel = 1\n", "toplevel"),
    ],
)
def test_load_edge_raises_config_error_naming_file_and_dotted_key_when_a_key_is_unknown(
    tmp_path: Path, extra: str, dotted: str | None
) -> None:
    message, path = edge_error(tmp_path, extra + MINIMAL_EDGE)  # before [box], so top-level keys stay top-level
    assert str(path) in message
    if dotted is not None:
        assert f"unknown key '{dotted}'" in message


@pytest.mark.parametrize(
    "extra, dotted, type_name",
    [
        ('[dicom]\nport = "104"\n', "dicom.port", "integer"),
        ("[dicom]\nport = 1.5\n", "dicom.port", "integer"),
        ("[dicom]\nport = true\n", "dicom.port", "integer"),
        ('[dicom]\nnetwork_timeout_s = "5"\n', "dicom.network_timeout_s", "number"),
        ("[dicom]\nnetwork_timeout_s = false\n", "dicom.network_timeout_s", "number"),
        ("[mqtt]\nhost = 1\n", "mqtt.host", "string"),
        ('[dicom]\nallowed_calling_aets = "CT01"\n', "dicom.allowed_calling_aets", "list of strings"),
        ("[dicom]\nallowed_calling_aets = [1]\n", "dicom.allowed_calling_aets", "list of strings"),
        ("mqtt = 1\n", "mqtt", "table"),
    ],
)
def test_load_edge_raises_config_error_naming_the_key_when_a_value_has_the_wrong_type(
    tmp_path: Path, extra: str, dotted: str, type_name: str
) -> None:
    message, path = edge_error(tmp_path, extra + MINIMAL_EDGE)
    assert str(path) in message
    assert f"'{dotted}'" in message
    assert type_name in message


def test_load_edge_raises_config_error_naming_the_key_when_a_required_key_is_missing(tmp_path: Path) -> None:
    message, path = edge_error(tmp_path, '[box]\nid = "box-01"\n')
    assert str(path) in message
    assert "missing required key 'box.cloud_public_key'" in message


def test_load_edge_raises_config_error_naming_the_table_when_box_is_missing(tmp_path: Path) -> None:
    message, _ = edge_error(tmp_path, '[mqtt]\nhost = "broker"\n')
    assert "missing table [box]" in message


def test_load_edge_raises_config_error_when_the_file_is_empty(tmp_path: Path) -> None:
    message, _ = edge_error(tmp_path, "")
    assert "[box]" in message


# --- values that parse but are invalid ----------------------------------------------------


@pytest.mark.parametrize("box_id", ["", "Box-01", "box_01", "-box", "box 01", "b" * 64, "bøx"])
def test_load_edge_raises_config_error_naming_box_id_when_it_is_invalid(tmp_path: Path, box_id: str) -> None:
    message, _ = edge_error(tmp_path, f'[box]\nid = "{box_id}"\ncloud_public_key = "{CLOUD_KEY}"\n')
    assert "'box.id'" in message


@pytest.mark.parametrize("box_id", ["b", "box-01", "0", "b" * 63])
def test_load_edge_accepts_box_id_when_it_is_lowercase_letters_digits_and_dashes(tmp_path: Path, box_id: str) -> None:
    text = f'[box]\nid = "{box_id}"\ncloud_public_key = "{CLOUD_KEY}"\n'
    assert load_edge([write(tmp_path, "gateway.toml", text)]).box.id == box_id


@pytest.mark.parametrize(
    "key",
    [
        "not base64!!",
        "",
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        CLOUD_KEY[:-1],
        CLOUD_KEY + "\\n",
        "ÄÖÜ" * 15,
        base64.urlsafe_b64encode(b"\xff" * 32).decode(),
    ],
)
def test_load_edge_raises_config_error_naming_the_key_when_the_cloud_public_key_is_bad_base64(
    tmp_path: Path, key: str
) -> None:
    message, _ = edge_error(tmp_path, f'[box]\nid = "box-01"\ncloud_public_key = "{key}"\n')
    assert "'box.cloud_public_key'" in message
    assert "base64 of 32 bytes" in message


@pytest.mark.parametrize(
    "extra, needle",
    [
        ('[dicom]\nae_title = ""\n', "dicom.ae_title"),
        ('[dicom]\nae_title = "SEVENTEEN_CHARS__"\n', "dicom.ae_title"),
        ('[dicom]\nae_title = "BACK\\\\SLASH"\n', "dicom.ae_title"),
        ('[dicom]\nallowed_calling_aets = ["OK", ""]\n', "dicom.allowed_calling_aets"),
        ("[spool]\nlow_water_percent = 95.0\nhigh_water_percent = 90.0\n", "spool.low_water_percent"),
        ("[spool]\nhigh_water_percent = 101\n", "spool.high_water_percent"),
        ("[uplink]\nwindow_chunks = 0\n", "uplink.window_chunks"),
        (f"[uplink]\nmax_frame_bytes = {MIN_FRAME_BYTES - 1}\n", "uplink.max_frame_bytes"),
        (f"[uplink]\nmax_frame_bytes = {MAX_FRAME_BYTES + 1}\n", "uplink.max_frame_bytes"),
        ('[worklist]\nstation_filter = "modality"\n', "worklist.station_filter"),
        ("[worklist]\nmax_results = 0\n", "worklist.max_results"),
        ("[worklist]\nkeep_hours = 0.0\n", "worklist.keep_hours"),
    ],
)
def test_load_edge_raises_config_error_naming_the_key_when_a_value_is_out_of_range(
    tmp_path: Path, extra: str, needle: str
) -> None:
    message, path = edge_error(tmp_path, MINIMAL_EDGE + extra)
    assert str(path) in message
    assert needle in message


# --- files ---------------------------------------------------------------------------------


def test_load_edge_raises_config_error_naming_the_file_when_it_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_edge([missing])
    assert str(missing) in str(info.value)


def test_load_edge_raises_config_error_naming_the_file_when_it_is_not_toml(tmp_path: Path) -> None:
    message, path = edge_error(tmp_path, "[box\nid = ")
    assert str(path) in message and "not valid TOML" in message


def test_load_edge_lets_the_second_file_override_the_first_table_by_table_when_given_two(tmp_path: Path) -> None:
    site = write(tmp_path, "gateway.toml", """
[dicom]
ae_title = "SITE_AE"
port = 104
[mqtt]
host = "site-broker"
port = 8883
keepalive_s = 10
[spool]
retention_hours = 24.0
""")
    device = write(tmp_path, "device.toml", MINIMAL_EDGE + """
[dicom]
ae_title = "DEVICE_AE"
[mqtt]
host = "device-broker"
""")
    settings = load_edge([site, device])
    assert settings.box.id == "box-01"  # only in the second file
    assert settings.dicom.ae_title == "DEVICE_AE"  # the second file wins a key both set
    assert settings.dicom.port == 104  # a key only the first file set survives in an overridden table
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.keepalive_s) == ("device-broker", 8883, 10)
    assert settings.spool.retention_hours == 24.0  # a table only the first file has
    # and the order matters: the other way round, the site's values win
    assert load_edge([device, site]).mqtt.host == "site-broker"


def test_load_edge_raises_config_error_naming_the_second_file_when_its_key_is_unknown(tmp_path: Path) -> None:
    site = write(tmp_path, "gateway.toml", MINIMAL_EDGE)
    device = write(tmp_path, "device.toml", '[mqtt]\nhots = "x"\n')
    with pytest.raises(ConfigError, match="unknown key 'mqtt.hots'") as info:
        load_edge([site, device])
    assert str(device) in str(info.value)


def test_load_edge_raises_config_error_when_the_second_file_is_missing(tmp_path: Path) -> None:
    site = write(tmp_path, "gateway.toml", MINIMAL_EDGE)
    with pytest.raises(ConfigError, match="device.toml: file not found"):
        load_edge([site, tmp_path / "device.toml"])


# --- cloud ---------------------------------------------------------------------------------


def test_load_cloud_returns_all_defaults_when_the_file_is_empty(tmp_path: Path) -> None:
    settings = load_cloud([write(tmp_path, "cloud.toml", "")])
    assert isinstance(settings, CloudSettings)
    assert settings.mqtt == MqttSettings()
    assert settings.ingest == IngestSettings()
    assert settings.cloud.envelope_key_file == "keys/envelope.key"


def test_load_cloud_raises_config_error_naming_the_key_when_a_key_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, "cloud.toml", "[ingest]\nmax_object_byte = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'ingest.max_object_byte'") as info:
        load_cloud([path])
    assert str(path) in str(info.value)


def test_load_cloud_raises_config_error_when_given_an_edge_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'box'"):
        load_cloud([write(tmp_path, "cloud.toml", MINIMAL_EDGE)])


# --- the error tree and the key catalogue -------------------------------------------------


def test_config_error_is_a_local_error_when_raised() -> None:
    assert issubclass(ConfigError, LocalError)


@pytest.mark.parametrize("cls", [EdgeSettings, CloudSettings])
def test_iter_keys_lists_every_leaf_key_with_help_when_walking_a_settings_tree(cls: type) -> None:
    keys = iter_keys(cls)
    names = [name for name, _, _ in keys]
    assert len(names) == len(set(names)) > 5
    assert all(help_text for _, _, help_text in keys), "every key needs help text"
    assert all("." in name for name in names)


def test_config_is_refused_when_topic_prefix_makes_topics_deeper_than_the_broker_allows(tmp_path: Path) -> None:
    from gateway.config import load_cloud

    conf = tmp_path / "cloud.toml"
    conf.write_text('[mqtt]\ntopic_prefix = "a/b/c/d/e/f"\nmax_topic_levels = 8\n')
    with pytest.raises(ConfigError, match="9-level topics"):
        load_cloud([conf])
    conf.write_text('[mqtt]\ntopic_prefix = "a/b/c/d/e"\nmax_topic_levels = 8\n')
    assert load_cloud([conf]).mqtt.topic_prefix == "a/b/c/d/e"


SITES = """
[fleet]
time_zone = "Asia/Shanghai"
weekly_hours = ["mon-fri 08:00-18:00"]
turnaround_target_s = 1200

[fleet.sites.clinic-ny]
time_zone = "America/New_York"
weekly_hours = ["mon-fri 07:00-19:00", "sat 08:00-12:00"]
turnaround_target_s = 600

[fleet.sites."clinic b"]
"""


def test_load_cloud_reads_each_site_with_the_fleet_as_default_when_sites_are_configured(tmp_path: Path) -> None:
    from gateway.config import site_hours, turnaround_target_s

    fleet = load_cloud([write(tmp_path, "cloud.toml", SITES)]).fleet
    assert set(fleet.sites) == {"clinic-ny", "clinic b"}
    ny, b, unknown = site_hours(fleet, "clinic-ny"), site_hours(fleet, "clinic b"), site_hours(fleet, "elsewhere")
    assert ny.days[0] == (7 * 3600, 19 * 3600) and ny.days[5] == (8 * 3600, 12 * 3600) and ny.days[6] is None
    assert b.days == unknown.days and b.days[5] is None  # the fleet's hours
    assert b.zone.utc_offset_s(0) == 8 * 3600 and ny.zone.utc_offset_s(0) == -5 * 3600
    assert (turnaround_target_s(fleet, "clinic-ny"), turnaround_target_s(fleet, "clinic b")) == (600, 1200)


def test_fixed_utc_offset_still_applies_when_no_time_zone_is_set(tmp_path: Path) -> None:
    from gateway.config import site_hours

    fleet = load_cloud([write(tmp_path, "cloud.toml", "[fleet]\nutc_offset_minutes = 480\n")]).fleet
    assert site_hours(fleet, "any").zone.utc_offset_s(0) == 8 * 3600


@pytest.mark.parametrize(("text", "reason"), [
    ('[fleet.sites.a]\ntime_zone = "Mars/Base"\n', "'fleet.sites.a': unknown time zone 'Mars/Base'"),
    ('[fleet.sites.a]\nweekly_hours = ["mon-fri 8-18"]\n', "'fleet.sites.a': opening hours must look like"),
    ('[fleet.sites.a]\nweekly_hours = ["mon 08:00-12:00", "mon 13:00-17:00"]\n', "mon is given twice"),
    ('[fleet.sites.a]\nopening = "08:00-18:00"\n', "unknown key 'fleet.sites.a.opening'"),
    ('[fleet]\nsites = 3\n', "'fleet.sites' must hold tables"),
    ('[fleet]\ntime_zone = "Nowhere"\n', "'fleet.time_zone'"),
    ('[fleet]\nturnaround_target_s = 0\n', "'fleet.turnaround_target_s' must be positive"),
    ('[fleet]\nlease_s = 1.0\n', "'fleet.lease_s' must be 3 to 3600 seconds"),
])
def test_load_cloud_refuses_a_site_with_its_reason_when_its_zone_or_hours_are_wrong(tmp_path: Path, text: str,
                                                                                    reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        load_cloud([write(tmp_path, "cloud.toml", text)])


@pytest.mark.parametrize(("text", "reason"), [
    ('[fleet.worklist]\nmwl_called_ae = "A\\\\B"\n', "'fleet.worklist.mwl_called_ae' must be 1-16 printable"),
    ('[fleet.worklist]\nhl7_port = 70000\n', "'fleet.worklist.hl7_port' is -1 to 65535"),
    ('[fleet.worklist]\nhl7_allowed_peers = ["ris.example"]\n', "'ris.example' is not an address or network"),
    ('[fleet.worklist]\npoll_s = 0\n', "'fleet.worklist.poll_s' must be a finite number of at least 0.5"),
    ('[fleet.worklist]\ndays_ahead = 400\n', "'days_ahead' 0 to 366"),
    ('[fleet.worklist]\nris_hl7_port = 0\n', "'fleet.worklist.ris_hl7_port' must be a TCP port"),
    ('[fleet.worklist]\nmllp = 1\n', "unknown key 'fleet.worklist.mllp'"),
])
def test_load_cloud_refuses_the_worklist_feed_with_its_reason_when_a_key_is_wrong(tmp_path: Path, text: str,
                                                                                  reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        load_cloud([write(tmp_path, "cloud.toml", text)])


def test_worklist_feed_settings_load_typed_when_the_table_is_well_formed(tmp_path: Path) -> None:
    w = load_cloud([write(tmp_path, "cloud.toml", '[fleet.worklist]\nenabled = true\nmwl_host = "10.0.0.5"\n'
                          'hl7_port = 2575\nhl7_allowed_peers = ["10.0.0.0/24"]\n')]).fleet.worklist
    assert (w.enabled, w.mwl_host, w.hl7_port, w.hl7_allowed_peers, w.days_ahead) == (
        True, "10.0.0.5", 2575, ("10.0.0.0/24",), 7)


# --- the listener's address and the image's links (issue 17) -------------------------------


def test_dicom_listener_binds_loopback_when_nothing_names_its_address(tmp_path: Path) -> None:
    assert load_edge([write(tmp_path, "gateway.toml", MINIMAL_EDGE)]).dicom.bind_host == "127.0.0.1"


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", ""])  # noqa: S104 - the refused wildcards
def test_load_edge_refuses_every_interface_when_allow_any_address_is_not_set(tmp_path: Path, bind: str) -> None:
    message, _ = edge_error(tmp_path, MINIMAL_EDGE + f'[dicom]\nbind_host = "{bind}"\n')
    assert "'dicom.bind_host'" in message and "allow_any_address" in message
    allowed = write(tmp_path, "lab.toml", MINIMAL_EDGE + f'[dicom]\nbind_host = "{bind}"\nallow_any_address = true\n')
    assert load_edge([allowed]).dicom.bind_host == bind


def test_doctor_refuses_every_interface_when_allow_any_address_is_not_set(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, "gateway.toml", MINIMAL_EDGE + '[dicom]\nbind_host = "0.0.0.0"\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "doctor", "--config", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "allow_any_address" in out.stderr  # a configuration error (cli.md)


@pytest.mark.parametrize("entry", ["usb0", "*", "en*"])
def test_load_edge_refuses_a_network_pattern_when_it_could_match_a_usb_link(tmp_path: Path, entry: str) -> None:
    message, path = edge_error(tmp_path, MINIMAL_EDGE + f'[network]\nuplink_interfaces = ["{entry}"]\n')
    assert str(path) in message and "network.uplink_interfaces" in message
