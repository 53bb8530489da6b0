"""systemd units, sysusers/tmpfiles, udev rule and sysctl: checked by systemd's own tools offline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.peers import _missing

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))
MAX_EXPOSURE = 3.0


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        _missing(f"{name} not installed (apt-get install systemd)")
    return path


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root with the host's system units, /usr/bin/mgw, and ours under /etc/systemd/system."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/mgw").write_text("#!/bin/sh\n")
    (root / "usr/bin/mgw").chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, root / "etc/systemd/system" / unit)
    return root


def _instances() -> list[str]:
    return [u.replace("@.", "@sdb1.") for u in UNITS]


def test_units_verify_clean_when_checked_by_systemd_analyze(unit_root: Path) -> None:
    assert {"mgw-edge.service", "mgw-cloud.service", "mgw-usb@.service"} <= set(UNITS)
    out = subprocess.run([_tool("systemd-analyze"), "verify", f"--root={unit_root}", *_instances()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stderr + out.stdout


def test_verify_catches_a_typo_when_a_unit_has_an_unknown_key(unit_root: Path) -> None:
    unit = unit_root / "etc/systemd/system/mgw-edge.service"
    unit.write_text(unit.read_text().replace("UMask=0077", "UMask=0077\nProtectSystm=strict"))
    out = subprocess.run([_tool("systemd-analyze"), "verify", f"--root={unit_root}", "mgw-edge.service"],
                         capture_output=True, text=True, timeout=60)
    assert "Unknown key 'ProtectSystm'" in out.stderr


def _exposure(unit: Path) -> float:
    out = subprocess.run([_tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert found, out.stdout[-500:] + out.stderr
    return float(found.group(1))


@pytest.mark.parametrize("unit", ["mgw-edge.service", "mgw-cloud.service", "mgw-fleet.service",
                                  "mgw-network.service"])
def test_exposure_is_at_most_3_when_analyzed_offline(unit: str) -> None:
    assert _exposure(SYSTEMD / unit) <= MAX_EXPOSURE


def test_usb_handler_exposure_is_at_most_2_when_analyzed_offline() -> None:
    """mgw-usb@ runs as root (it mounts sticks): no network, only its own stick, its mount private; the
    enrolment a bundle starts runs in mgw-provision@ as the service user, the bundle a credential."""
    assert _exposure(SYSTEMD / "mgw-usb@.service") <= 2.0
    assert _exposure(SYSTEMD / "mgw-provision@.service") <= 2.0
    text = (SYSTEMD / "mgw-usb@.service").read_text()
    for line in ("PrivateNetwork=yes", "PrivateDevices=yes", "DeviceAllow=/dev/%I rw", "PrivateMounts=yes",
                 '--provision-command "/usr/lib/mgw/provision-stick %I"'):
        assert line in text, line
    text = (SYSTEMD / "mgw-provision@.service").read_text()
    for line in ("User=mgw", "CapabilityBoundingSet=\n", "LoadCredential=bundle:/run/gateway-usb/%i.bundle",
                 "ExecStart=/usr/bin/mgw provision --bundle %d/bundle"):
        assert line in text, line


def test_exposure_rises_above_3_when_hardening_is_removed(tmp_path: Path) -> None:
    """The check can fail: a unit without its hardening lines scores as exposed."""
    lines = (SYSTEMD / "mgw-edge.service").read_text().splitlines()
    keep = [line for line in lines if not re.match(r"(Protect|Restrict|Private|SystemCall|Capab|NoNew)", line)]
    bare = tmp_path / "mgw-edge.service"
    bare.write_text("\n".join(keep) + "\n")
    assert _exposure(bare) > MAX_EXPOSURE


def test_edge_unit_is_notify_with_watchdog_and_start_limits_when_read() -> None:
    text = (SYSTEMD / "mgw-edge.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=", "StateDirectory=gateway",
                 "ConfigurationDirectory=gateway", "RuntimeDirectory=gateway", "User=mgw",
                 "ExecStart=/usr/bin/mgw edge run", "ConditionPathExists=/var/lib/gateway/device.toml"):
        assert line in text, line


@pytest.mark.parametrize("unit, command", [("mgw-cloud.service", "cloud run"), ("mgw-fleet.service", "cloud fleet"),
                                           ("mgw-enrol.service", "cloud enrol")])
def test_cloud_unit_is_supervised_with_watchdog_and_restart_when_read(unit: str, command: str) -> None:
    text = (SYSTEMD / unit).read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=", "StateDirectory=gateway",
                 "User=mgw", f"ExecStart=/usr/bin/mgw {command} --config /etc/gateway/cloud.toml"):
        assert line in text, line


def test_sysusers_and_tmpfiles_create_user_and_dirs_when_applied_to_a_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for kind in ("sysusers.d", "tmpfiles.d"):
        (tmp_path / "usr/lib" / kind).mkdir(parents=True)
        shutil.copy(SYSTEMD / kind / "mgw.conf", tmp_path / "usr/lib" / kind / "mgw.conf")
    out = subprocess.run([_tool("systemd-sysusers"), f"--root={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("mgw:"))
    uid = int(entry.split(":")[2])
    assert entry.endswith(":/var/lib/gateway:/usr/sbin/nologin") and uid < 1000  # a system user
    out = subprocess.run([_tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    state = tmp_path / "var/lib/gateway"
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700 and state.stat().st_uid == uid


def test_udev_rule_wants_the_usb_unit_without_run_when_read() -> None:
    rules = [line for line in (SYSTEMD / "udev/99-mgw-usb.rules").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(rules) == 1
    rule = rules[0]
    assert 'ENV{ID_BUS}=="usb"' in rule and 'TAG+="systemd"' in rule and "RUN" not in rule
    wanted = re.search(r'ENV\{SYSTEMD_WANTS\}\+="([^"]+)"', rule)
    assert wanted and wanted.group(1) == "mgw-usb@%k.service"
    assert (SYSTEMD / "mgw-usb@.service").exists()


def test_sysctl_file_sets_known_keys_when_parsed() -> None:
    settings = dict(
        (k.strip(), v.strip()) for k, v in (
            line.split("=", 1) for line in (SYSTEMD / "sysctl.d/60-mgw-network.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")))
    assert settings["net.ipv4.tcp_congestion_control"] == "bbr" and settings["net.core.default_qdisc"] == "fq"
    documented = (ROOT / "docs/operations.md").read_text()
    for key in settings:
        assert f"`{key}`" in documented, f"{key} is not explained in docs/operations.md"
