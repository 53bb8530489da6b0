"""core.alerts: severities, site outage grouping, silence matching, maintenance windows, acknowledgement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core import alerts
from gateway.core.alerts import Acknowledgement, Maintenance, Severity, Silence
from gateway.core.errors import AlertRequestError
from gateway.core.fleet import AlertKind, BoxState

NOW = 1_795_500_000.0


def box(box_id: str, site: str, online: bool, changed_at: float = NOW) -> BoxState:
    return BoxState(box_id, online, 1, NOW - 3600, changed_at, changed_at, {}, site, "1.0")


# a fleet: box i at site "s<k>", offline or not, gone offline some seconds after NOW
fleets = st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.floats(0, 1000)), max_size=30).map(
    lambda rows: [box(f"b{i}", f"s{site}" if site else "", online, NOW + t)
                  for i, (site, online, t) in enumerate(rows)])


def test_every_kind_has_a_severity_when_listed() -> None:
    assert set(alerts.SEVERITY) == set(AlertKind)
    assert alerts.SEVERITY[AlertKind.SITE_OFFLINE] is Severity.CRITICAL
    assert alerts.SEVERITY[AlertKind.MODALITY_SILENT] is Severity.INFO


@given(fleets, st.integers(1, 5), st.floats(0, 600))
def test_outage_holds_only_offline_boxes_of_its_own_site_whatever_the_fleet(
        boxes: list[BoxState], min_boxes: int, window: float) -> None:
    out = alerts.site_outages(boxes, {}, min_boxes, window)
    by_id = {b.box_id: b for b in boxes}
    for site, members in out.items():
        assert site and members
        assert all(not by_id[m].online and by_id[m].site == site for m in members)
        everyone = {b.box_id for b in boxes if b.site == site}
        assert len(members) >= min_boxes or (members == everyone and len(members) >= 2)
    assert alerts.site_outages(list(reversed(boxes)), {}, min_boxes, window) == out  # order does not matter


@given(fleets, st.integers(1, 5), st.floats(0, 600))
def test_outage_continues_while_any_of_its_boxes_is_offline_whatever_else_happens(
        boxes: list[BoxState], min_boxes: int, window: float) -> None:
    before = alerts.site_outages(boxes, {}, min_boxes, window)
    again = alerts.site_outages(boxes, before, min_boxes, window)
    for site, members in before.items():  # nothing changed: every outage goes on, holding at least its boxes
        assert members <= again[site]
    everyone_back = [BoxState(b.box_id, True, 2, b.first_seen, NOW + 2000, NOW + 2000, {}, b.site) for b in boxes]
    assert alerts.site_outages(everyone_back, before, min_boxes, window) == {}


@given(st.integers(3, 40), st.floats(0, 120))
def test_boxes_going_offline_within_the_window_are_one_outage_when_at_least_the_threshold(
        n: int, spread: float) -> None:
    boxes = [box(f"b{i:02}", "clinic", False, NOW + spread * i / n) for i in range(n)]
    boxes.append(box("up", "clinic", True))
    assert alerts.site_outages(boxes, {}, 3, 120.0) == {"clinic": frozenset(b.box_id for b in boxes[:-1])}


def test_too_few_boxes_offline_are_no_outage_unless_they_are_the_whole_site() -> None:
    two_of_three = [box("a", "s", False), box("b", "s", False), box("c", "s", True)]
    assert alerts.site_outages(two_of_three, {}, 3, 60) == {}
    assert alerts.site_outages(two_of_three[:2], {}, 3, 60) == {"s": frozenset({"a", "b"})}  # all of the site
    assert alerts.site_outages([box("a", "s", False)], {}, 3, 60) == {}  # one box is its own alert
    spread = [box("a", "s", False, NOW), box("b", "s", False, NOW + 100), box("c", "s", False, NOW + 200)]
    assert alerts.site_outages(spread, {}, 3, 60) == {}  # three failures, hours apart: not one outage
    assert alerts.site_outages([box("a", "", False), box("b", "", False)], {}, 1, 60) == {}  # no site: no group


def test_outage_detail_lists_the_boxes_when_there_are_many() -> None:
    assert alerts.outage_detail(frozenset({"b", "a"})) == "2 boxes offline: a, b"
    assert alerts.outage_detail(frozenset(f"b{i:03}" for i in range(200)), shown=2) == (
        "200 boxes offline: b000, b001 and 198 more")


def silence(box_id: str = "", site: str = "", kind: str = "", start: float = NOW, end: float = NOW + 60) -> Silence:
    return Silence(1, box_id, site, kind, start, end, "ops", "why", NOW)


alert_fields = st.tuples(st.sampled_from(["a", "b", ""]), st.sampled_from(["s", "t", ""]),
                         st.sampled_from([k.value for k in AlertKind]), st.floats(NOW - 100, NOW + 100))


@given(alert_fields, alert_fields)
def test_silence_matches_exactly_the_alerts_its_matchers_name_while_in_force(
        matcher: tuple[str, str, str, float], alert: tuple[str, str, str, float]) -> None:
    box_id, site, kind, _ = matcher
    s = silence(box_id, site, kind)
    a_box, a_site, a_kind, at = alert
    expected = (NOW <= at < NOW + 60 and box_id in ("", a_box) and site in ("", a_site) and kind in ("", a_kind))
    assert alerts.silence_matches(s, a_box, a_site, a_kind, at) == expected


def test_silence_is_refused_when_it_would_match_everything_or_is_malformed() -> None:
    with pytest.raises(AlertRequestError, match="must name"):
        alerts.check_silence(" ", "", "", NOW, NOW + 1, "ops", "why")
    with pytest.raises(AlertRequestError, match="unknown alert kind"):
        alerts.check_silence("", "", "box_gone", NOW, NOW + 1, "ops", "why")
    with pytest.raises(AlertRequestError, match="end after"):
        alerts.check_silence("a", "", "", NOW, NOW, "ops", "why")
    with pytest.raises(AlertRequestError, match="reason"):
        alerts.check_silence("a", "", "", NOW, NOW + 1, "ops", "")
    assert alerts.check_silence(" a ", "", "disk_full", NOW, NOW + 1, " ops ", "swap") == (
        "a", "", "disk_full", "ops", "swap")


def test_maintenance_suppresses_its_site_or_box_before_any_silence_when_in_force() -> None:
    site_work = Maintenance(4, "s", "", NOW, NOW + 60, "ops", "", NOW)
    box_work = Maintenance(5, "", "b", NOW, NOW + 60, "ops", "", NOW)
    hush = silence(site="s")
    assert alerts.suppression("a", "s", "box_offline", NOW, [hush], [site_work]) == "maintenance:4"
    assert alerts.suppression("", "s", "site_offline", NOW, [], [site_work]) == "maintenance:4"  # the site alert
    assert alerts.suppression("b", "t", "disk_full", NOW + 59, [], [site_work, box_work]) == "maintenance:5"
    assert alerts.suppression("a", "s", "box_offline", NOW + 60, [], [site_work]) == ""  # ended
    assert alerts.suppression("a", "s", "box_offline", NOW - 1, [hush], [site_work]) == ""  # not begun
    assert alerts.suppression("a", "s", "box_offline", NOW + 1, [hush], []) == "silence:1"
    assert alerts.suppression("a", "t", "box_offline", NOW + 1, [hush], [site_work]) == ""
    with pytest.raises(AlertRequestError):
        alerts.check_maintenance("", "", NOW, NOW + 1, "ops", "")


@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30))
def test_ack_reports_old_and_new_values_and_nothing_when_repeated(who: str, note: str, other: str) -> None:
    if not who.strip():
        with pytest.raises(AlertRequestError):
            alerts.ack(Acknowledgement(None, "", ""), who, note, NOW)
        return
    change = alerts.ack(Acknowledgement(None, "", ""), who, note, NOW)
    assert change == {"acked_at": (None, NOW), "acked_by": ("", who.strip()), "ack_note": ("", note.strip())}
    after = Acknowledgement(NOW, who.strip(), note.strip())
    assert alerts.ack(after, who, note, NOW + 5) == {}
    if other.strip() != note.strip():
        assert alerts.ack(after, who, other, NOW + 5)["ack_note"] == (note.strip(), other.strip())
