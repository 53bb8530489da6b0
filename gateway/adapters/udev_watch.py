"""The device side of the appliance: network link events and USB sticks.

Thin on purpose; the decisions live in ``gateway.core.netlink`` and
``gateway.appliance.usb``. Here only:

* ``LinkWatcher``: a thread on a NETLINK_ROUTE socket (carrier up/down, which
  udev does not report) and a pyudev monitor of the ``net`` subsystem
  (interfaces added or renamed, e.g. a USB modem); either calls ``on_link_up``
  when a link became usable, and the edge nudges its uplink to reconnect at once.
* ``usb_filesystem``: pyudev's view of a block device (is it a USB filesystem?).
* ``mounted``: mount a stick for the handler, unmount after: only vfat or exFAT (probed
  by blkid and matching udev's view), read-only, nosuid,nodev,noexec,nosymfollow; the
  export remounts it read-write with the same restrictions.
"""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from gateway.core import netlink
from gateway.core.errors import FrameError, LocalError, PeerError
from gateway.logs import MSG, escape

log = logging.getLogger(__name__)


class LinkWatcher:
    """Calls ``on_link_up()`` (from its own thread) when a network link becomes usable."""

    def __init__(self, on_link_up: Callable[[], None]) -> None:
        self._on_link_up = on_link_up
        self._tracker = netlink.LinkTracker()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._udev_monitor: object | None = None
        self.events = 0

    def start(self) -> bool:
        """Open the sockets and start watching; False (logged) when the kernel refuses."""
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self._sock.bind((0, netlink.RTMGRP_LINK))
        except OSError as exc:
            log.warning("network link events unavailable", extra={"ERROR": str(exc)})
            self._sock = None
            return False
        self._udev_monitor = _udev_net_monitor()
        self._thread = threading.Thread(target=self._run, name="link-watch", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        readers: list[Any] = [self._sock] + ([self._udev_monitor] if self._udev_monitor is not None else [])
        while not self._stop.is_set():
            ready, _, _ = select.select(readers, [], [], 0.5)
            for source in ready:
                if source is self._sock:
                    self._on_datagram(self._sock.recv(65536))
                else:
                    self._on_udev(source)

    def _on_datagram(self, datagram: bytes) -> None:
        try:
            came_up = self._tracker.feed(netlink.parse_links(datagram))
        except FrameError as exc:
            log.warning("unreadable rtnetlink message", extra={"ERROR": str(exc)})
            return
        if came_up:
            self._fire("carrier")

    def _on_udev(self, monitor: object) -> None:
        device = monitor.poll(timeout=0)  # type: ignore[attr-defined]
        if device is not None and device.action in ("add", "move"):
            self._fire(f"udev {device.action}")

    def _fire(self, why: str) -> None:
        self.events += 1
        try:
            self._on_link_up()
        except Exception:  # observer: log and swallow
            log.exception("link-up observer failed", extra={"WHY": why})


def _udev_net_monitor() -> Any:
    """A pyudev monitor of ``net`` devices, or None where udev is absent (containers)."""
    try:
        import pyudev

        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by("net")
        monitor.start()
        return monitor
    except (ImportError, OSError, ValueError) as exc:
        log.info("udev net monitor unavailable", extra={"ERROR": str(exc)})
        return None


@dataclass(frozen=True)
class BlockDevice:
    devnode: str
    bus: str
    fs_usage: str
    fs_type: str


def usb_filesystem(devnode: str) -> BlockDevice:
    """udev's properties of ``devnode``; ``LocalError`` if udev does not know it."""
    try:
        import pyudev

        device = pyudev.Devices.from_device_file(pyudev.Context(), devnode)
    except (ImportError, OSError, ValueError) as exc:
        raise LocalError(f"{devnode}: not a device udev knows: {exc}") from exc
    props = device.properties
    return BlockDevice(devnode, props.get("ID_BUS", ""), props.get("ID_FS_USAGE", ""), props.get("ID_FS_TYPE", ""))


# What a stick may carry: FAT and exFAT, what sticks are sold with and ops format them as. Not
# NTFS (ntfs3 is young and has had memory-safety bugs on crafted images) nor ext4/btrfs/xfs (a
# stick with a Linux file system is not one of ours, and can hold links, devices and set-id files).
STICK_FILESYSTEMS = ("vfat", "exfat")
MOUNT_OPTIONS = "nosuid,nodev,noexec,noatime,nosymfollow"
FS_OPTIONS = {"vfat": "uid=0,gid=0,umask=077,flush", "exfat": "uid=0,gid=0,umask=077"}


class StickRefusedError(PeerError):
    """The stick's file system is not one the box mounts, or it is not what udev said."""


def probe(devnode: str) -> str:
    """The file system type by blkid's low-level probe of the device itself (``-p``: no cache;
    two signatures on one device are refused as ambiguous)."""
    try:
        result = subprocess.run(["blkid", "-p", "-o", "export", devnode], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalError(f"blkid {devnode}: {exc}") from exc
    if result.returncode == 8:
        raise StickRefusedError("it carries more than one file system signature")
    props = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if result.returncode != 0 or props.get("USAGE") != "filesystem":
        raise StickRefusedError("no file system found on it")
    return props.get("TYPE", "")


def check_filesystem(device: BlockDevice, probed: str, allowed: tuple[str, ...] = STICK_FILESYSTEMS) -> str:
    """The type to mount ``device`` as; ``StickRefusedError`` (logged) if it is not allowed or if
    udev's view and the probe disagree."""
    if probed != device.fs_type:
        reason = f"udev says {escape(device.fs_type or 'nothing')}, the device says {escape(probed or 'nothing')}"
    elif probed not in allowed:
        reason = f"file system {escape(probed)} is not one a stick may use ({', '.join(allowed)})"
    else:
        return probed
    _refused(device, reason)


def _refused(device: BlockDevice, reason: str) -> NoReturn:
    log.warning("USB stick refused", extra={"MESSAGE_ID": MSG.USB_STICK_REFUSED.value,
                                            "DEVICE": device.devnode, "REASON": reason})
    raise StickRefusedError(f"{device.devnode}: {reason}")


def mount_options(fs_type: str, writable: bool) -> str:
    """Never set-id, device nodes, executables or link following; read-only unless ``writable``."""
    extra = [FS_OPTIONS[fs_type]] if fs_type in FS_OPTIONS else []
    return ",".join(["rw" if writable else "ro", MOUNT_OPTIONS, *extra])


@dataclass(frozen=True)
class Stick:
    path: Path
    fs_type: str | None = None  # None: mounted by someone else (``--mountpoint``), left as it is

    def make_writable(self) -> None:
        """Remount read-write, with the same restrictions (for the emergency export)."""
        if self.fs_type is not None:
            _run(["mount", "-i", "-o", "remount," + mount_options(self.fs_type, True), str(self.path)])


@contextmanager
def mounted(device: BlockDevice, mount_root: Path,
            allowed: tuple[str, ...] = STICK_FILESYSTEMS) -> Iterator[Stick]:
    """Mount ``device`` read-only under ``mount_root`` as the type its probe found (only ``allowed``
    types; ``-i``: no mount helper programs); sync and unmount on the way out."""
    try:
        probed = probe(device.devnode)
    except StickRefusedError as exc:
        _refused(device, str(exc))
    fs_type = check_filesystem(device, probed, allowed)
    target = mount_root / Path(device.devnode).name
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        _run(["mount", "-i", "-t", fs_type, "-o", mount_options(fs_type, False), device.devnode, str(target)])
    except LocalError:
        target.rmdir()
        raise
    try:
        yield Stick(target, fs_type)
    finally:
        _run(["sync", "-f", str(target)])
        _run(["umount", str(target)])
        target.rmdir()


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise LocalError(f"{' '.join(cmd)}: {result.stderr.strip() or result.returncode}")
