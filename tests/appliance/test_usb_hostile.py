"""Hostile USB sticks: bundles that try to crash, exhaust or trick provisioning, and file systems
the box must not mount. Real files, real `mgw provision` processes, real loop mounts (as root)."""

from __future__ import annotations

import base64
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import bundle, logs
from gateway.adapters import udev_watch
from gateway.logs import MSG
from tests.appliance.sticks import Canary, kernel_mounts, loop, make_image, mounted_at, need_tools
from tests.peers import require_root

MGW = str(Path(sys.executable).parent / "mgw")
NOW = time.time()


@pytest.fixture
def signer(tmp_path: Path) -> tuple[bytes, Path]:
    """A signing key and a signers directory that trusts it."""
    raw = os.urandom(32)
    signers = tmp_path / "signers"
    signers.mkdir()
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    (signers / "ops.pub").write_text(base64.b64encode(public).decode())
    return raw, signers


def signed(raw: bytes) -> bytes:
    return bundle.sign(raw, "https://127.0.0.1:9", "ab" * 32, "mgw1-token", {}, NOW, 3600)


def provision(stick: Path, signers: Path, tmp_path: Path, memory_mb: int = 0) -> subprocess.CompletedProcess[str]:
    def limits() -> None:
        if memory_mb:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    return subprocess.run([MGW, "provision", "--bundle", str(stick / bundle.FILE_NAME), "--signers", str(signers)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limits,
                          env=dict(os.environ, STATE_DIRECTORY=str(tmp_path / "state"),
                                   CONFIGURATION_DIRECTORY=str(tmp_path / "etc")))


def refused(out: subprocess.CompletedProcess[str], why: str) -> None:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "provisioning bundle refused" in out.stderr, out.stderr
    assert why in out.stderr, out.stderr


def test_provision_refuses_without_a_traceback_when_the_bundle_is_deeply_nested_brackets(
        tmp_path: Path, signer: tuple[bytes, Path]) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / bundle.FILE_NAME).write_bytes(b"[" * 100_000 + b"]" * 100_000)
    refused(provision(stick, signer[1], tmp_path), "not a mgw-provision-bundle/1 file")
    assert not (tmp_path / "state" / "device.toml").exists()


def test_signed_payload_of_deep_nesting_is_a_typed_refusal_when_verified(signer: tuple[bytes, Path]) -> None:
    raw, _ = signer
    key = Ed25519PrivateKey.from_private_bytes(raw)
    public = key.public_key().public_bytes_raw()
    payload = b"[" * 60_000 + b"]" * 60_000
    doc = {"format": bundle.FORMAT, "key_id": bundle.key_id(public), "payload": base64.b64encode(payload).decode(),
           "signature": base64.b64encode(key.sign(bundle.FORMAT.encode() + b"\n" + payload)).decode()}
    with pytest.raises(bundle.BundleRefusedError, match="payload is malformed: RecursionError"):
        bundle.verify(json.dumps(doc).encode(), {bundle.key_id(public): key.public_key()}, NOW)


def test_provision_refuses_a_sparse_1gb_bundle_without_reading_it_when_memory_is_limited(
        tmp_path: Path, signer: tuple[bytes, Path]) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    with open(stick / bundle.FILE_NAME, "wb") as fh:
        fh.write(signed(signer[0]))
        fh.truncate(1 << 30)
    started = time.monotonic()
    out = provision(stick, signer[1], tmp_path, memory_mb=900)  # reading it whole would not fit
    refused(out, f"is too large ({1 << 30} bytes; at most {bundle.MAX_BUNDLE_BYTES})")
    assert time.monotonic() - started < 60


def test_reader_never_reads_more_than_the_limit_when_the_file_is_larger(tmp_path: Path) -> None:
    fifo_free = tmp_path / "big"
    fifo_free.write_bytes(b"x" * 5000)
    with pytest.raises(bundle.BundleRefusedError, match="too large"):
        bundle.read_file(fifo_free, limit=4096)
    assert bundle.read_file(fifo_free, limit=5000) == b"x" * 5000


@pytest.mark.parametrize("kind", ["symlink", "symlink-dir", "fifo", "device", "directory"])
def test_provision_refuses_the_bundle_when_it_is_not_a_regular_file_on_the_stick(
        tmp_path: Path, signer: tuple[bytes, Path], kind: str) -> None:
    canary = Canary.plant(tmp_path / "box")
    canary.path.write_bytes(signed(signer[0]) + canary.secret)  # a valid bundle, were it followed
    before = canary.snapshot()
    stick = tmp_path / "stick"
    stick.mkdir()
    name = stick / bundle.FILE_NAME
    if kind == "symlink":
        name.symlink_to(canary.path)
    elif kind == "symlink-dir":  # the stick root itself is a link to the box's folder
        stick.rmdir()
        canary.path.rename(canary.path.parent / bundle.FILE_NAME)
        canary.path = canary.path.parent / bundle.FILE_NAME
        before = canary.snapshot()
        stick.symlink_to(canary.path.parent)
    elif kind == "fifo":
        os.mkfifo(name)
    elif kind == "device":
        require_root("a device node on the stick needs mknod, which needs root (CI runs as root)")
        os.mknod(name, 0o600 | 0o020000, os.makedev(1, 3))  # a character device (/dev/null's numbers)
    else:
        name.mkdir()
    out = provision(stick, signer[1], tmp_path)
    why = {"symlink": "is a symbolic link", "symlink-dir": "cannot open the folder of the bundle",
           "fifo": "is a FIFO", "device": "is a device", "directory": "is a directory"}[kind]
    refused(out, why)
    assert canary.secret.decode() not in out.stdout + out.stderr
    assert canary.snapshot() == before
    assert not (tmp_path / "state" / "device.toml").exists()


def test_refusal_cannot_forge_a_log_line_when_the_bundle_carries_newlines(
        tmp_path: Path, signer: tuple[bytes, Path]) -> None:
    forged = "2030-01-01T00:00:00Z INFO gateway.field box provisioned"
    doc = json.loads(signed(signer[0]))
    doc["key_id"] = f"0123\n{forged}"
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / bundle.FILE_NAME).write_text(json.dumps(doc))
    out = provision(stick, signer[1], tmp_path)
    refused(out, "not a mgw-provision-bundle/1 file")
    assert not any(line.startswith(forged) for line in out.stderr.splitlines())


def test_log_values_are_escaped_when_they_carry_control_characters() -> None:
    record = logging.LogRecord("gateway.x", logging.WARNING, "", 0, "refused", (), None)
    record.REASON = "bad\n2030-01-01T00:00:00Z INFO forged\x1b[2K\\"
    line = logs.KeyValueFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith("REASON=bad\\x0a2030-01-01T00:00:00Z INFO forged\\x1b[2K\\\\")
    assert logs.escape("plain text, ünïcode") == "plain text, ünïcode"


# -- mounting: only the file systems sticks use ----------------------------------------------------

def _device(devnode: str, fs_type: str) -> udev_watch.BlockDevice:
    return udev_watch.BlockDevice(devnode, "usb", "filesystem", fs_type)


def _mount_and_leave(device: udev_watch.BlockDevice, root: Path) -> None:
    with udev_watch.mounted(device, root):
        pass


@pytest.mark.needs_root
def test_stick_is_refused_with_an_event_and_not_mounted_when_it_carries_ext4(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    need_tools()
    image = make_image(tmp_path / "ext4.img", "ext4", 8)
    with loop(image) as dev:
        with pytest.raises(udev_watch.StickRefusedError, match="file system ext4 is not one a stick may use"):
            _mount_and_leave(_device(dev, "ext4"), tmp_path / "run")
        with pytest.raises(udev_watch.StickRefusedError, match="udev says vfat, the device says ext4"):
            _mount_and_leave(_device(dev, "vfat"), tmp_path / "run")
    assert mounted_at(tmp_path / "run" / Path(dev).name) is None
    assert not (tmp_path / "run" / Path(dev).name).exists()
    events = [r for r in caplog.records if getattr(r, "MESSAGE_ID", None) == MSG.USB_STICK_REFUSED.value]
    assert len(events) == 2


@pytest.mark.needs_root
def test_stick_is_mounted_read_only_then_writable_with_the_same_restrictions_when_allowed(tmp_path: Path) -> None:
    """On ext4 (allowed here for the test only), which can hold what FAT cannot: a link, a
    set-uid program. The restrictions hold on both mounts; a link on the stick is not followed."""
    need_tools()
    image = make_image(tmp_path / "ext4.img", "ext4", 8)
    canary = Canary.plant(tmp_path / "box")
    with loop(image) as dev:
        staging = tmp_path / "staging"
        staging.mkdir()
        subprocess.run(["mount", dev, str(staging)], check=True, timeout=60)
        (staging / "link").symlink_to(canary.path)
        subprocess.run(["umount", str(staging)], check=True, timeout=60)
        with udev_watch.mounted(_device(dev, "ext4"), tmp_path / "run", allowed=("ext4",)) as stick:
            assert {"ro", "nosuid", "nodev", "noexec", "nosymfollow"} <= (mounted_at(stick.path) or set())
            with pytest.raises(OSError):
                (stick.path / "written").write_bytes(b"x")
            with pytest.raises(OSError):  # nosymfollow
                (stick.path / "link").read_bytes()
            stick.make_writable()
            opts = mounted_at(stick.path) or set()
            assert {"rw", "nosuid", "nodev", "noexec", "nosymfollow"} <= opts and "ro" not in opts
            (stick.path / "written").write_bytes(b"x")
        assert mounted_at(stick.path) is None and not stick.path.exists()


@pytest.mark.needs_root
def test_vfat_stick_is_mounted_with_the_stick_options_when_the_kernel_has_vfat(tmp_path: Path) -> None:
    need_tools()
    image = make_image(tmp_path / "vfat.img", "vfat", 8)
    assert udev_watch.probe(str(image)) == "vfat"
    assert udev_watch.mount_options("vfat", False) == "ro,nosuid,nodev,noexec,noatime,nosymfollow," \
                                                      "uid=0,gid=0,umask=077,flush"
    with loop(image) as dev:
        if not kernel_mounts("vfat"):  # a kernel without FAT: the mount fails cleanly, nothing left
            with pytest.raises(udev_watch.LocalError, match="mount"):
                _mount_and_leave(_device(dev, "vfat"), tmp_path / "run")
            assert not (tmp_path / "run" / Path(dev).name).exists()
            return
        with udev_watch.mounted(_device(dev, "vfat"), tmp_path / "run") as stick:
            assert {"ro", "nosuid", "nodev", "noexec"} <= (mounted_at(stick.path) or set())
