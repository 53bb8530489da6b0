"""Utilisation and turnaround documents for the API, from the fleet store and core.utilisation."""

from __future__ import annotations

import datetime
from collections import defaultdict
from typing import Any

from gateway.cloud.fleet.store import FleetStore
from gateway.config import FleetSettings
from gateway.core.exam import ExamStatus
from gateway.core.utilisation import DAY_S, ExamSpan, OpeningHours, by_day, day_figures, percentile


def opening_hours(settings: FleetSettings) -> OpeningHours:
    return OpeningHours.parse(settings.opening_hours, settings.open_weekdays, settings.utc_offset_minutes)


def _iso_day(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def utilisation(store: FleetStore, settings: FleetSettings, box_id: str, modality: str, days: int,
                now: float) -> dict[str, Any]:
    """Per local day over the ``days`` ending with the latest exam (or today): the figures of
    docs/utilisation.md, and the busy timeline of each day."""
    hours = opening_hours(settings)
    latest = store.exams(box_id=box_id, modality=modality, since=now - 400 * DAY_S, until=now + DAY_S)
    last_day = hours.local_day(max([e["start"] for e in latest], default=now))
    first_day = last_day - days + 1
    rows = [e for e in latest if hours.local_day(e["start"]) >= first_day]
    spans = [ExamSpan(e["start"], e["end"], e["images"], e["status"] != ExamStatus.DISCONTINUED.value)
             for e in rows]
    grouped = by_day(spans, hours)
    out = []
    for day in range(first_day, last_day + 1):
        f = day_figures(day, grouped.get(day, []), hours, min_exam_s=settings.min_exam_s,
                        change_max_s=settings.patient_change_max_s)
        window = hours.window(day)
        out.append({
            "day": _iso_day(day), "open": window is not None, "exams": f.exams,
            "exams_outside_hours": f.exams_outside_hours, "images": f.images, "open_hours": round(f.open_s / 3600, 2),
            "occupied_hours": round(f.occupied_s / 3600, 3), "occupancy": round(f.occupancy, 4),
            "exams_per_hour": round(f.exams_per_hour, 3),
            "patient_change_median_s": None if f.patient_change_s is None else round(f.patient_change_s, 1),
            "idle_hours": round(f.idle_total_s / 3600, 3), "idle_gaps": len(f.idle_s),
            "longest_idle_min": round(max(f.idle_s, default=0.0) / 60, 1),
            "window": None if window is None else [window[0], window[1]],
            "busy": [[round(s, 1), round(e, 1)] for s, e in f.busy],
        })
    sources: dict[str, int] = defaultdict(int)
    for e in rows:
        sources[e["source"]] += 1
    return {"box_id": box_id, "modality": modality, "opening_hours": settings.opening_hours,
            "utc_offset_minutes": settings.utc_offset_minutes, "days": out, "sources": dict(sources)}


def turnaround(store: FleetStore, since: float) -> list[dict[str, Any]]:
    """p50/p95 of (cloud stored - last image received) per site, seconds."""
    by_site: dict[str, list[float]] = defaultdict(list)
    for site, seconds in store.turnarounds(since):
        by_site[site].append(seconds)
    return [{"site": site, "studies": len(v), "p50_s": round(percentile(v, 50) or 0.0, 2),
             "p95_s": round(percentile(v, 95) or 0.0, 2), "max_s": round(max(v), 2)}
            for site, v in sorted(by_site.items())]
