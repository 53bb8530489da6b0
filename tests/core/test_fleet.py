"""core.fleet: birth/death sequencing (Sparkplug-style), time-outs and alert rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import fleet
from gateway.core.errors import FrameError
from gateway.core.fleet import AlertKind, AlertRules, MessageKind
from gateway.core.utilisation import OpeningHours

NOW = 1_795_500_000.0  # Tue 2026-11-24 ~07:20 UTC
RULES = AlertRules(offline_after_s=90, backlog_age_s=3600, disk_used_percent=85, cert_expiry_days=30,
                   silent_modality_s=4 * 3600, hours=OpeningHours.parse("00:00-24:00", range(1, 8), 0))


def msg(kind: MessageKind, seq: int, **body: object) -> fleet.Telemetry:
    return fleet.decode(kind, "box-1", fleet.encode(kind, "box-1", seq, **body))


def test_stale_death_is_ignored_when_a_newer_birth_was_seen() -> None:
    s = fleet.apply(None, msg(MessageKind.BIRTH, 4, version="1", site="s"), NOW)
    s = fleet.apply(s, msg(MessageKind.BIRTH, 5), NOW + 1)
    assert s is not None and s.online and s.bd_seq == 5
    after_stale = fleet.apply(s, msg(MessageKind.DEATH, 4), NOW + 2)
    assert after_stale is s
    dead = fleet.apply(s, msg(MessageKind.DEATH, 5), NOW + 3)
    assert dead is not None and not dead.online and dead.changed_at == NOW + 3


def test_heartbeat_brings_a_box_online_when_its_birth_was_missed() -> None:
    s = fleet.apply(None, msg(MessageKind.HEARTBEAT, 7, at=NOW), NOW)
    assert s is not None and s.online and s.health["at"] == NOW
    assert fleet.apply(None, msg(MessageKind.DEATH, 1), NOW) is None


def test_box_times_out_when_silent_longer_than_the_limit() -> None:
    s = fleet.apply(None, msg(MessageKind.BIRTH, 1), NOW)
    assert s is not None
    assert fleet.timed_out(s, NOW + 90, 90) is s
    assert not fleet.timed_out(s, NOW + 91, 90).online


def test_every_rule_fires_when_its_threshold_is_crossed() -> None:
    body = {"backlog": {"oldest_unacked_age_s": 7200}, "disk": {"used_percent": 91.0}, "cert_not_after": NOW + 86400,
            "quarantine_items": 2, "last_study": {"CT": NOW - 5 * 3600, "MR": NOW - 600, "bad key": 1}}
    s = fleet.apply(fleet.apply(None, msg(MessageKind.BIRTH, 1), NOW - 86400), msg(MessageKind.HEARTBEAT, 1, **body),
                    NOW)
    assert s is not None
    active = fleet.evaluate(s, RULES, NOW)
    assert set(active) == {(AlertKind.BACKLOG_AGE, ""), (AlertKind.DISK_FULL, ""), (AlertKind.CERT_EXPIRY, ""),
                           (AlertKind.QUARANTINE_NOT_EMPTY, ""), (AlertKind.MODALITY_SILENT, "CT")}
    offline = fleet.timed_out(s, NOW + 100, 90)
    assert set(fleet.evaluate(offline, RULES, NOW + 100)) == {(AlertKind.BOX_OFFLINE, "")}


def test_healthy_box_has_no_alert_when_figures_are_normal() -> None:
    body = {"backlog": {"oldest_unacked_age_s": None}, "disk": {"used_percent": 40.0},
            "cert_not_after": NOW + 90 * 86400, "quarantine_items": 0, "last_study": {"CT": NOW - 60}}
    s = fleet.apply(None, msg(MessageKind.HEARTBEAT, 1, **body), NOW)
    assert s is not None and fleet.evaluate(s, RULES, NOW) == {}


def test_modality_is_silent_by_its_own_sites_hours_when_the_site_has_them() -> None:
    """NOW is Tuesday 07:20 UTC: a site open all week has been open 5 h since the last CT; a site
    open only at weekends has had no opening hour since, so its scanner is not silent."""
    weekends = OpeningHours.parse("00:00-24:00", (6, 7), 0)
    rules = AlertRules(**{**RULES.__dict__, "site_hours": {"weekend-clinic": weekends}})
    body = {"last_study": {"CT": NOW - 5 * 3600}}
    for site, silent in (("weekend-clinic", False), ("other-site", True)):
        born = fleet.apply(None, msg(MessageKind.BIRTH, 1, site=site), NOW - 86400)
        s = fleet.apply(born, msg(MessageKind.HEARTBEAT, 1, **body), NOW)
        assert s is not None and s.site == site
        assert ((AlertKind.MODALITY_SILENT, "CT") in fleet.evaluate(s, rules, NOW)) is silent, site


def test_decode_refuses_when_box_or_sequence_is_wrong() -> None:
    with pytest.raises(FrameError):
        fleet.decode(MessageKind.BIRTH, "box-2", fleet.encode(MessageKind.BIRTH, "box-1", 1))
    with pytest.raises(FrameError):
        fleet.decode(MessageKind.BIRTH, "box-1", b'{"v":1,"box_id":"box-1","bd_seq":-1}')


def test_decode_refuses_when_a_field_cannot_be_stored_by_either_backend() -> None:
    with pytest.raises(FrameError, match="bd_seq"):
        fleet.decode(MessageKind.BIRTH, "box-1", fleet.encode(MessageKind.BIRTH, "box-1", 2**63))
    with pytest.raises(FrameError, match="site"):
        fleet.decode(MessageKind.BIRTH, "box-1", fleet.encode(MessageKind.BIRTH, "box-1", 1, site="a\x00b"))
    assert fleet.decode(MessageKind.BIRTH, "box-1", fleet.encode(MessageKind.BIRTH, "box-1", 2**63 - 1)).bd_seq


@given(st.binary(max_size=200))
def test_decode_raises_only_frame_error_when_payload_is_arbitrary(payload: bytes) -> None:
    try:
        fleet.decode(MessageKind.HEARTBEAT, "box-1", payload)
    except FrameError:
        pass
