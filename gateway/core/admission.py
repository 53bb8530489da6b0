"""Which modality may associate from where: calling AE title + source address allow-list (pure).

Entries are ``"AE@address"`` or ``"AE@network/prefix"`` (IPv4 or IPv6), one per
modality, e.g. ``"CT_ROOM_1@192.168.10.21"``. With no entries, any address is
admitted (the calling AE list, if any, still applies).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.core.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PeerRule:
    ae_title: str
    network: Network


def parse_rules(entries: tuple[str, ...]) -> tuple[PeerRule, ...]:
    rules = []
    for entry in entries:
        ae, sep, where = entry.rpartition("@")
        if not sep or not ae or not where:
            raise ConfigError(f"'dicom.allowed_peers' entry {entry!r} must look like AE@address or AE@network/prefix")
        try:
            rules.append(PeerRule(ae, ipaddress.ip_network(where, strict=False)))
        except ValueError as exc:
            raise ConfigError(f"'dicom.allowed_peers' entry {entry!r}: {exc}") from exc
    return tuple(rules)


def _address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_admitted(rules: tuple[PeerRule, ...], address: str) -> bool:
    """Before any PDU: is this source address one of some modality's?"""
    if not rules:
        return True
    ip = _address(address)
    return ip is not None and any(ip in r.network for r in rules)


def refusal(rules: tuple[PeerRule, ...], calling_ae: str, address: str) -> str | None:
    """Why this calling AE may not associate from this address, or None when it may."""
    if not rules:
        return None
    ip = _address(address)
    if ip is None or not any(ip in r.network for r in rules):
        return "source address not allowed"
    if not any(r.ae_title == calling_ae for r in rules):
        return "calling AE title not recognised"
    if not any(r.ae_title == calling_ae and ip in r.network for r in rules):
        return "calling AE title not allowed from this source address"
    return None
