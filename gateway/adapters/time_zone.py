"""IANA time zones from the system's tz database (``zoneinfo``), as ``core.utilisation.Zone``.

Reading the tz database is file I/O, so it lives here and the core only asks a ``Zone`` for
its UTC offset at an instant. An unknown name raises ValueError (config turns it into
ConfigError).
"""

from __future__ import annotations

import datetime
import functools
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.utilisation import FixedOffset, Zone


@dataclass(frozen=True)
class IanaZone:
    name: str
    _info: zoneinfo.ZoneInfo

    def utc_offset_s(self, when: float) -> int:
        offset = datetime.datetime.fromtimestamp(when, self._info).utcoffset()
        assert offset is not None
        return int(offset.total_seconds())


@functools.cache
def zone(name: str, fallback_offset_minutes: int = 0) -> Zone:
    """The IANA zone ``name`` (e.g. ``Asia/Shanghai``), or a fixed offset when ``name`` is empty."""
    if not name:
        return FixedOffset(fallback_offset_minutes * 60)
    try:
        return IanaZone(name, zoneinfo.ZoneInfo(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)") from exc


def format_local(at: float, name: str) -> str:
    """``at`` as ``YYYY-MM-DD HH:MM:SS +HH:MM`` in zone ``name`` (UTC when empty or unknown)."""
    try:
        return format_at(at, zone(name).utc_offset_s)
    except ValueError:
        return format_at(at, lambda _: 0)


def format_at(at: float | None, offset_s: Callable[[float], int]) -> str:
    """``at`` as ``YYYY-MM-DD HH:MM:SS +HH:MM`` at the offset ``offset_s`` gives for it; "-" for None."""
    if at is None:
        return "-"
    offset = offset_s(float(at))
    when = datetime.datetime.fromtimestamp(float(at), datetime.timezone(datetime.timedelta(seconds=offset)))
    stamp = when.strftime("%z")
    return when.strftime("%Y-%m-%d %H:%M:%S ") + stamp[:3] + ":" + stamp[3:5]
