"""The appliance's systemd-networkd files, rendered from ``[network]``: only designated links get an address.

Pure: patterns and the listener's address in, file names and texts out; ``mgw network
render`` writes them to ``/run/systemd/network`` at every boot (``mgw-network.service``).

* A link is designated by an interface name glob (``enp1s0``, ``enp2s*``) or a MAC address
  (``aa:bb:cc:dd:ee:ff``), given at provisioning (``[network]`` in ``device.toml``).
* Never a USB network link: a pattern that would match a USB gadget's or USB adapter's name
  (``usb0``, ``rndis0``, ``enx<mac>``) or every link is refused, and every file also excludes
  links attached through USB (udev ``ID_PATH`` containing ``-usb-``) and the gadget driver
  (``g_ether``, what every USB gadget network function reports) whatever their name.
* Uplink links get DHCP. Modality links get the DICOM listener's address, static (the
  modality is configured with it), with no DHCP, router advertisements or link-local address.
  Modality files sort first: networkd applies the first file that matches a link.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NAME_GLOB = re.compile(r"^[A-Za-z0-9_.*?-]{1,15}$")  # Linux: no ":", "/" or blanks
# Names USB network links get: a gadget's (usb0, rndis0), a USB adapter's by MAC (enx...); and
# names a catch-all would also take. A designated pattern may match none of them.
USB_LIKE_NAMES = ("usb0", "usb1", "rndis0", "enx001122334455", "enx0a1b2c3d4e5f")
EXCLUDE_USB = ("Path=!*-usb-*", "Driver=!g_ether")
HEADER = ("# Rendered by `mgw network render` from the [network] settings; do not edit.\n"
          "# docs/operations.md, \"Network\". Only designated links, never a USB link.\n")


@dataclass(frozen=True)
class LinkPatterns:
    names: tuple[str, ...]
    macs: tuple[str, ...]


def parse_patterns(entries: tuple[str, ...], what: str) -> LinkPatterns:
    """Split ``entries`` into name globs and MAC addresses; ValueError naming ``what`` for a
    pattern that is neither, or that could match a USB link or every link."""
    names: list[str] = []
    macs: list[str] = []
    for entry in entries:
        if MAC.match(entry.lower()):
            macs.append(entry.lower())
            continue
        if not NAME_GLOB.match(entry):
            raise ValueError(f"{what}: {entry[:40]!r} is neither an interface name (glob) nor a MAC address")
        caught = [name for name in USB_LIKE_NAMES if _glob(entry).match(name)]
        if caught:
            raise ValueError(f"{what}: {entry!r} would also match {caught[0]!r} (a USB or catch-all link); "
                             "name the interface or give its MAC address")
        names.append(entry)
    return LinkPatterns(tuple(names), tuple(macs))


def _glob(pattern: str) -> re.Pattern[str]:
    out = []
    for char in pattern:
        out.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return re.compile("^" + "".join(out) + "$")


def render(uplink: LinkPatterns, modality: LinkPatterns, modality_address: str,
           prefix_length: int) -> dict[str, str]:
    """``{file name: text}`` of the .network files; the modality's need its static address."""
    files: dict[str, str] = {}
    if modality.names or modality.macs:
        address = _interface_address(modality_address, prefix_length)
        network = ("[Link]\nRequiredForOnline=no\n\n[Network]\n"
                   f"Address={address}\nDHCP=no\nIPv6AcceptRA=no\nLinkLocalAddressing=no\n")
        files.update(_files("70-mgw-modality", modality, network))
    files.update(_files("80-mgw-uplink", uplink, "[Network]\nDHCP=yes\n"))
    return files


def _files(stem: str, patterns: LinkPatterns, network: str) -> dict[str, str]:
    out = {}
    for suffix, key, values in (("", "Name", patterns.names), ("-mac", "MACAddress", patterns.macs)):
        if values:
            match = "\n".join(("[Match]", "Type=ether", f"{key}={' '.join(values)}", *EXCLUDE_USB))
            out[f"{stem}{suffix}.network"] = f"{HEADER}{match}\n\n{network}"
    return out


def _interface_address(address: str, prefix_length: int) -> str:
    try:
        interface = ipaddress.ip_interface(f"{address}/{prefix_length}")
    except ValueError as exc:
        raise ValueError(f"the modality-side address {address!r}/{prefix_length}: {exc}") from exc
    if interface.ip.is_loopback or interface.ip.is_unspecified:
        raise ValueError(f"modality links need dicom.bind_host set to the box's address on the modality side, "
                         f"not {address!r}")
    return str(interface)
