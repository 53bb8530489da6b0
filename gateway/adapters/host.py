"""Facts about the machine the edge runs on: disk, CPU temperature, certificate expiry.

Observers: every probe returns None when the fact is unavailable (no thermal sensor in a
VM, no client certificate configured) instead of raising.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


@dataclass(frozen=True)
class Disk:
    total_bytes: int
    free_bytes: int

    @property
    def used_percent(self) -> float:
        return 100.0 * (self.total_bytes - self.free_bytes) / self.total_bytes if self.total_bytes else 0.0


def disk(path: Path) -> Disk | None:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return Disk(usage.total, usage.free)


def cpu_temp_c(thermal_dir: Path) -> float | None:
    """The hottest ``thermal_zone*/temp`` (millidegrees Celsius), or None without sensors."""
    readings = []
    for zone in sorted(thermal_dir.glob("thermal_zone*/temp")):
        try:
            readings.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(readings) if readings else None


def cert_not_after(cert_file: str) -> float | None:
    """Expiry (epoch seconds) of the first certificate in a PEM file, or None."""
    if not cert_file:
        return None
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()
