"""`mgw network render`: this box's systemd-networkd files, written at every boot.

``mgw-network.service`` runs it before ``systemd-networkd`` into ``/run/systemd/network``
(a tmpfs: the read-only image ships no .network file of its own), from the site and device
settings' ``[network]`` table and ``dicom.bind_host``, so that only the designated uplink and
modality links get an address, and never a USB link (``core.networkd``). Files it wrote
before and no longer renders are removed (a re-render after provisioning).
"""

from __future__ import annotations

from pathlib import Path

from gateway.adapters import blobs
from gateway.config import NetworkSettings
from gateway.core import networkd

OURS = "*-mgw-*.network"


def render_to(out_dir: Path, settings: NetworkSettings, bind_host: str) -> list[Path]:
    """Write the files; the paths written, in order. ValueError for patterns or an address that
    cannot be rendered (``load_network`` has checked the patterns already)."""
    files = networkd.render(networkd.parse_patterns(settings.uplink_interfaces, "network.uplink_interfaces"),
                            networkd.parse_patterns(settings.modality_interfaces, "network.modality_interfaces"),
                            bind_host, settings.modality_prefix_length)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(out_dir.glob(OURS)):
        if old.name not in files:
            blobs.remove(old)
    written = []
    for name, text in sorted(files.items()):
        blobs.write_atomic(out_dir / name, text.encode(), mode=0o644)
        written.append(out_dir / name)
    return written
