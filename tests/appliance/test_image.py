"""The image recipe, validated without building it (the build and a boot: tests/system/test_image_boot.py).

`image/build --stage DIR` stages the extra tree; systemd's own tools check the
presets and the data partition; GRUB checks its configuration; the RAUC configuration
names the A/B slots, the keyring and the handlers that are shipped.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from gateway import config
from tests.peers import _missing

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "image"


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "extra"
    out = subprocess.run([str(IMAGE / "build"), "--stage", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return path


def test_stage_holds_units_hooks_and_config_when_staged(stage: Path) -> None:
    for rel in ("usr/lib/systemd/system/mgw-edge.service", "usr/lib/systemd/system/mgw-usb@.service",
                "usr/lib/sysusers.d/mgw.conf", "usr/lib/udev/rules.d/99-mgw-usb.rules",
                "usr/lib/repart.d/50-data.conf", "etc/fstab", "etc/gateway/gateway.toml", "etc/rauc/system.conf",
                "usr/lib/mgw/update-slot", "usr/lib/systemd/system/mgw-update-commit.service",
                "usr/share/mgw/firmware_hooks/ArtifactCommit_Enter_10_health_gate",
                "usr/share/doc/modality-gateway/operations.md", "opt/mgw/requirements.lock"):
        assert (stage / rel).is_file(), rel


def test_presets_enable_the_edge_but_not_the_cloud_when_applied(stage: Path) -> None:
    systemctl = shutil.which("systemctl") or _missing("systemctl not installed")
    for unit in ("mgw-edge.service", "mgw-cloud.service"):
        out = subprocess.run([systemctl, f"--root={stage}", "preset", unit], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    wants = stage / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "mgw-edge.service").is_symlink()
    assert not (wants / "mgw-cloud.service").exists()


def test_site_config_is_valid_when_layered_with_a_device_file(stage: Path, tmp_path: Path) -> None:
    device = tmp_path / "device.toml"
    device.write_text('[box]\nid = "box-1"\ncloud_public_key = "' + "A" * 43 + '="\n')
    settings = config.load_edge([stage / "etc/gateway/gateway.toml", device])
    assert settings.dicom.port == 104 and settings.box.id == "box-1"


def test_data_partition_is_created_by_repart_when_the_disk_is_blank(tmp_path: Path) -> None:
    repart = shutil.which("systemd-repart") or _missing("systemd-repart not installed")
    disk = tmp_path / "disk.img"
    out = subprocess.run([repart, f"--definitions={IMAGE / 'files/repart.d'}", "--empty=create", "--size=6G",
                          "--dry-run=no", "--json=short", str(disk)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (part,) = json.loads(out.stdout)
    assert part["type"] == "var" and part["label"] == "mgw-data" and part["raw_size"] >= 4 * 1024**3
    fstab = (IMAGE / "files/fstab").read_text()
    assert re.search(r"^LABEL=mgw-data\s+/var\s+ext4\s", fstab, re.M)  # mounted by the label repart gave it


def test_lock_pins_every_runtime_dependency_when_compared_with_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = {re.split("==", line)[0].lower() for line in (IMAGE / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    for dep in deps:
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower()
        assert name in locked, f"{name} is a dependency but not pinned in image/requirements.lock"


def test_grub_config_parses_when_checked_by_grub(stage: Path) -> None:
    check = shutil.which("grub-script-check") or _missing("grub-script-check not installed (grub-common)")
    out = subprocess.run([check, str(IMAGE / "files/boot/grub.cfg")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rauc_config_names_two_root_slots_the_keyring_and_the_handlers_when_staged(stage: Path) -> None:
    conf = configparser.ConfigParser()
    conf.read(stage / "etc/rauc/system.conf")
    assert conf["system"]["bootloader"] == "grub" and conf["system"]["bundle-formats"] == "-plain"
    slots = {name: conf[name] for name in conf.sections() if name.startswith("slot.")}
    assert {n: (s["device"], s["bootname"]) for n, s in slots.items()} == {
        "slot.rootfs.0": ("/dev/disk/by-partlabel/rootfs.0", "A"),
        "slot.rootfs.1": ("/dev/disk/by-partlabel/rootfs.1", "B")}
    assert conf["keyring"]["path"] == "/etc/rauc/keyring.pem"
    for handler in conf["handlers"].values():  # shipped in the image, executable
        assert (stage / handler.lstrip("/")).stat().st_mode & 0o111, handler


def test_update_units_migrate_before_the_edge_and_commit_after_it_when_enabled(stage: Path) -> None:
    systemctl = shutil.which("systemctl") or _missing("systemctl not installed")
    units = ("mgw-update-migrate.service", "mgw-update-commit.service")
    out = subprocess.run([systemctl, f"--root={stage}", "preset", *units], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for unit in units:
        assert (stage / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink()
    system = stage / "usr/lib/systemd/system"
    assert "Before=mgw-edge.service" in (system / units[0]).read_text()
    assert re.search(r"^After=mgw-edge.service", (system / units[1]).read_text(), re.M)


def _exposure(unit: Path) -> float:
    analyze = shutil.which("systemd-analyze") or _missing("systemd-analyze not installed")
    out = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert found, out.stdout[-500:] + out.stderr
    return float(found.group(1))


@pytest.mark.parametrize("unit", ["mgw-update-migrate.service", "mgw-update-commit.service"])
def test_update_units_expose_at_most_2_when_analyzed_offline(unit: str) -> None:
    assert _exposure(IMAGE / "files/systemd" / unit) <= 2.0


def test_image_units_verify_clean_when_checked_by_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze") or _missing("systemd-analyze not installed")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/lib/mgw").mkdir(parents=True)
    shutil.copytree(IMAGE / "files/mgw", root / "usr/lib/mgw", dirs_exist_ok=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    units = sorted(p.name for p in (IMAGE / "files/systemd").glob("*.service"))
    for unit in units:
        shutil.copy(IMAGE / "files/systemd" / unit, root / "etc/systemd/system" / unit)
    out = subprocess.run([analyze, "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr + out.stdout


def test_image_ships_no_network_file_and_enables_the_renderer_when_staged(stage: Path) -> None:
    """No catch-all DHCP: only what `mgw network render` writes at boot gives a link an address."""
    assert not list(stage.rglob("*.network"))
    systemctl = shutil.which("systemctl") or _missing("systemctl not installed")
    out = subprocess.run([systemctl, f"--root={stage}", "preset", "mgw-network.service"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert (stage / "etc/systemd/system/systemd-networkd.service.wants/mgw-network.service").is_symlink()


def test_network_render_writes_only_the_designated_links_when_run_on_provisioned_settings(
        stage: Path, tmp_path: Path) -> None:
    import sys

    device = tmp_path / "device.toml"
    device.write_text('[dicom]\nbind_host = "192.168.10.5"\n[network]\nuplink_interfaces = ["enp1s0"]\n'
                      'modality_interfaces = ["aa:bb:cc:dd:ee:01"]\nmodality_prefix_length = 24\n')
    out_dir = tmp_path / "run-network"
    out_dir.mkdir()
    (out_dir / "80-mgw-uplink-mac.network").write_text("stale, from an earlier render")
    (out_dir / "10-other.network").write_text("not ours: left alone")
    run = subprocess.run([sys.executable, "-m", "gateway", "network", "render", "--config",
                          str(stage / "etc/gateway/gateway.toml"), "--config", str(device), "--out", str(out_dir)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["10-other.network", "70-mgw-modality-mac.network",
                                                         "80-mgw-uplink.network"]
    modality = (out_dir / "70-mgw-modality-mac.network").read_text()
    assert "MACAddress=aa:bb:cc:dd:ee:01" in modality and "Address=192.168.10.5/24" in modality
    uplink = (out_dir / "80-mgw-uplink.network").read_text()
    assert "Name=enp1s0\n" in uplink and "Path=!*-usb-*" in uplink and "DHCP=yes" in uplink
    assert (out_dir / "80-mgw-uplink.network").stat().st_mode & 0o777 == 0o644  # networkd reads it


def test_network_render_keeps_the_default_uplink_and_fails_when_the_settings_name_a_usb_link(
        stage: Path, tmp_path: Path) -> None:
    import sys

    device = tmp_path / "device.toml"
    device.write_text('[network]\nuplink_interfaces = ["usb*"]\n')
    out_dir = tmp_path / "run-network"
    run = subprocess.run([sys.executable, "-m", "gateway", "network", "render", "--config",
                          str(stage / "etc/gateway/gateway.toml"), "--config", str(device), "--out", str(out_dir)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "usb*" in run.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["80-mgw-uplink.network"]
    assert "Name=eno* ens* enp* eth*" in (out_dir / "80-mgw-uplink.network").read_text()
