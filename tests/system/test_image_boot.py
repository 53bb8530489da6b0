"""The appliance image boots under QEMU and updates itself with RAUC (slow: builds the image if needed).

`image/build` makes the disk and the signed bundle (into MGW_IMAGE_OUT, default
/var/tmp/mgw-image/out; built again when a file under image/, systemd/, firmware_hooks/ or
gateway/ is newer than the disk). The test boots a sparse copy of the disk, grown to 8 GiB (backup
GPT moved to its end), under QEMU with OVMF (KVM where usable, else TCG), headless with the serial
console in a file. `mgw.boot_report` (set in the copy's grubenv, MGW_CMDLINE) makes
mgw-boot-report.service print the units' state, their systemd-analyze security exposure and
`rauc status` between markers; `mgw.test_bundle=/dev/vdb` makes slot A install the bundle from a
second disk once and reboot. The box is unprovisioned, so what a correct box does is: the edge is
skipped by its condition (no device.toml), slot A is marked good, the new slot B boots, its commit
gate fails (no identity, no cloud), B is marked bad, and GRUB falls back to A, which records the
roll back. A committed update needs a provisioned box and a cloud: not yet here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.peers import _missing, require_root

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("MGW_IMAGE_OUT", "/var/tmp/mgw-image/out"))
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ESP_OFFSET = 1024 * 1024  # image/build: the ESP starts at 1 MiB
BOOT_TIMEOUT_S = 900.0  # three boots; under TCG each takes minutes


def _tool(name: str) -> str:
    return shutil.which(name) or _missing(f"{name} not installed (.ci/install)")


@pytest.fixture(scope="module")
def image() -> Path:
    require_root("image/build needs root (debootstrap, chroot)")
    for name in ("qemu-system-x86_64", "mcopy", "grub-editenv", "mkfs.ext4", "debootstrap", "rauc"):
        _tool(name)
    if not OVMF_CODE.is_file():
        _missing("OVMF not installed (apt-get install ovmf)")
    disk = OUT / "modality-gateway.raw"
    if not (disk.is_file() and (OUT / "update.raucb").is_file()) or _newer_sources(disk.stat().st_mtime):
        out = subprocess.run([str(ROOT / "image/build")], env={**os.environ, "MGW_IMAGE_OUT": str(OUT)},
                             capture_output=True, text=True, timeout=3600)
        assert out.returncode == 0, out.stderr[-4000:]
    return OUT


def _newer_sources(built: float) -> bool:
    """A source of the image changed after it was built: build again."""
    return any(p.stat().st_mtime > built for top in ("image", "systemd", "firmware_hooks", "gateway")
               for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and p.name != "BUILD_COMMIT" and "out" not in p.relative_to(ROOT).parts[:2])


def _kvm_usable() -> bool:
    """KVM only where the CPU shows hardware virtualisation: a /dev/kvm without vmx/svm (a nested
    microVM) stops OVMF at once with "KVM internal error ... emulation failure"; TCG then."""
    if os.environ.get("MGW_QEMU_ACCEL") in ("kvm", "tcg"):
        return os.environ["MGW_QEMU_ACCEL"] == "kvm"
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and bool(flags and {"vmx", "svm"} & set(flags.group(1).split()))


def _set_grubenv(disk: Path, tmp: Path, **values: str) -> None:
    env = tmp / "grubenv"
    image = f"{disk}@@{ESP_OFFSET}"
    subprocess.run(["mcopy", "-o", "-i", image, "::/EFI/BOOT/grubenv", str(env)], check=True)
    subprocess.run(["grub-editenv", str(env), "set", *(f"{k}={v}" for k, v in values.items())], check=True)
    subprocess.run(["mcopy", "-o", "-i", image, str(env), "::/EFI/BOOT/grubenv"], check=True)


def _reports(console: Path) -> list[dict[str, list[str]]]:
    """Each complete boot report on the console: key -> the rest of each of its lines."""
    if not console.exists():
        return []
    text = console.read_bytes().decode("utf-8", "replace").replace("\r", "")
    reports = []
    for block in re.findall(r"MGW-REPORT-BEGIN\n(.*?)MGW-REPORT-END", text, re.S):
        report: dict[str, list[str]] = {}
        for line in block.splitlines():
            m = re.search(r"MGW-REPORT (\S+) ?(.*)$", line.strip())  # after journald's console prefix
            if m:
                report.setdefault(m.group(1), []).append(m.group(2))
        reports.append(report)
    return reports


def _rolled_back(console: Path) -> bool:
    """A report from slot A after slot B was marked bad: the whole update path has run."""
    if not console.exists():
        return False
    text = console.read_bytes().decode("utf-8", "replace")
    marked = text.find("slot B marked bad")
    return marked >= 0 and "MGW-REPORT slot A" in text[marked:] and "MGW-REPORT-END" in text[marked:]


def _unit(report: dict[str, list[str]], name: str) -> dict[str, str]:
    """ActiveState, SubState, Result and ConditionResult of one unit, from `systemctl show`."""
    (line,) = [v for v in report["unit"] if v.startswith(name + " ")]
    return dict(pair.split("=", 1) for pair in line.split()[1:])


def _rauc(report: dict[str, list[str]]) -> dict[str, str]:
    pairs = (v.split("=", 1) for v in report.get("rauc", []) if "=" in v)
    return {k: v.strip("'") for k, v in pairs}


@pytest.mark.timeout(7200)  # may build the image first (minutes), then three boots under TCG (a minute or more each)
def test_unprovisioned_box_boots_then_a_failed_update_rolls_back_when_booted_under_qemu(
        image: Path, tmp_path: Path) -> None:
    qemu = _tool("qemu-system-x86_64")
    disk = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(image / "modality-gateway.raw"), str(disk)], check=True)
    os.truncate(disk, 8 * 1024**3)  # room for systemd-repart to grow the data partition (to 4 GiB at least)
    # as an installer does after writing the image to a larger disk: the backup GPT to the disk's end
    subprocess.run(["sfdisk", "--quiet", "--relocate", "gpt-bak-std", str(disk)], check=True)
    _set_grubenv(disk, tmp_path, MGW_CMDLINE="mgw.boot_report mgw.test_bundle=/dev/vdb")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    shutil.copy(image / "update.raucb", bundle_dir / "update.raucb")
    bundle_disk = tmp_path / "bundle.ext4"
    size_mib = (bundle_dir / "update.raucb").stat().st_size // 2**20 + 64
    subprocess.run(["mkfs.ext4", "-q", "-d", str(bundle_dir), str(bundle_disk), f"{size_mib}M"], check=True)
    vars_fd = tmp_path / "OVMF_VARS.fd"
    shutil.copy(OVMF_VARS, vars_fd)
    kvm = _kvm_usable()
    console = tmp_path / "console.log"
    cmd = [qemu, "-machine", "q35,accel=" + ("kvm" if kvm else "tcg"), "-cpu", "host" if kvm else "max",
           "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
           "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
           "-drive", f"if=pflash,format=raw,file={vars_fd}",
           "-drive", f"if=virtio,format=raw,file={disk}",
           "-drive", f"if=virtio,format=raw,readonly=on,file={bundle_disk}",
           "-nic", "user,model=virtio-net-pci"]
    qemu_log = tmp_path / "qemu.log"
    with qemu_log.open("wb") as log:
        vm = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S * (1 if kvm else 3)
        while not _rolled_back(console) and vm.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)  # polling the console file for the report after the roll back (a condition, bounded)
        reports = _reports(console)
    finally:
        vm.kill()
        vm.wait(timeout=30)
    text = console.read_bytes().decode("utf-8", "replace") if console.exists() else ""
    stderr = qemu_log.read_text(errors="replace")
    assert _rolled_back(console), f"{len(reports)} reports; qemu: {stderr[-1000:]}; console ends:\n{text[-3000:]}"
    first, last = reports[0], reports[-1]

    # Boot 1, slot A: a read-only squashfs root, /var on the data partition grown by systemd-repart.
    assert first["slot"] == ["A"]
    assert first["root"][0].startswith("squashfs ro")
    fstype, size = first["var"][0].split()
    assert fstype == "ext4" and size.endswith("G") and float(size[:-1]) >= 3.5, first["var"]
    # Unprovisioned: the edge is skipped by its condition, not failed; the factory slot is committed.
    edge = _unit(first, "mgw-edge.service")
    assert edge["ActiveState"] == "inactive" and edge["ConditionResult"] == "no" and edge["Result"] == "success"
    commit = _unit(first, "mgw-update-commit.service")
    assert (commit["ActiveState"], commit["SubState"], commit["Result"]) == ("active", "exited", "success")
    # The link renderer ran under systemd before networkd (the default uplink links on an unprovisioned box).
    network = _unit(first, "mgw-network.service")
    assert (network["ActiveState"], network["Result"]) == ("active", "success"), network
    # No gateway unit failed, nor the sandboxed system services (PrivateDevices= needs a writable /tmp).
    failed = first.get("failed", [])
    assert not [u for u in failed if u.startswith(("mgw-", "systemd-resolved", "systemd-timesyncd"))], first.get("why")
    rauc = _rauc(first)
    assert rauc["RAUC_SYSTEM_BOOTED_BOOTNAME"] == "A"
    assert rauc["RAUC_SYSTEM_COMPATIBLE"] == "modality-gateway-x86_64"
    scores = {line.split()[0]: line.split()[1] for line in first["security"]}
    assert set(scores) == {"mgw-edge.service", "mgw-network.service", "mgw-usb@sdz1.service",
                           "mgw-update-migrate.service", "mgw-update-commit.service"}
    assert all(re.fullmatch(r"\d+\.\d", s) for s in scores.values()), scores
    # measured by the booted systemd: every gateway unit at 2.0 or better, mgw-usb@ (root, mounts sticks) included
    assert all(float(score) <= 2.0 for score in scores.values()), scores
    # The journal message catalog: every MESSAGE_ID of ours is explained (`journalctl -x`) on the booted box.
    catalog = (ROOT / "systemd/catalog/mgw.catalog").read_text()
    ours = re.findall(r"^-- (5f1d5c0a0e9b4d6c9b8f3b7c2a1e\w{4})$", catalog, re.M)
    assert first["catalog"] == [str(len(ours))], first.get("catalog")
    assert first["catalog-entry"] == ["5f1d5c0a0e9b4d6c9b8f3b7c2a1e0001 mgw: mgw service started"], first
    # The signed bundle installs into slot B.
    assert first["install-exit"] == ["0"], first.get("install")

    # Then slot B boots; its commit gate fails (no device.toml, no cloud), so B is marked bad and
    # the box reboots (mgw-update-commit.service says so on the console).
    assert re.search(r"slot B marked bad", text), text[-3000:]

    # Last, GRUB has fallen back to A, which recorded the roll back and is marked good again.
    assert last["slot"] == ["A"]
    commit = _unit(last, "mgw-update-commit.service")
    assert (commit["ActiveState"], commit["SubState"], commit["Result"]) == ("active", "exited", "success")
    rauc = _rauc(last)
    assert rauc["RAUC_SYSTEM_BOOTED_BOOTNAME"] == "A"
    slots = {rauc.get(f"RAUC_SLOT_BOOTNAME_{i}"):
             rauc.get(f"RAUC_SLOT_BOOT_STATUS_{i}") for i in (1, 2)}
    assert slots.get("B") == "bad" and slots.get("A") == "good", rauc


@pytest.mark.timeout(3600)  # may build the image first
def test_bundle_is_refused_when_signed_by_a_key_the_image_does_not_trust(image: Path, tmp_path: Path) -> None:
    """The image's keyring (the development CA image/build made) accepts the built bundle; the same
    content signed by another CA's key is refused, as `rauc install` on the box refuses it."""
    rauc = _tool("rauc")
    keyring = image / "keys/dev-ca.pem"
    if not keyring.is_file():
        _missing("the image was built with a production keyring (MGW_RAUC_KEYRING): no development CA here")
    ok = subprocess.run([rauc, "info", f"--keyring={keyring}", str(image / "update.raucb")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    key, cert = tmp_path / "other.key", tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=not the vendor", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    forged = tmp_path / "forged.raucb"
    out = subprocess.run([rauc, "resign", f"--keyring={keyring}", f"--cert={cert}", f"--key={key}",
                          "--signing-keyring", str(cert), str(image / "update.raucb"), str(forged)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    refused = subprocess.run([rauc, "info", f"--keyring={keyring}", str(forged)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "signature" in refused.stderr.lower(), refused.stderr
