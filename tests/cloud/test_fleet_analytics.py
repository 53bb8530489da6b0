"""The utilisation, idle-capacity and turnaround documents (gateway/cloud/fleet/analytics.py) on a
real fleet store, SQLite and PostgreSQL: each site's time zone and opening hours, exams outside
hours flagged, idle time only for opening hours already passed, turnaround against its target."""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cloud.fleet import analytics
from gateway.cloud.fleet.store import FleetStore
from gateway.config import FleetSettings, SiteSettings
from gateway.core.fleet import BoxState
from tests.backends import Backend

NY, SH = zoneinfo.ZoneInfo("America/New_York"), zoneinfo.ZoneInfo("Asia/Shanghai")
SETTINGS = FleetSettings(time_zone="Asia/Shanghai", weekly_hours=("mon-sat 08:00-18:00",), turnaround_target_s=1200,
                         sites={"clinic-ny": SiteSettings(time_zone="America/New_York",
                                                          weekly_hours=("mon-fri 08:00-18:00",),
                                                          turnaround_target_s=600)})
HOUR = 3600.0


def local(zone: zoneinfo.ZoneInfo, day: int, hhmm: str) -> float:
    """Epoch seconds of ``hhmm`` on 2026-03-<day> in ``zone`` (clocks went forward in New York on the 8th)."""
    h, m = map(int, hhmm.split(":"))
    return datetime.datetime(2026, 3, day, h, m, tzinfo=zone).timestamp()


NOW = local(NY, 11, "12:00")  # Wednesday noon in New York; Thursday 00:00 in Shanghai


def exam(n: int, box_id: str, site: str, modality: str, start: float, minutes: float, *,
         turnaround_s: float | None = None) -> dict[str, Any]:
    end = start + minutes * 60
    return {"box_id": box_id, "study_key": f"{n:032x}", "revision": 1, "site": site, "modality": modality,
            "start": start, "end": end, "images": 10, "series": 1, "source": "header", "status": "completed",
            "first_received_at": start + 5, "last_received_at": end + 5,
            "cloud_stored_at": None if turnaround_s is None else end + 5 + turnaround_s}


@pytest.fixture
def store(tmp_path: Path, backend: Backend) -> Iterator[FleetStore]:
    s = backend.fleet_store(tmp_path)
    rows = [
        exam(1, "box-ny", "clinic-ny", "CT", local(NY, 11, "07:00"), 30, turnaround_s=100),  # before opening
        exam(2, "box-ny", "clinic-ny", "CT", local(NY, 11, "09:00"), 60, turnaround_s=700),
        exam(3, "box-ny", "clinic-ny", "CT", local(NY, 9, "10:00"), 120),  # Monday, the first day of EDT
        exam(4, "box-sh", "clinic-sh", "MR", local(SH, 10, "09:00"), 60, turnaround_s=300),
        exam(5, "box-sh", "clinic-sh", "MR", local(SH, 1, "09:00"), 60, turnaround_s=5000),  # last week
    ]
    for row in rows:
        assert s.upsert_exam(row)
    s.save_boxes([BoxState("box-idle", True, 1, 0.0, NOW, 0.0, {}, "clinic-ny", "1.0")])
    yield s
    s.close()


def test_utilisation_follows_the_site_zone_and_counts_only_passed_hours_when_the_day_is_running(
        store: FleetStore) -> None:
    doc = analytics.utilisation(store, SETTINGS, "box-ny", "CT", 3, NOW)
    assert (doc["site"], doc["time_zone"]) == ("clinic-ny", "America/New_York")
    assert doc["weekly_hours"]["sat"] is None and doc["weekly_hours"]["mon"] == [8 * 3600, 18 * 3600]
    monday, tuesday, today = doc["days"]
    assert [d["day"] for d in doc["days"]] == ["2026-03-09", "2026-03-10", "2026-03-11"]
    assert monday["window"] == [local(NY, 9, "08:00"), local(NY, 9, "18:00")]  # EDT, 12:00-22:00 UTC
    assert (monday["exams"], monday["occupied_hours"], monday["idle_hours"]) == (1, 2.0, 8.0)
    assert (tuesday["exams"], tuesday["idle_hours"], tuesday["open_hours"]) == (0, 10.0, 10.0)
    assert (today["scheduled_hours"], today["open_hours"]) == (10.0, 4.0)  # 08:00-12:00 passed
    assert (today["exams"], today["exams_outside_hours"], today["occupied_hours"]) == (1, 1, 1.0)
    assert today["idle_hours"] == 3.0 and today["occupancy"] == 0.25
    assert [(e["start"], e["in_hours"]) for e in today["exam_spans"]] == [
        (local(NY, 11, "07:00"), False), (local(NY, 11, "09:00"), True)]


def test_utilisation_of_a_box_without_exams_takes_its_site_from_the_registry_when_asked(
        store: FleetStore) -> None:
    doc = analytics.utilisation(store, SETTINGS, "box-idle", "CT", 1, NOW)
    assert doc["site"] == "clinic-ny" and doc["days"][0]["idle_hours"] == 4.0 and doc["sources"] == {}


def test_idle_capacity_lists_free_opening_hours_this_week_per_site_and_modality_when_asked(
        store: FleetStore) -> None:
    doc = analytics.idle_capacity(store, SETTINGS, NOW)
    scanners = {(s["site"], s["box_id"], s["modality"]): s for s in doc["scanners"]}
    ny = scanners[("clinic-ny", "box-ny", "CT")]
    assert ny["week"] == [local(NY, 9, "00:00"), local(NY, 16, "00:00")]
    # Mon + Tue + Wed morning passed; the 07:00 exam's 30 min lie before opening, not in them
    assert (ny["open_hours"], ny["busy_hours"], ny["remaining_hours"]) == (24.0, 3.0, 26.0)
    assert ny["free_hours"] == 24.0 - 3.0 + 26.0
    sh = scanners[("clinic-sh", "box-sh", "MR")]  # Shanghai is already on Thursday 00:00
    assert (sh["open_hours"], sh["busy_hours"], sh["remaining_hours"]) == (30.0, 1.0, 30.0)
    assert [s["box_id"] for s in doc["scanners"]] == ["box-sh", "box-ny"]  # most free time first
    assert doc["by_modality"]["MR"] == {"scanners": 1, "free_hours": 59.0, "free_passed_hours": 29.0,
                                        "open_hours": 30.0}
    assert set(doc["by_site"]) == {"clinic-ny", "clinic-sh"}


def test_turnaround_is_flagged_over_target_per_site_and_modality_when_p95_exceeds_it(store: FleetStore) -> None:
    doc = analytics.turnaround_by_modality(store, SETTINGS, since=local(SH, 5, "00:00"))
    groups = {(g["site"], g["modality"]): g for g in doc["groups"]}
    assert groups[("clinic-ny", "CT")] == {"site": "clinic-ny", "modality": "CT", "studies": 2, "p50_s": 100.0,
                                           "p95_s": 700.0, "max_s": 700.0, "target_s": 600, "over_target": True}
    assert groups[("clinic-sh", "MR")]["studies"] == 1  # last week's study is before ``since``
    assert groups[("clinic-sh", "MR")]["over_target"] is False and groups[("clinic-sh", "MR")]["target_s"] == 1200
    assert doc["over_target"] == [{"site": "clinic-ny", "modality": "CT", "p95_s": 700.0, "target_s": 600}]
    legacy = analytics.turnaround(store, local(SH, 5, "00:00"))  # the API's document, unchanged
    assert legacy[0] == {"site": "clinic-ny", "studies": 2, "p50_s": 100.0, "p95_s": 700.0, "max_s": 700.0}
    assert analytics.turnaround(store, local(SH, 5, "00:00"), SETTINGS)[0]["over_target"] is True
