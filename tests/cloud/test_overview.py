"""The console overview's rules (gateway/cloud/fleet/overview.py), over a registry built in memory:
filters, problems-first order, paging, deltas by revision, site scoping, grouped alerts."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.cloud.fleet import box_page, overview
from gateway.cloud.fleet.http import Query
from gateway.cloud.fleet.overview import BoxQuery, Overview, Source
from gateway.cloud.fleet.store import Alert, AlertState
from gateway.config import FleetSettings, SiteSettings
from gateway.core.alerts import SEVERITY
from gateway.core.errors import RequestError
from gateway.core.fleet import AlertKind, BoxState

NOW = 1_800_000_000.0
FLEET = FleetSettings(sites={"north-1": SiteSettings(region="North", time_zone="Asia/Shanghai"),
                             "west-1": SiteSettings(region="West", time_zone="Asia/Urumqi")})


def box(box_id: str, site: str, online: bool = True, disk: float = 40.0, age_s: float | None = None,
        version: str = "2.0", modality: str = "CT") -> BoxState:
    health = {"disk": {"used_percent": disk}, "backlog": {"items": 3 if age_s else 0, "oldest_unacked_age_s": age_s},
              "cert_not_after": NOW + 90 * 86400, "last_study": {modality: NOW - 60}}
    return BoxState(box_id, online, 1, NOW - 86400, NOW - 5, NOW - 3600, health, site, version)


def alert(alert_id: int, box_id: str, site: str, kind: AlertKind, **more: Any) -> Alert:
    return Alert(alert_id, box_id, kind, "", "detail", NOW - 100, None, SEVERITY[kind], site, NOW - 10, **more)


class Fleet:
    """A registry and open alerts the test changes, as the fleet service would."""

    def __init__(self) -> None:
        self.boxes = {b.box_id: b for b in [
            box("n-01", "north-1"), box("n-02", "north-1", online=False), box("n-03", "north-1", disk=97.0),
            box("w-01", "west-1", age_s=7200.0, version="1.9", modality="MR"), box("w-02", "west-1")]}
        self.alerts = [alert(1, "n-03", "north-1", AlertKind.DISK_FULL),
                       alert(2, "n-02", "north-1", AlertKind.BOX_OFFLINE),
                       alert(3, "w-01", "west-1", AlertKind.BACKLOG_AGE)]
        self.listed: list[Alert] = []
        self.overview = Overview(Source(lambda: FLEET, lambda: list(self.boxes.values()), lambda: list(self.alerts),
                                        lambda **kw: list(self.listed), lambda: []),
                                 clock=itertools.count(NOW, 2.0).__next__)  # past the rows cache each call

    def ids(self, visible: overview.Visible = overview.everything, **query: Any) -> list[str]:
        return list(self.overview.boxes(BoxQuery(**query), NOW, visible)["ids"])


def test_problems_come_first_when_no_order_is_asked() -> None:
    f = Fleet()
    assert f.ids() == ["n-02", "n-03", "w-01", "n-01", "w-02"]  # critical (offline first), warning, the rest
    assert f.ids(sort="box", order="desc") == ["w-02", "w-01", "n-03", "n-02", "n-01"]


@pytest.mark.parametrize(("query", "expected"), [
    ({"site": "west-1"}, ["w-01", "w-02"]),
    ({"region": "North"}, ["n-02", "n-03", "n-01"]),
    ({"modality": "MR"}, ["w-01"]),
    ({"version": "1.9"}, ["w-01"]),
    ({"status": "offline"}, ["n-02"]),
    ({"status": "degraded"}, ["n-03", "w-01"]),
    ({"status": "backlogged"}, ["w-01"]),
    ({"q": "n-0 disk"}, ["n-03"]),  # every word must occur: the id and the alert kind
    ({"q": "nobody"}, []),
])
def test_filter_keeps_only_matching_boxes_when_given(query: dict[str, Any], expected: list[str]) -> None:
    assert Fleet().ids(**query) == expected


def test_page_holds_limit_rows_from_offset_and_the_total_when_paged() -> None:
    doc = Fleet().overview.boxes(BoxQuery(sort="box", offset=1, limit=2), NOW, overview.everything)
    assert doc["ids"] == ["n-02", "n-03"] and doc["total"] == 5 and len(doc["rows"]) == 2


def test_delta_holds_only_changed_rows_when_since_is_the_last_revision() -> None:
    f = Fleet()
    first = f.overview.boxes(BoxQuery(), NOW, overview.everything)
    quiet = f.overview.boxes(BoxQuery(since=first["revision"]), NOW, overview.everything)
    assert quiet["delta"] and quiet["rows"] == [] and quiet["revision"] == first["revision"]
    f.boxes["n-01"] = box("n-01", "north-1", disk=55.0)
    f.boxes["w-02"] = BoxState(**{**f.boxes["w-02"].__dict__, "last_seen": NOW})  # a mere heartbeat
    changed = f.overview.boxes(BoxQuery(since=first["revision"]), NOW, overview.everything)
    assert [r["id"] for r in changed["rows"]] == ["n-01"] and changed["ids"] == first["ids"]
    foreign = f.overview.boxes(BoxQuery(since=1), NOW, overview.everything)  # not this process's revision
    assert not foreign["delta"] and len(foreign["rows"]) == 5


def test_etag_changes_only_when_a_row_or_the_query_or_the_scope_does() -> None:
    f = Fleet()
    rev = f.overview.boxes(BoxQuery(), NOW, overview.everything)["revision"]
    assert overview.etag(rev, "*", BoxQuery().key()) == overview.etag(rev, "*", BoxQuery(since=rev).key())
    assert overview.etag(rev, "*", BoxQuery().key()) != overview.etag(rev, "alice", BoxQuery().key())
    assert overview.etag(rev, "*", BoxQuery().key()) != overview.etag(rev + 1, "*", BoxQuery().key())


def test_other_sites_are_neither_listed_nor_counted_when_the_principal_sees_one_site() -> None:
    f = Fleet()
    west = {"west-1"}.__contains__
    assert f.ids(visible=west) == ["w-01", "w-02"]
    doc = f.overview.overview(NOW, west)
    assert doc["counts"]["total"] == 2 and set(doc["sites"]) == {"west-1"}
    assert [x["key"] for x in doc["facets"]["site"]] == ["west-1"]
    assert doc["sites"]["west-1"] == {"region": "West", "tz": "Asia/Urumqi"}


def test_counts_and_groups_sum_the_fleet_when_asked() -> None:
    f = Fleet()
    counts = f.overview.overview(NOW, overview.everything)["counts"]
    assert counts == {"total": 5, "online": 4, "offline": 1, "degraded": 2, "backlogged": 1, "cert_expiring": 0,
                      "alerting": 3}
    groups = f.overview.boxes(BoxQuery(group="site"), NOW, overview.everything)["groups"]
    assert [(g["key"], g["count"], g["offline"], g["sev"]) for g in groups] == [
        ("north-1", 3, 1, "critical"), ("west-1", 2, 0, "warning")]


def test_silenced_alerts_do_not_put_a_box_first_when_every_alert_of_it_is_suppressed() -> None:
    f = Fleet()
    f.alerts = [alert(1, "n-03", "north-1", AlertKind.DISK_FULL, suppressed_by="silence:1")]
    assert f.ids()[0] == "n-02"  # offline first; n-03's alert is silenced
    row = next(r for r in f.overview.boxes(BoxQuery(), NOW, overview.everything)["rows"] if r["id"] == "n-03")
    assert row["muted"] and row["alerts"] == ["disk_full"]


def test_site_outage_is_one_row_with_its_boxes_beneath_when_alerts_are_grouped() -> None:
    f = Fleet()
    children = (alert(5, "n-01", "north-1", AlertKind.BOX_OFFLINE, parent_id=4),
                alert(6, "n-02", "north-1", AlertKind.BOX_OFFLINE, parent_id=4))
    f.listed = [Alert(4, "", AlertKind.SITE_OFFLINE, "north-1", "2 boxes offline", NOW - 50, None,
                      SEVERITY[AlertKind.SITE_OFFLINE], "north-1", NOW, children=children),
                alert(3, "w-01", "west-1", AlertKind.BACKLOG_AGE, acked_at=NOW, acked_by="op", ack_note="on it")]
    doc = f.overview.alerts(AlertState.OPEN, None, None, 7.0, 100, NOW, overview.everything)
    assert [(a["id"], a["boxes"]) for a in doc["alerts"]] == [(4, 2), (3, 0)]
    assert doc["alerts"][1]["ack_note"] == "on it"
    assert overview.Overview.alerts(f.overview, AlertState.OPEN, None, None, 7.0, 100, NOW,
                                    {"west-1"}.__contains__)["alerts"][0]["id"] == 3


def test_bad_parameters_are_refused_when_a_listing_is_parsed() -> None:
    def parse(**values: str) -> BoxQuery:
        q = Query(values.items(), overview.BoxQuery.__dataclass_fields__)
        return overview.parse_box_query(q.values, q.choice, q.integer)

    assert parse(limit="500", sort="disk", status="offline").limit == 500
    for bad in ({"limit": "501"}, {"sort": "random"}, {"status": "lost"}, {"q": "a\x00b"}, {"since": "-1"},
                {"group": "patient"}):
        with pytest.raises(RequestError):
            parse(**bad)


def test_box_series_sum_exams_and_images_per_hour_when_a_day_of_exams_is_read() -> None:
    exams = [{"start": NOW - 3600 * k - 100, "images": 100, "cloud_stored_at": NOW - 3600 * k,
              "last_received_at": NOW - 3600 * k - 30} for k in range(3)]
    series = box_page.box_series([], exams, NOW)
    assert sum(v for _, v in series["exams_per_hour"]) == 3
    assert sum(v for _, v in series["images_delivered_per_hour"]) == 300
    assert [v for _, v in series["turnaround_s"]] == [30.0, 30.0, 30.0]
