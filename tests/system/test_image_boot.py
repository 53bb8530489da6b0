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
roll back.

Then, in the same run, the provisioned path (``mgw.test_commit``): a cloud brought up on the host by
`mgw cloud init` (CA, broker, enrolment, one ingest worker, all bound to the host's loopback) is
reached by the guest only through QEMU's user networking, restricted (``restrict=on``: no route
anywhere) but for two ``guestfwd`` relays from 10.0.2.100 to the broker's and the enrolment's
loopback ports. The test plugs a FAT stick holding a signed provisioning bundle into the running
box (QMP ``device_add usb-storage``): udev starts ``mgw-usb@sda``, which hands the bundle to
``mgw-provision@sda`` (enrolment) and restarts the edge. Once the agent the boot report started
says the box is provisioned, the test pulls the stick; the agent installs the same bundle again
and reboots into B, whose commit gate must pass (the edge serves, C-ECHO answers, the probe study
is acknowledged by the cloud, held for the settle window) and commit B. Last, DCMTK storescu on the
host sends a study through a ``hostfwd`` (host loopback to the guest's port 104) and the test finds
it byte-exact in the cloud archive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, FileDataset, dcmread

from gateway.adapters import ports
from gateway.cloud import backends
from gateway.config import load_cloud
from gateway.loopback import await_ports
from gateway.paths import Paths
from tests.peers import _missing, dcmtk, dcmtk_env, real_images, require_root, wait_for
from tests.system.test_cloud_init import PASSWORD, Host

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("MGW_IMAGE_OUT", "/var/tmp/mgw-image/out"))
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ESP_OFFSET = 1024 * 1024  # image/build: the ESP starts at 1 MiB
BOOT_TIMEOUT_S = 900.0  # three boots; under TCG each takes minutes
GUEST_CLOUD = "10.0.2.100"  # the cloud as the guest sees it: guestfwd relays to the host's loopback, nothing else
GUEST_BOX = "10.0.2.15"  # the address QEMU's user networking gives the guest by DHCP
GUEST_HOST = "10.0.2.2"  # where connections through a hostfwd come from, seen in the guest
BOX = "qemu-ct-1"


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


def _reports_in(text: str) -> list[dict[str, list[str]]]:
    """Each complete boot report in the console's text: key -> the rest of each of its lines."""
    reports = []
    for block in re.findall(r"MGW-REPORT-BEGIN\n(.*?)MGW-REPORT-END", text, re.S):
        report: dict[str, list[str]] = {}
        for line in block.splitlines():
            m = re.search(r"MGW-REPORT (\S+) ?(.*)$", line.strip())  # after journald's console prefix
            if m:
                report.setdefault(m.group(1), []).append(m.group(2))
        reports.append(report)
    return reports


def _unit(report: dict[str, list[str]], name: str) -> dict[str, str]:
    """ActiveState, SubState, Result and ConditionResult of one unit, from `systemctl show`."""
    (line,) = [v for v in report["unit"] if v.startswith(name + " ")]
    return dict(pair.split("=", 1) for pair in line.split()[1:])


def _rauc(report: dict[str, list[str]]) -> dict[str, str]:
    pairs = (v.split("=", 1) for v in report.get("rauc", []) if "=" in v)
    return {k: v.strip("'") for k, v in pairs}


# -- the cloud on the host ---------------------------------------------------------------------------
class Cloud(Host):
    broker_port = 0
    enrol_port = 0

    @property
    def cloud_toml(self) -> Path:
        return self.root / "etc/gateway/cloud.toml"

    @property
    def state(self) -> Path:
        return self.root / "var/lib/gateway"


def _mgw(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"mgw {' '.join(args)}: {out.stdout}{out.stderr}"
    return out


def _loopback_only(cloud: Cloud) -> None:
    """`mgw cloud init` makes listeners for boxes on every interface; here the host's loopback only."""
    conf = cloud.state / "broker/mosquitto.conf"
    text, n = re.subn(r"^(listener \d+) 0\.0\.0\.0$", r"\1 127.0.0.1", conf.read_text(), flags=re.M)
    assert n == 1, text
    conf.write_text(text)
    toml = cloud.cloud_toml.read_text()
    assert 'enrol_host = "0.0.0.0"' in toml, toml
    cloud.cloud_toml.write_text(toml.replace('enrol_host = "0.0.0.0"', 'enrol_host = "127.0.0.1"'))


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    """CA, broker, enrolment and one ingest worker from `mgw cloud init --hostname 10.0.2.100`, run as
    processes from their units' ExecStart= (as tests/system/test_cloud_init.py does), on the loopback."""
    password = tmp_path / "admin.password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    started: list[Cloud] = []

    def attempt(port: int) -> Cloud:
        cloud = Cloud(tmp_path / f"cloud-{port}")
        started.append(cloud)
        cloud.root.mkdir()
        _mgw("cloud", "init", "--dir", str(cloud.root), "--units-dir", str(cloud.root / "units"),
             "--hostname", GUEST_CLOUD, "--broker-port", str(port), "--enrol-port", "0", "--console-port", "0",
             "--metrics-port", "0", "--workers", "1", "--admin-password-file", str(password))
        _loopback_only(cloud)
        broker = cloud.start("mgw-broker.service")
        log = cloud.state / "broker/data/mosquitto.log"
        ports.wait_listening(broker, [port], "mosquitto from mgw-broker.service",
                             ports.appended(log, cloud.root / "mgw-broker.service.log"), 30)
        cloud.broker_port = port
        return cloud

    try:
        cloud = ports.on_free_port(attempt)
        enrol = cloud.start("mgw-enrol.service")
        cloud.enrol_port = await_ports(cloud.state, "enrolment", enrol)["https"]
        await_ports(cloud.state, "ingest-ingest-1", cloud.start("mgw-ingest@.service", "1"))
        yield cloud
    finally:
        for each in started:
            each.stop()


def _stick(cloud: Cloud, image: Path, tmp: Path) -> Path:
    """A FAT stick image holding a provisioning bundle signed with the image's development key: the box's
    AE title, port 104, the listener on its DHCP address, and the one modality, storescu via the hostfwd."""
    key = image / "keys/dev-bundle.key"
    if not key.is_file():
        _missing("the image was built with production bundle signers (MGW_BUNDLE_SIGNERS): no development key")
    bundle = tmp / "MGW-PROVISION.bundle"
    _mgw("cloud", "bundle", "--config", str(cloud.cloud_toml), "--signing-key", str(key), "--box", BOX,
         "--site", "qemu", "--modality", "CT", "--url", f"https://{GUEST_CLOUD}:{cloud.enrol_port}",
         "--ae-title", "MGW", "--dicom-port", "104", "--dicom-bind", GUEST_BOX, "--peer", f"STORESCU@{GUEST_HOST}",
         "--out", str(bundle))
    stick = tmp / "stick.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "MGW-STICK", str(stick), "16384"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(stick), str(bundle), "::/MGW-PROVISION.bundle"], check=True)
    return stick


RELAY = """import os, socket, sys, threading
peer = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while data := os.read(0, 65536):
        peer.sendall(data)
    peer.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := peer.recv(65536):
    os.write(1, data)
"""


def _network(cloud: Cloud | None, tmp: Path, dicom_port: int = 0) -> list[str]:
    """User networking; with a cloud, restricted (no route out) but for relays to its loopback ports,
    and with ``dicom_port``, the host's loopback port that reaches the box's DICOM port 104."""
    if cloud is None:
        return ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    relay = tmp / "relay.py"  # QEMU runs one per guest connection, the connection on its stdin and stdout
    relay.write_text(RELAY)
    forwards = "".join(f",guestfwd=tcp:{GUEST_CLOUD}:{port}-cmd:{sys.executable} {relay} {port}"
                       for port in (cloud.broker_port, cloud.enrol_port))
    if dicom_port:
        forwards += f",hostfwd=tcp:127.0.0.1:{dicom_port}-{GUEST_BOX}:104"
    return ["-netdev", f"user,id=net0,restrict=on{forwards}", "-device", "virtio-net-pci,netdev=net0"]


class Qmp:
    """QEMU's machine protocol on a Unix socket: one command at a time, events skipped."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("r")
        json.loads(self.lines.readline())  # the greeting
        self.call("qmp_capabilities")

    def call(self, command: str, **arguments: Any) -> Any:
        self.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        while True:
            answer = json.loads(self.lines.readline())
            if "return" in answer:
                return answer["return"]
            assert "error" not in answer, f"{command}: {answer['error']}"

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def _on_console(console: Path, vm: subprocess.Popen[bytes], done: Callable[[str], bool], timeout_s: float,
                what: str) -> str:
    """Wait until ``done`` holds for the console's text (or QEMU ended); the text."""
    def text() -> str:
        return console.read_bytes().decode("utf-8", "replace").replace("\r", "") if console.exists() else ""
    try:
        wait_for(lambda: done(text()) or vm.poll() is not None, timeout_s, what)
    except BaseException:
        print(text()[-6000:])
        raise
    seen = text()
    assert done(seen), f"QEMU ended before {what}; console ends:\n{seen[-6000:]}"
    return seen


def _rolled_back_in(text: str) -> bool:
    """A report from slot A after slot B was marked bad: the whole failed-update path has run."""
    marked = text.find("slot B marked bad")
    return marked >= 0 and "MGW-REPORT slot A" in text[marked:] and "MGW-REPORT-END" in text[marked:]


def _committed_in(text: str) -> bool:
    """A report from slot B after the agent installed the bundle again: B's commit gate has decided."""
    installed = text.find("MGW-AGENT install-exit 0")
    return installed >= 0 and bool(re.search(r"MGW-REPORT slot B.*MGW-REPORT-END", text[installed:], re.S))


def _check_committed(report: dict[str, list[str]], text: str) -> None:
    """Boot 4, slot B: provisioned and reaching the cloud, its commit gate passed and B is committed."""
    assert report["slot"] == ["B"], report
    edge = _unit(report, "mgw-edge.service")
    assert (edge["ActiveState"], edge["SubState"]) == ("active", "running"), report.get("why")
    commit = _unit(report, "mgw-update-commit.service")
    assert (commit["ActiveState"], commit["SubState"], commit["Result"]) == ("active", "exited", "success"), \
        report.get("commit")
    assert not [u for u in report.get("failed", []) if u.startswith("mgw-")], report.get("why")
    rauc = _rauc(report)
    assert rauc["RAUC_SYSTEM_BOOTED_BOOTNAME"] == "B"
    slots = {rauc.get(f"RAUC_SLOT_BOOTNAME_{i}"): rauc.get(f"RAUC_SLOT_BOOT_STATUS_{i}") for i in (1, 2)}
    assert slots.get("B") == "good", rauc
    assert "slot B marked bad" not in text[text.find("MGW-AGENT install-exit 0"):]


def _content(ds: Dataset) -> list[tuple[int, str, Any]]:
    """Every element but group lengths (an encoding detail DCMTK may add or drop on the way), pixels included."""
    return [(e.tag, e.VR, e.value) for e in ds.iterall() if e.tag.element != 0]


def _archived(cloud: Cloud, sent: list[Path]) -> dict[str, FileDataset] | None:
    """Every sent instance as the cloud archive holds it, by SOP Instance UID, each read from its object
    decrypted in memory (``Archive.open`` checks its size and SHA-256 against the index); None until all are."""
    settings = load_cloud([cloud.cloud_toml])
    archive = backends.open_archive(settings, Paths.from_env(settings.cloud.state_dir, base=cloud.cloud_toml.parent))
    wanted = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sent}
    try:
        found = {r.identity.sop_instance_uid: dcmread(BytesIO(b"".join(archive.open(r))))
                 for r in archive.instances() if r.identity.sop_instance_uid in wanted}
    finally:
        archive.close()
    return found if len(found) == len(wanted) else None


def _check_rolled_back(reports: list[dict[str, list[str]]], text: str) -> None:
    """Boots 1 to 3: the unprovisioned box, the bundle installed, slot B refused by its gate, back on A."""
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
                           "mgw-provision@sdz1.service", "mgw-update-migrate.service", "mgw-update-commit.service"}
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


@pytest.mark.timeout(7200)  # may build the image first (minutes), then three boots under TCG (minutes each)
def test_failed_update_rolls_back_then_the_box_is_provisioned_from_a_stick_when_booted(
        image: Path, cloud: Cloud, tmp_path: Path) -> None:
    qemu = _tool("qemu-system-x86_64")
    _tool("mkfs.vfat")
    disk = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(image / "modality-gateway.raw"), str(disk)], check=True)
    os.truncate(disk, 8 * 1024**3)  # room for systemd-repart to grow the data partition (to 4 GiB at least)
    # as an installer does after writing the image to a larger disk: the backup GPT to the disk's end
    subprocess.run(["sfdisk", "--quiet", "--relocate", "gpt-bak-std", str(disk)], check=True)
    _set_grubenv(disk, tmp_path, MGW_CMDLINE="mgw.boot_report mgw.test_bundle=/dev/vdb mgw.test_commit")
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    shutil.copy(image / "update.raucb", bundle_dir / "update.raucb")
    bundle_disk = tmp_path / "bundle.ext4"
    size_mib = (bundle_dir / "update.raucb").stat().st_size // 2**20 + 64
    subprocess.run(["mkfs.ext4", "-q", "-d", str(bundle_dir), str(bundle_disk), f"{size_mib}M"], check=True)
    stick = _stick(cloud, image, tmp_path)
    vars_fd = tmp_path / "OVMF_VARS.fd"
    shutil.copy(OVMF_VARS, vars_fd)
    kvm = _kvm_usable()
    console, qmp_socket = tmp_path / "console.log", tmp_path / "qmp.sock"
    dicom_port = ports.free_port()  # the host's loopback end of the hostfwd to the box's port 104
    cmd = [qemu, "-machine", "q35,accel=" + ("kvm" if kvm else "tcg"), "-cpu", "host" if kvm else "max",
           "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
           "-qmp", f"unix:{qmp_socket},server=on,wait=off",
           "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
           "-drive", f"if=pflash,format=raw,file={vars_fd}",
           "-drive", f"if=virtio,format=raw,file={disk}",
           "-drive", f"if=virtio,format=raw,readonly=on,file={bundle_disk}",
           "-device", "qemu-xhci,id=xhci", "-drive", f"if=none,id=stick,format=raw,file={stick}",
           *_network(cloud, tmp_path, dicom_port)]
    qemu_log = tmp_path / "qemu.log"
    timings: dict[str, float] = {}
    began = time.monotonic()
    with qemu_log.open("wb") as log:
        vm = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        # Boots 1 to 3: the unprovisioned box, a bundle whose gate fails, the roll back.
        text = _on_console(console, vm, _rolled_back_in, BOOT_TIMEOUT_S * (1 if kvm else 3), "the roll back")
        timings["rolled back"] = time.monotonic() - began
        _check_rolled_back(_reports_in(text), text)

        # Boot 3 goes on: a provisioning stick plugged in; the agent says when the edge runs.
        qmp = Qmp(qmp_socket)
        try:
            qmp.call("device_add", driver="usb-storage", bus="xhci.0", drive="stick", id="stick0")
            text = _on_console(console, vm, lambda t: "MGW-AGENT provisioned" in t, 900,
                               "the box provisioned from the stick")
            timings["provisioned"] = time.monotonic() - began
            # mgw-usb@sda (no network) handed the bundle to mgw-provision@sda, which enrolled and finished
            enrolled = re.search(r"MGW-AGENT unit mgw-provision@sda.service (.*)", text)
            assert enrolled and "Result=success" in enrolled.group(1), text[-6000:]
            # the cloud saw the enrolment the bundle started, from the guest through the relay
            assert "box enrolled BOX_ID=" + BOX in (cloud.root / "mgw-enrol.service.log").read_text()

            # Boot 4: the stick pulled, the agent installs the bundle again through the update hooks and
            # reboots into B, whose gate must pass: the edge serves, C-ECHO answers, the probe study is
            # acknowledged by the cloud through the relay, and all of it holds for the settle window.
            qmp.call("device_del", id="stick0")
            text = _on_console(console, vm, _committed_in, BOOT_TIMEOUT_S * (1 if kvm else 2),
                               "slot B's commit gate")
            timings["committed"] = time.monotonic() - began
            _check_committed(_reports_in(text)[-1], text)
        finally:
            qmp.close()

        # A study from DCMTK on the host, through the hostfwd to the committed box, into the archive.
        sent = [p for p in real_images() if p.name in ("693_UNCI.dcm", "MR2_UNCI.dcm")]
        store = subprocess.run([dcmtk("storescu"), "-aet", "STORESCU", "-aec", "MGW", "127.0.0.1", str(dicom_port),
                                *map(str, sent)], env=dcmtk_env(), capture_output=True, text=True, timeout=600)
        assert store.returncode == 0, store.stderr
        archived = wait_for(lambda: _archived(cloud, sent), 600, "the study from the booted box in the cloud archive")
        timings["archived"] = time.monotonic() - began
        assert archived is not None
        for path in sent:
            original = dcmread(path)
            assert _content(archived[str(original.SOPInstanceUID)]) == _content(original), path.name
    except BaseException:
        print(cloud.logs())
        raise
    finally:
        vm.kill()
        vm.wait(timeout=30)
        print("image boot timings (s since QEMU started):", {k: round(v) for k, v in timings.items()})


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
