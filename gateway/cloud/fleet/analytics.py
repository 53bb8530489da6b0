"""Utilisation, idle capacity and turnaround documents for the API, from the fleet store and
core.utilisation. Each site's time zone and opening hours are its ``[fleet.sites.<site>]`` table's,
the fleet's where it has none (``config.site_hours``); ``now`` is passed in."""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from gateway.cloud.fleet.store import FleetStore
from gateway.config import FleetSettings, site_hours, turnaround_target_s
from gateway.core.exam import ExamStatus
from gateway.core.utilisation import (
    DAY_S,
    WEEKDAYS,
    ExamSpan,
    OpeningHours,
    by_day,
    capacity,
    day_figures,
    percentile,
    week_of,
)


def opening_hours(settings: FleetSettings, site: str = "") -> OpeningHours:
    """The opening hours of ``site`` (the fleet's own for an unknown or empty site)."""
    return site_hours(settings, site)


def _iso_day(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def _span(row: dict[str, Any]) -> ExamSpan:
    return ExamSpan(row["start"], row["end"], row["images"], row["status"] != ExamStatus.DISCONTINUED.value)


def _rules(settings: FleetSettings, site: str, hours: OpeningHours) -> dict[str, Any]:
    rules = settings.sites.get(site)
    zone = (rules.time_zone if rules else "") or settings.time_zone
    return {"site": site, "time_zone": zone or f"UTC{settings.utc_offset_minutes / 60:+g}",
            "weekly_hours": {WEEKDAYS[d]: None if w is None else [w[0], w[1]] for d, w in enumerate(hours.days)}}


def _box_site(store: FleetStore, box_id: str, rows: list[dict[str, Any]]) -> str:
    """A box's site: its latest exam's, else the registry's (from its birth message), else none."""
    if rows:
        return str(rows[-1]["site"])
    return next((b.site for b in store.load_boxes() if b.box_id == box_id), "")


def _day_doc(day: int, spans: list[ExamSpan], hours: OpeningHours, settings: FleetSettings,
             now: float) -> dict[str, Any]:
    f = day_figures(day, spans, hours, min_exam_s=settings.min_exam_s,
                    change_max_s=settings.patient_change_max_s, now=now)
    window = hours.window(day)
    return {
        "day": _iso_day(day), "open": window is not None, "exams": f.exams,
        "exams_outside_hours": f.exams_outside_hours, "images": f.images,
        "scheduled_hours": round(f.scheduled_s / 3600, 2), "open_hours": round(f.open_s / 3600, 2),
        "occupied_hours": round(f.occupied_s / 3600, 3), "occupancy": round(f.occupancy, 4),
        "outside_hours_busy_hours": round(f.outside_s / 3600, 3), "exams_per_hour": round(f.exams_per_hour, 3),
        "patient_change_median_s": None if f.patient_change_s is None else round(f.patient_change_s, 1),
        "idle_hours": round(f.idle_total_s / 3600, 3), "idle_gaps": len(f.idle_s),
        "longest_idle_min": round(max(f.idle_s, default=0.0) / 60, 1),
        "window": None if window is None else [window[0], window[1]],
        "busy": [[round(s, 1), round(e, 1)] for s, e in f.busy],
        "exam_spans": [{"start": e.start, "end": e.end, "images": e.images, "counted": e.counted,
                        "in_hours": hours.in_hours(e.start)} for e in spans],
    }


def utilisation(store: FleetStore, settings: FleetSettings, box_id: str, modality: str, days: int,
                now: float) -> dict[str, Any]:
    """Per local day of the box's site over the ``days`` ending today (or with a later exam): the
    figures of docs/utilisation.md over the opening time passed by ``now``, each exam flagged in
    or outside opening hours, and the busy timeline of each day."""
    rows = store.exams(box_id=box_id, modality=modality, since=now - 400 * DAY_S, until=now + DAY_S)
    site = _box_site(store, box_id, rows)
    hours = opening_hours(settings, site)
    last_day = max(hours.local_day(max([e["start"] for e in rows], default=now)), hours.local_day(now))
    first_day = last_day - days + 1
    rows = [e for e in rows if hours.local_day(e["start"]) >= first_day]
    grouped = by_day([_span(e) for e in rows], hours)
    sources: dict[str, int] = defaultdict(int)
    for e in rows:
        sources[e["source"]] += 1
    return {"box_id": box_id, "modality": modality, "opening_hours": settings.opening_hours,
            "utc_offset_minutes": settings.utc_offset_minutes, **_rules(settings, site, hours),
            "days": [_day_doc(day, grouped.get(day, []), hours, settings, now)
                     for day in range(first_day, last_day + 1)],
            "sources": dict(sources)}


def idle_capacity(store: FleetStore, settings: FleetSettings, now: float) -> dict[str, Any]:
    """Which scanners (box and modality) have free opening hours this week, each in its site's
    local week: opening time passed and how much of it the table was free, and opening time still
    to come; summed per modality and per site, scanners with the most free time first."""
    rows = store.exam_spans(since=now - 8 * DAY_S, until=now + 8 * DAY_S)
    spans: dict[tuple[str, str, str], list[ExamSpan]] = defaultdict(list)
    for r in rows:
        spans[(r["site"], r["box_id"], r["modality"])].append(_span(r))
    for m in store.modalities():
        spans.setdefault((m["site"], m["box_id"], m["modality"]), [])
    scanners: list[dict[str, Any]] = []
    for (site, box_id, modality), exams in spans.items():
        hours = opening_hours(settings, site)
        lo, hi = week_of(now, hours)
        c = capacity(exams, hours, lo, hi, now, min_exam_s=settings.min_exam_s)
        scanners.append({"site": site, "box_id": box_id, "modality": modality, "week": [lo, hi],
                         "open_hours": _h(c.open_s), "busy_hours": _h(c.busy_s),
                         "free_passed_hours": _h(c.open_s - c.busy_s), "remaining_hours": _h(c.remaining_s),
                         "free_hours": _h(c.free_s)})
    scanners.sort(key=lambda s: (-s["free_hours"], s["site"], s["box_id"], s["modality"]))
    return {"now": now, "scanners": scanners, "by_modality": _totals(scanners, "modality"),
            "by_site": _totals(scanners, "site")}


def _h(seconds: float) -> float:
    return round(seconds / 3600, 2)


def _totals(scanners: Iterable[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in scanners:
        t = out.setdefault(s[key], {"scanners": 0, "free_hours": 0.0, "free_passed_hours": 0.0, "open_hours": 0.0})
        t["scanners"] += 1
        for figure in ("free_hours", "free_passed_hours", "open_hours"):
            t[figure] = round(t[figure] + s[figure], 2)
    return dict(sorted(out.items()))


def _figures(values: list[float], target_s: float) -> dict[str, Any]:
    p95 = percentile(values, 95) or 0.0
    return {"studies": len(values), "p50_s": round(percentile(values, 50) or 0.0, 2), "p95_s": round(p95, 2),
            "max_s": round(max(values), 2), "target_s": target_s, "over_target": p95 > target_s}


def turnaround(store: FleetStore, since: float, settings: FleetSettings | None = None) -> list[dict[str, Any]]:
    """p50/p95 of (cloud stored - last image received) per site, seconds; with ``settings``, against
    each site's target (``over_target`` when p95 is above it)."""
    by_site: dict[str, list[float]] = defaultdict(list)
    for site, seconds in store.turnarounds(since):
        by_site[site].append(seconds)
    out = []
    for site, v in sorted(by_site.items()):
        doc = {"site": site, **_figures(v, turnaround_target_s(settings, site) if settings else 0.0)}
        if settings is None:
            del doc["target_s"], doc["over_target"]
        out.append(doc)
    return out


def turnaround_by_modality(store: FleetStore, settings: FleetSettings, since: float) -> dict[str, Any]:
    """p50/p95 of the study turnaround (last image received to durable in the cloud) per site and
    modality since ``since``, each against its site's target; those over target listed apart."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for site, modality, seconds in store.turnarounds_by_modality(since):
        groups[(site, modality)].append(seconds)
    rows = [{"site": site, "modality": modality, **_figures(v, turnaround_target_s(settings, site))}
            for (site, modality), v in sorted(groups.items())]
    return {"since": since, "target_s": settings.turnaround_target_s, "groups": rows,
            "over_target": [{"site": r["site"], "modality": r["modality"], "p95_s": r["p95_s"],
                             "target_s": r["target_s"]} for r in rows if r["over_target"]]}
