"""`mgw status`: the box at a glance, for the field engineer and for scripts (`--json`).

Read only, from what the edge leaves on disk, so it answers whether the service runs or not,
and never writes or migrates a database (a newer program must not migrate the spool before the
update hook has backed it up): the spool's counts, the exam records' last study per modality (both
SQLite, opened read-only where another process owns them), the uplink state file
(``status.py``), the edge's port report (is it running), the MQTT client certificate and the
state disk. Times are shown in the site's time zone (``site.time_zone``, else the system's).

The JSON form is a stable, typed contract, documented key by key in docs/operations.md
("mgw status"): keys are only ever added.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.adapters import exam_store, host, pem_files, ports
from gateway.adapters.store import counts_read_only as spool_counts
from gateway.adapters.time_zone import zone
from gateway.appliance.status import read_uplink
from gateway.config import EdgeSettings
from gateway.i18n import N_, _
from gateway.paths import Paths

BACKLOG_STATES = ("received", "packed", "sending")
# a spool state's name as `mgw status` shows it (the JSON keeps the state's own name)
SPOOL_STATES = {"received": N_("received"), "packed": N_("packed"), "sending": N_("sending"),
                "acknowledged": N_("acknowledged"), "purged": N_("purged"), "quarantined": N_("quarantined")}
DAY_S = 86400.0


@dataclass(frozen=True)
class Uplink:
    connected: bool  # False whenever the edge service is not running
    since: float | None  # when it last connected or went down; None while the service is stopped
    since_local: str | None
    broker: str  # host:port
    tls: bool


@dataclass(frozen=True)
class Certificate:
    file: str
    subject: str | None
    not_after: float | None
    not_after_local: str | None
    days_left: float | None
    error: str | None  # why it could not be read; the other fields are then None


@dataclass(frozen=True)
class Backlog:
    items: int
    bytes: int
    oldest_received_at: float | None
    oldest_age_s: float | None


@dataclass(frozen=True)
class LastStudy:
    modality: str
    at: float
    local: str


@dataclass(frozen=True)
class Disk:
    path: str
    total_bytes: int
    free_bytes: int
    used_percent: float
    high_water_percent: float


@dataclass(frozen=True)
class Glance:
    box_id: str
    site: str
    modality: str
    version: str
    at: float
    time_zone: str
    service_running: bool
    uplink: Uplink
    certificate: Certificate | None
    backlog: Backlog
    last_studies: list[LastStudy]
    quarantine_items: int
    disk: Disk | None
    spool: dict[str, dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["service"] = {"running": doc.pop("service_running")}
        doc["quarantine"] = {"items": doc.pop("quarantine_items")}
        return doc


def local_time(ts: float, time_zone: str) -> str:
    """``2026-12-03 14:05 UTC+08:00`` in the site's zone (the system's when none is configured)."""
    offset = zone(time_zone).utc_offset_s(ts) if time_zone else time.localtime(ts).tm_gmtoff
    when = dt.datetime.fromtimestamp(ts, dt.timezone(dt.timedelta(seconds=offset)))
    sign, minutes = ("+" if offset >= 0 else "-"), abs(offset) // 60
    return f"{when:%Y-%m-%d %H:%M} UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _certificate(settings: EdgeSettings, now: float) -> Certificate | None:
    name = settings.mqtt.cert_file
    if not name:
        return None
    try:
        info = pem_files.certificate(Path(name))
    except pem_files.PemError as exc:
        return Certificate(name, None, None, None, None, str(exc))
    return Certificate(name, info.subject_cn, info.not_after, local_time(info.not_after, settings.site.time_zone),
                       round((info.not_after - now) / DAY_S, 1), None)


def _uplink(settings: EdgeSettings, paths: Paths, running: bool) -> Uplink:
    broker = f"{settings.mqtt.host}:{settings.mqtt.port}"
    state = read_uplink(paths.state_dir) if running else None
    if state is None:
        return Uplink(False, None, None, broker, bool(settings.mqtt.ca_file))
    return Uplink(state.up, state.since, local_time(state.since, settings.site.time_zone), broker,
                  bool(settings.mqtt.ca_file))


def _backlog(counts: dict[str, dict[str, float]], now: float) -> Backlog:
    held = [counts[s] for s in BACKLOG_STATES if s in counts]
    oldest = min((float(c["oldest_received_at"]) for c in held), default=None)
    return Backlog(int(sum(c["items"] for c in held)), int(sum(c["bytes"] for c in held)), oldest,
                   None if oldest is None else round(max(0.0, now - oldest), 1))


def _quarantine_files(paths: Paths) -> int:
    qdir = paths.quarantine_dir
    return sum(1 for p in qdir.iterdir() if p.is_file()) if qdir.is_dir() else 0


def _disk(settings: EdgeSettings, paths: Paths) -> Disk | None:
    found = host.disk(paths.state_dir)
    if found is None:
        return None
    return Disk(str(paths.state_dir), found.total_bytes, found.free_bytes, round(found.used_percent, 2),
                settings.spool.high_water_percent)


def glance(settings: EdgeSettings, paths: Paths, now: float) -> Glance:
    """Everything `mgw status` shows; raises ``StorageError`` for an unreadable database."""
    counts = spool_counts(paths.spool_db)
    running = ports.reported(paths.state_dir, "edge", "dicom") is not None
    tz = settings.site.time_zone
    last = exam_store.last_studies_read_only(paths.state_dir / "utilisation.db")
    return Glance(
        box_id=settings.box.id, site=settings.box.site, modality=settings.box.modality, version=__version__,
        at=now, time_zone=tz, service_running=running, uplink=_uplink(settings, paths, running),
        certificate=_certificate(settings, now), backlog=_backlog(counts, now),
        last_studies=[LastStudy(m, at, local_time(at, tz)) for m, at in last.items()],
        quarantine_items=int(counts.get("quarantined", {}).get("items", 0)) + _quarantine_files(paths),
        disk=_disk(settings, paths), spool=counts)


def _duration(seconds: float) -> str:
    """A span, in the CLI's language: ``3 d 4 h``, ``2 h 5 min``, ``40 s``."""
    s = int(max(0.0, seconds))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return _("{days} d {hours} h").format(days=d, hours=h)
    if h:
        return _("{hours} h {minutes} min").format(hours=h, minutes=m)
    if m:
        return _("{minutes} min").format(minutes=m)
    return _("{seconds} s").format(seconds=s)


def lines(g: Glance) -> list[str]:
    """The text form, in the CLI's language (gateway/i18n.py)."""
    out = [_("box {box}  site {site}  modality {modality}  mgw {version}").format(
        box=g.box_id, site=g.site or "-", modality=g.modality or "-", version=g.version),
        _("  now: {time}").format(time=local_time(g.at, g.time_zone))]
    out += _uplink_lines(g)
    c = g.certificate
    if c is None:
        out.append(_("  certificate: none configured (plain MQTT)"))
    elif c.error is not None or c.days_left is None:
        out.append(_("  certificate: UNREADABLE: {reason}").format(reason=c.error))
    else:
        text = _("  certificate: {subject}, until {until} ({days:.0f} days left) EXPIRED") if c.days_left < 0 else \
            _("  certificate: {subject}, until {until} ({days:.0f} days left)")
        out.append(text.format(subject=c.subject, until=c.not_after_local, days=c.days_left))
    b = g.backlog
    age = _duration(b.oldest_age_s) if b.oldest_age_s is not None else "-"
    out.append(_("  backlog: {items} items, {megabytes:.1f} MB, oldest {age}").format(
        items=b.items, megabytes=b.bytes / 1e6, age=age))
    for s in g.last_studies:
        out.append(_("  last study {modality}: {time} ({ago} ago)").format(
            modality=s.modality, time=s.local, ago=_duration(g.at - s.at)))
    if not g.last_studies:
        out.append(_("  last study: none yet"))
    out.append((_("  quarantine: {items} items (see `mgw quarantine list`)") if g.quarantine_items else
                _("  quarantine: {items} items")).format(items=g.quarantine_items))
    if g.disk is not None:
        d = g.disk
        out.append(_("  disk: {used:.1f}% used (refuses images at {high:.0f}%), {free:.1f} GB free").format(
            used=d.used_percent, high=d.high_water_percent, free=d.free_bytes / 1e9))
    return out


def _uplink_lines(g: Glance) -> list[str]:
    u = g.uplink
    if not g.service_running:
        return [_("  service: NOT RUNNING (systemctl status mgw-edge.service)"),
                _("  uplink: unknown while the service is stopped, broker {broker}").format(broker=u.broker)]
    span = _duration(g.at - u.since) if u.since is not None else "-"
    text = (_("  uplink: connected since {since} ({span}), broker {broker}") if u.connected else
            _("  uplink: DOWN since {since} ({span}), broker {broker}"))
    return [_("  service: running"),
            text.format(since=u.since_local, span=span, broker=u.broker) + (" TLS" if u.tls else _(" (no TLS)"))]
