"""USB sticks without hardware: the handler on a directory standing in for the mounted stick.

Provisioning runs a stand-in for `mgw provision` (issue 4 builds the real one)
through the same `--provision-command` seam; the emergency export and the cloud
import run for real against a loopback deployment.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import config
from gateway.adapters.dicom_scu import send_study
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolStore
from gateway.appliance import export, status, usb
from gateway.bundle import FILE_NAME as BUNDLE_FILE_NAME
from gateway.core.instance import InstanceIdentity
from gateway.edge import cache
from gateway.loopback import EDGE_AE, LoopbackDeployment
from gateway.paths import Paths
from tests.peers import real_images, require_root, wait_for
from tests.system.reconcile import archive_rows, state_count

MGW = str(Path(sys.executable).parent / "mgw")
STAND_IN = """
import json, sys
with open(sys.argv[1], "w") as fh:
    json.dump(sys.argv[2:], fh)
sys.exit(int(sys.argv[2 + sys.argv[2:].index("--bundle") + 1].endswith("bad.bundle")) * 3)
"""


def mgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MGW, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[str, Path]:
    script = tmp_path / "provision_stand_in.py"
    script.write_text(STAND_IN)
    record = tmp_path / "provision-args.json"
    return f"{sys.executable} {script} {record}", record


def test_provision_command_gets_the_bundle_when_the_stick_carries_one(
        tmp_path: Path, stand_in: tuple[str, Path]) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / usb.PROVISION_BUNDLE).write_bytes(b"signed bundle bytes")
    command, record = stand_in
    out = mgw("usb", "handle", "/dev/sdz1", "--mountpoint", str(stick), "--provision-command", command,
              env={"STATE_DIRECTORY": str(tmp_path / "state"), "CONFIGURATION_DIRECTORY": str(tmp_path / "etc")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "provision"
    assert json.loads(record.read_text()) == ["--bundle", str(stick / usb.PROVISION_BUNDLE)]
    assert "provisioning bundle applied" in out.stderr


def test_handler_fails_with_the_reason_when_provisioning_fails(tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / usb.PROVISION_BUNDLE).write_bytes(b"x")
    failing = f"{sys.executable} -c \"import sys; sys.exit('bundle signature invalid')\""
    out = mgw("usb", "handle", "/dev/sdz1", "--mountpoint", str(stick), "--provision-command", failing,
              env={"STATE_DIRECTORY": str(tmp_path / "state"), "CONFIGURATION_DIRECTORY": str(tmp_path / "etc")})
    assert out.returncode == 1 and "provisioning failed: bundle signature invalid" in out.stderr


def test_files_created_as_root_go_to_the_service_user_when_the_handler_is_done(tmp_path: Path) -> None:
    require_root("to create files for another user")
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    os.chown(state, 4242, 4242)
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / usb.PROVISION_BUNDLE).write_bytes(b"x")
    writes_identity = (f"{sys.executable} -c \"import pathlib; "
                       f"pathlib.Path('{state}/device.toml').write_text('x'); pathlib.Path('{state}/keys/box.key')"
                       f".write_text('k')\"")
    out = mgw("usb", "handle", "/dev/sdz1", "--mountpoint", str(stick), "--provision-command", writes_identity,
              env={"STATE_DIRECTORY": str(state), "CONFIGURATION_DIRECTORY": str(tmp_path / "etc")})
    assert out.returncode == 0, out.stderr
    for path in (state / "device.toml", state / "keys", state / "keys/box.key"):
        assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4242), path


def test_bundle_name_matches_what_the_provisioning_tools_write_when_compared() -> None:
    assert usb.PROVISION_BUNDLE == BUNDLE_FILE_NAME


def test_decide_exports_only_when_the_uplink_was_down_long_enough(tmp_path: Path) -> None:
    now = 10_000.0
    down = status.UplinkState(up=False, since=now - 3600)
    assert usb.decide(tmp_path, down, 3600.0, now) is usb.StickAction.EXPORT
    assert usb.decide(tmp_path, down, 3601.0, now) is usb.StickAction.IGNORE
    assert usb.decide(tmp_path, status.UplinkState(True, now - 9999), 1.0, now) is usb.StickAction.IGNORE
    assert usb.decide(tmp_path, None, 1.0, now) is usb.StickAction.IGNORE
    assert usb.decide(tmp_path, down, None, now) is usb.StickAction.IGNORE  # unprovisioned box
    (tmp_path / usb.PROVISION_BUNDLE).write_bytes(b"")
    assert usb.decide(tmp_path, down, 1.0, now) is usb.StickAction.PROVISION


def test_uplink_state_keeps_the_outage_start_when_the_service_restarts(tmp_path: Path) -> None:
    status.record_uplink(tmp_path, False, 100.0, at_start=True)
    status.record_uplink(tmp_path, False, 200.0, at_start=True)  # restart during the outage
    assert status.read_uplink(tmp_path) == status.UplinkState(False, 100.0)
    status.record_uplink(tmp_path, True, 300.0)
    status.record_uplink(tmp_path, False, 400.0, at_start=True)  # restart after it was up: down from now
    assert status.read_uplink(tmp_path) == status.UplinkState(False, 400.0)


def _export_config(tmp_path: Path, after_s: float) -> str:
    path = tmp_path / f"export-{after_s}.toml"
    path.write_text(f"[appliance]\nexport_after_down_s = {after_s}\n")
    return str(path)


def test_export_then_import_archives_every_unacked_instance_once_when_the_uplink_is_down(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy()
    d.kill_cloud()  # nothing gets acknowledged
    files = real_images()[:4]
    send_study("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files)
    wait_for(lambda: state_count(d, "received") == 0, 60, "every instance packed")
    d.broker.stop()
    wait_for(lambda: (s := status.read_uplink(d.edge_dir)) is not None and not s.up, 30, "the uplink to go down")
    stick = tmp_path / "stick"
    stick.mkdir()
    not_yet = mgw("usb", "handle", "/dev/sdz1", "--mountpoint", str(stick),
                  "--config", str(d.edge_toml), "--config", _export_config(tmp_path, 3600.0))
    assert not_yet.stdout.strip() == "ignore" and not any(stick.iterdir())
    out = mgw("usb", "handle", "/dev/sdz1", "--mountpoint", str(stick),
              "--config", str(d.edge_toml), "--config", _export_config(tmp_path, 0.0))
    assert out.returncode == 0 and out.stdout.strip() == "export", out.stderr
    (export_dir,) = stick.iterdir()
    manifest = json.loads((export_dir / export.MANIFEST_NAME).read_text())
    assert manifest["complete"] and len(manifest["transfers"]) == len(files)
    for f in export_dir.glob("*.mgwx"):  # sealed: no clear DICOM on the stick
        assert b"DICM" not in f.read_bytes()

    first = mgw("cloud", "import", str(stick), "--config", str(d.cloud_toml), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["stored"] == len(files)
    archived = archive_rows(d)
    assert sorted(sha for sha, _ in archived) == sorted(_spooled_hashes(d))
    again = mgw("cloud", "import", str(export_dir), "--config", str(d.cloud_toml), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["stored"] == len(files)
    assert archive_rows(d) == archived  # idempotent: nothing stored twice

    d.broker.start()  # the uplink returns: the cloud answers STORED for the exported transfers
    d.start_cloud()
    wait_for(lambda: state_count(d, "acknowledged") == len(files), 60, "the box to learn they are stored")
    assert archive_rows(d) == archived


def _spooled_hashes(d: LoopbackDeployment) -> list[str]:
    """SHA-256 of what the modality sent, as the edge recorded it (its blobs are sealed at rest)."""
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT sha256 FROM items")]


def test_import_seals_and_archives_items_when_they_were_not_packed_yet(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy()
    d.stop()
    settings = config.load_edge([d.edge_toml])
    paths = Paths.from_env(str(d.edge_dir))
    image = real_images()[0]
    blob = paths.blob_dir / f"unpacked{cache.SEALED_SUFFIX}"  # sealed at rest, as the edge spools it
    cache.write_sealed(blob, FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME), [image.read_bytes()])
    assert image.read_bytes()[128:132] == b"DICM" and b"DICM" not in blob.read_bytes()
    store = SpoolStore(paths.spool_db)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    store.add_received(InstanceIdentity(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3.4", study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1", transfer_syntax_uid="1.2.840.10008.1.2.1", size=image.stat().st_size,
        sha256=sha), "MODALITY", blob.name, time.time())
    store.close()
    (tmp_path / "stick").mkdir()
    summary = export.export_unacked(settings, paths, tmp_path / "stick")
    assert [t["item_id"] for t in summary.transfers] and summary.complete
    out = mgw("cloud", "import", str(summary.directory), "--config", str(d.cloud_toml), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["stored"] == 1, out.stderr
    assert [s for s, _ in archive_rows(d)] == [sha]


def test_import_refuses_a_file_when_it_was_altered_on_the_stick(
        deploy: Callable[..., LoopbackDeployment], tmp_path: Path) -> None:
    d = deploy()
    d.kill_cloud()
    send_study("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", real_images()[:1])
    wait_for(lambda: state_count(d, "received") == 0, 60, "the instance packed")
    d.stop()
    (tmp_path / "stick").mkdir()
    summary = export.export_unacked(config.load_edge([d.edge_toml]), Paths.from_env(str(d.edge_dir)),
                                    tmp_path / "stick")
    victim = next(summary.directory.glob("*.mgwx"))
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0x01
    victim.write_bytes(bytes(data))
    out = mgw("cloud", "import", str(summary.directory), "--config", str(d.cloud_toml), "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["unreadable"] == 1
    manifest_path = summary.directory / export.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["transfers"][0]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()  # a forger fixes the hash
    manifest_path.write_text(json.dumps(manifest))
    forged = mgw("cloud", "import", str(summary.directory), "--config", str(d.cloud_toml), "--json")
    assert forged.returncode == 1 and json.loads(forged.stdout)["incomplete"] == 1  # AES-GCM refused the chunk
    assert archive_rows(d) == []
