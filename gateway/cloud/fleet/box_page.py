"""The box page's documents beyond the box's state: chart series and configuration. Framework-free.

``FleetDocs.box`` adds them to ``/api/v1/boxes/{box_id}``. Series are ``[[unix time, value], ...]``
over the last 24 hours, from the store's health samples and exam records; the configuration is
what the box's heartbeat reports plus its site's settings at the cloud. Nothing is invented: a
figure the box does not send (its AE title, destinations, spool limits, codec settings, bytes
delivered) is not on the page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from gateway.cloud.fleet.overview import site_zone
from gateway.config import FleetSettings, SiteSettings
from gateway.core.fleet import BoxState

_HOUR_S = 3600.0


def hourly(points: Iterable[tuple[float, float]], since: float, until: float) -> list[list[float]]:
    """``(time, amount)`` summed per hour from ``since`` to ``until``: ``[[hour start, sum], ...]``."""
    first = math.floor(since / _HOUR_S)
    buckets = [0.0] * (max(first, math.floor(until / _HOUR_S)) - first + 1)
    for at, amount in points:
        i = math.floor(at / _HOUR_S) - first
        if 0 <= i < len(buckets):
            buckets[i] += amount
    return [[(first + i) * _HOUR_S, v] for i, v in enumerate(buckets)]


def box_series(samples: list[dict[str, Any]], exams: list[dict[str, Any]], now: float,
               hours: float = 24.0) -> dict[str, list[list[float | None]]]:
    """The box page's chart series, each ``[[unix time, value], ...]`` over the last ``hours``:
    backlog items, bytes and oldest age, disk used (health samples); exams per hour (by start),
    images delivered per hour (by cloud_stored_at) and each recent study's turnaround."""
    since = now - hours * _HOUR_S

    def col(name: str) -> list[list[float | None]]:
        return [[s["at"], s[name]] for s in samples if s["at"] >= since]

    recent = [e for e in exams if e["start"] >= since or (e["cloud_stored_at"] or 0) >= since]
    stored = [e for e in recent if e["cloud_stored_at"] is not None]
    return {
        "backlog_items": col("backlog_items"), "backlog_bytes": col("backlog_bytes"),
        "oldest_age_s": col("oldest_age_s"), "disk_used_percent": col("disk_used_percent"),
        "exams_per_hour": [[a, v] for a, v in hourly(((e["start"], 1.0) for e in recent), since, now)],
        "images_delivered_per_hour": [[a, v] for a, v in hourly(
            ((e["cloud_stored_at"], float(e["images"])) for e in stored), since, now)],
        "turnaround_s": [[e["cloud_stored_at"], round(max(0.0, e["cloud_stored_at"] - e["last_received_at"]), 2)]
                         for e in sorted(stored, key=lambda e: e["cloud_stored_at"])],
    }


def box_config(state: BoxState, fleet: FleetSettings, modalities: Iterable[str]) -> dict[str, Any]:
    """What is known of the box's configuration: what its heartbeat reports and its site's settings
    at the cloud. The heartbeat carries no AE title, destinations, spool limits nor codec settings."""
    h = state.health
    site = state.site or state.box_id
    rules = fleet.sites.get(site, SiteSettings())
    return {"version": state.version, "site": site, "region": rules.region, "tz": site_zone(fleet, site),
            "opening_hours": list(rules.weekly_hours or fleet.weekly_hours) or [fleet.opening_hours],
            "turnaround_target_s": rules.turnaround_target_s or fleet.turnaround_target_s,
            "modalities": sorted(set(modalities)), "uplink_connected": h.get("uplink_connected"),
            "uptime_s": h.get("uptime_s"), "reconnects": h.get("reconnects"),
            "utilisation_unacked": h.get("utilisation_unacked"), "exams_dropped": h.get("exams_dropped"),
            "quarantine_items": h.get("quarantine_items"), "cert_not_after": h.get("cert_not_after"),
            "config_version": h.get("config_version"), "commands": _commands(h.get("commands")),
            "heartbeat_at": h.get("at")}


def _commands(raw: Any) -> dict[str, int] | None:
    """The heartbeat's remote-command figures (schema.CommandHealth, parsed at the boundary)."""
    if not isinstance(raw, dict):
        return None
    return {k: raw[k] for k in ("last_seq", "succeeded", "failed", "refused") if type(raw.get(k)) is int}
