"""Which modality may associate, from where: the DICOM listener's admission policy (pure).

Entries of ``dicom.allowed_peers`` are ``"AE@address"`` or ``"AE@network/prefix"`` (IPv4 or
IPv6), one per modality, e.g. ``"CT_ROOM_1@192.168.10.21"``; provisioning records the
modality's (``mgw provision --modality``, or the bundle's [dicom] table). Entries of
``dicom.allowed_calling_aets`` admit an AE title from any address.

On a provisioned box admission is deny-by-default: with both lists empty nobody is admitted
but the commissioning caller. On an unprovisioned box (a lab configuration written by hand;
the appliance never runs the edge before provisioning) empty lists admit anyone, and the
listener says so in a warning when it starts.

The box's own tools are always admitted: calling AE title ``MGW-COMMISSION`` (``mgw
commission``) or ``MGW-GATE`` (the update commit gate's probe) from the very address they
connect to, which only a process on the box can use (Linux drops packets from outside that
carry one of the box's own addresses as their source).

Refusals carry the A-ASSOCIATE-RJ fields to answer with (PS3.8 9.3.4): rejected-permanent,
source DICOM UL service-user; reason 3 (calling AE title not recognised) for an AE title no
entry admits from that address, reason 1 (no reason given) for an address no modality has,
whatever AE title it calls with, so a stranger learns nothing about the AE titles in use.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gateway.core.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
COMMISSIONING_AE = "MGW-COMMISSION"
GATE_AE = "MGW-GATE"
LOCAL_AE_TITLES = frozenset({COMMISSIONING_AE, GATE_AE})  # admitted only from the box itself


@dataclass(frozen=True)
class PeerRule:
    ae_title: str
    network: Network


@dataclass(frozen=True)
class Refusal:
    reason: str  # for the log line and the metrics label; never names the peer
    result: int = 0x01  # rejected-permanent
    source: int = 0x01  # DICOM UL service-user
    diagnostic: int = 0x01  # no reason given


ADDRESS_NOT_ALLOWED = Refusal("source address not allowed", diagnostic=0x01)
AE_NOT_RECOGNISED = Refusal("calling AE title not recognised", diagnostic=0x03)
AE_NOT_FROM_HERE = Refusal("calling AE title not allowed from this source address", diagnostic=0x03)


@dataclass(frozen=True)
class Policy:
    rules: tuple[PeerRule, ...] = ()
    calling_aets: frozenset[str] = frozenset()  # admitted from any address
    deny_by_default: bool = False  # a provisioned box: empty lists admit nobody

    @classmethod
    def from_settings(cls, allowed_peers: tuple[str, ...], allowed_calling_aets: tuple[str, ...],
                      provisioned: bool) -> Policy:
        return cls(parse_rules(allowed_peers), frozenset(a.strip() for a in allowed_calling_aets), provisioned)

    @property
    def admits_anyone(self) -> bool:
        return not (self.deny_by_default or self.rules or self.calling_aets)

    @property
    def ae_titles(self) -> tuple[str, ...]:
        """Every calling AE title some entry admits, the commissioning one included."""
        return tuple(sorted({*LOCAL_AE_TITLES, *self.calling_aets, *(r.ae_title for r in self.rules)}))

    def summary(self) -> str:
        if self.admits_anyone:
            return "any calling AE title from any address (unprovisioned box, no allow-list)"
        parts = [f"{len(self.rules)} modality entries (dicom.allowed_peers)"]
        if self.calling_aets:
            parts.append(f"{len(self.calling_aets)} AE titles from any address (dicom.allowed_calling_aets)")
        return ", ".join(parts) + f", and {' and '.join(sorted(LOCAL_AE_TITLES))} from this box"


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


def _from_this_box(address: str, local_address: str) -> bool:
    ip = _address(address)
    return ip is not None and ip == _address(local_address)


def address_refusal(policy: Policy, address: str, local_address: str) -> Refusal | None:
    """At TCP accept, before any PDU: refuse an address no entry could ever admit."""
    if policy.admits_anyone or policy.calling_aets or _from_this_box(address, local_address):
        return None
    ip = _address(address)
    if ip is not None and any(ip in r.network for r in policy.rules):
        return None
    return ADDRESS_NOT_ALLOWED


def refusal(policy: Policy, calling_ae: str, address: str, local_address: str) -> Refusal | None:
    """Why this calling AE title may not associate from this address, or None when it may."""
    calling_ae = calling_ae.strip()
    if policy.admits_anyone or calling_ae in policy.calling_aets:
        return None
    if calling_ae in LOCAL_AE_TITLES and _from_this_box(address, local_address):
        return None
    ip = _address(address)
    if ip is None or not any(ip in r.network for r in policy.rules):  # AE-only entries admit any address
        return AE_NOT_RECOGNISED if policy.calling_aets else ADDRESS_NOT_ALLOWED
    if not any(r.ae_title == calling_ae for r in policy.rules):
        return AE_NOT_RECOGNISED
    if not any(r.ae_title == calling_ae and ip in r.network for r in policy.rules):
        return AE_NOT_FROM_HERE
    return None


def address_admitted(rules: tuple[PeerRule, ...], address: str) -> bool:
    """Is this source address one of some modality's? (No entries: any address is.)"""
    ip = _address(address)
    return not rules or (ip is not None and any(ip in r.network for r in rules))
