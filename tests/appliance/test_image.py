"""The image recipe, validated without building it (a build needs root, network, loop devices and nspawn).

`image/build --stage DIR` stages the extra tree; systemd's own tools check the
presets and the data partition; mkosi parses the recipe (`mkosi summary`).
"""

from __future__ import annotations

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
                "usr/lib/repart.d/50-data.conf", "etc/fstab", "etc/gateway/gateway.toml",
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


def test_mkosi_accepts_the_recipe_when_asked_for_a_summary(stage: Path) -> None:
    mkosi = shutil.which("mkosi") or _missing("mkosi not installed (apt-get install mkosi)")
    out = subprocess.run([mkosi, "--extra-tree", str(stage), "summary"], cwd=IMAGE, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = re.findall(r"^[ \t]*([^:\n]+):[ \t]*(.*)$", out.stdout + out.stderr, re.M)  # mkosi 14: on stderr
    summary = {k.strip(): v.strip() for k, v in lines}
    assert summary["Distribution"] == "debian" and summary["Release"] == "bookworm"
    assert summary["Output Format"] == "gpt_squashfs" and summary["Read-only"] == "yes"
    assert summary["Bootable"] == "yes" and "mkosi.postinst" in summary["Postinstall Script"]


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
