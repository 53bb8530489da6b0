"""The emergency export onto hostile, full and failing sticks, and the ownership hand-over.

Plain directories stand in for a mounted stick where links and special files must be planted
(FAT has none, and the mount refuses file systems that have them); real loop-mounted images
fill up and fail. After each: nothing outside the stick read or written, every item not
written named in the manifest, nothing half-written under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.appliance import export, usb
from gateway.appliance.export import read_frames
from tests.appliance.sticks import BOX_ID, Canary, EdgeBox, edge_box, kernel_mounts, make_image, mount_image, need_tools

NOW = 1_900_000_000.0
STAMP = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW))
EXPORT_NAME = f"{export.EXPORT_PREFIX}{BOX_ID}-{STAMP}"


def check_manifest(directory: Path, box: EdgeBox) -> dict:
    """The manifest says exactly what is in ``directory``: every file complete, every item either
    written or listed as failed, ``complete`` only when nothing failed."""
    manifest = json.loads((directory / export.MANIFEST_NAME).read_text())
    files = {t["file"]: t for t in manifest["transfers"]}
    assert set(os.listdir(directory)) == {export.MANIFEST_NAME, *files}  # no temporary or stray files
    for name, entry in files.items():
        data = (directory / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
        assert len(list(read_frames(directory / name))) == entry["frames"]
    written = {t["item_id"] for t in manifest["transfers"]}
    failed = {f["item_id"] for f in manifest["failed"]}
    assert written | failed == set(box.item_ids) and not written & failed
    assert all(f["reason"] for f in manifest["failed"])
    assert manifest["complete"] is (not failed)
    return manifest


def test_export_writes_everything_and_says_complete_when_nothing_fails(tmp_path: Path) -> None:
    box = edge_box(tmp_path, items=3, size=20_000)
    stick = tmp_path / "stick"
    stick.mkdir()
    summary = export.export_unacked(box.settings, box.paths, stick, NOW)
    assert summary.complete and summary.directory == stick / EXPORT_NAME
    assert check_manifest(summary.directory, box)["complete"] is True


def test_export_never_writes_through_a_link_named_like_the_export_folder(tmp_path: Path) -> None:
    box = edge_box(tmp_path, items=2, size=10_000)
    canary = Canary.plant(tmp_path / "box-folder")
    before, listing = canary.snapshot(), sorted(os.listdir(canary.path.parent))
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / EXPORT_NAME).symlink_to(canary.path.parent)  # "MGW-EXPORT-..." -> a folder on the box
    os.mkfifo(stick / f"{EXPORT_NAME}-1")
    summary = export.export_unacked(box.settings, box.paths, stick, NOW)
    assert summary.directory == stick / f"{EXPORT_NAME}-2" and summary.complete
    check_manifest(summary.directory, box)
    assert sorted(os.listdir(canary.path.parent)) == listing and canary.snapshot() == before
    assert (stick / EXPORT_NAME).is_symlink()


def test_export_lists_each_unreadable_item_and_is_not_complete_when_items_fail(tmp_path: Path) -> None:
    box = edge_box(tmp_path, items=4, size=10_000)
    canary = Canary.plant(tmp_path / "outside")
    before = canary.snapshot()
    blobs = sorted(box.paths.blob_dir.iterdir(), key=lambda p: int(p.name[4:].split(".")[0]))
    data = bytearray(blobs[1].read_bytes())
    data[-5] ^= 1  # altered at rest
    blobs[1].write_bytes(bytes(data))
    blobs[2].unlink()
    blobs[2].symlink_to(canary.path)  # the service user's folder: a link to a root file
    blobs[3].unlink()  # gone
    stick = tmp_path / "stick"
    stick.mkdir()
    summary = export.export_unacked(box.settings, box.paths, stick, NOW)
    manifest = check_manifest(summary.directory, box)
    assert not summary.complete and manifest["complete"] is False
    assert [t["item_id"] for t in manifest["transfers"]] == box.item_ids[:1]
    assert [f["item_id"] for f in manifest["failed"]] == box.item_ids[1:]
    assert canary.snapshot() == before
    assert not any(canary.secret in f.read_bytes() for f in summary.directory.iterdir())


def _small_stick_fs() -> str:
    return "vfat" if kernel_mounts("vfat") else "ext4"  # see tests/appliance/sticks.py


@pytest.mark.needs_root
def test_export_stops_and_reports_exactly_what_is_there_when_the_stick_fills_up(tmp_path: Path) -> None:
    need_tools()
    box = edge_box(tmp_path, items=12, size=400_000)
    image = make_image(tmp_path / "small.img", _small_stick_fs(), 4)
    with mount_image(image, tmp_path / "stick") as stick:
        summary = export.export_unacked(box.settings, box.paths, stick, NOW)
        manifest = check_manifest(summary.directory, box)
        assert summary.stopped == "the stick is full" and not summary.complete
        assert 0 < len(manifest["transfers"]) < len(box.item_ids)
        assert "no space left" in manifest["failed"][0]["reason"]
        assert all(f["reason"] == "not attempted: the stick is full" for f in manifest["failed"][1:])


@pytest.fixture
def failing_stick(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An ext4 stick whose backing store (a 3 MB tmpfs under a 32 MB image) runs out: the block
    device returns I/O errors mid-export, as a dying stick does. Yields (mountpoint, image)."""
    need_tools()
    backing = tmp_path / "backing"
    backing.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(backing)], check=True, timeout=60)
    try:
        image = make_image(backing / "stick.img", "ext4", 32)
        with mount_image(image, tmp_path / "stick") as stick:
            yield stick, image
    finally:
        subprocess.run(["umount", str(backing)], capture_output=True, timeout=60)


@pytest.mark.needs_root
def test_export_stops_and_leaves_only_complete_files_when_the_stick_fails_mid_export(
        tmp_path: Path, failing_stick: tuple[Path, Path]) -> None:
    box = edge_box(tmp_path, items=12, size=400_000)
    stick, image = failing_stick
    summary = export.export_unacked(box.settings, box.paths, stick, NOW)
    assert summary.stopped == "the stick failed" and not summary.complete
    assert {f["item_id"] for f in summary.failed} | {t["item_id"] for t in summary.transfers} == set(box.item_ids)
    assert "Input/output error" in summary.failed[0]["reason"] or "Read-only" in summary.failed[0]["reason"]
    subprocess.run(["umount", str(stick)], check=True, timeout=60)
    subprocess.run(["mount", "-o", "remount,size=64M", str(image.parent)], check=True, timeout=60)
    with mount_image(image, tmp_path / "again") as again:  # what a reader finds (rw: replays the journal)
        directory = again / summary.directory.name
        manifest = json.loads((directory / export.MANIFEST_NAME).read_text())
        assert manifest["complete"] is False
        written = {t["file"]: t for t in summary.transfers}
        for name in os.listdir(directory):
            if name.endswith(".mgwx") and not name.startswith("."):  # a final name: complete, as reported
                data = (directory / name).read_bytes()
                assert hashlib.sha256(data).hexdigest() == written[name]["sha256"]
                assert name in written
        assert {t["file"] for t in manifest["transfers"]} <= set(written)


# -- the hand-over of root-created files to the service user ------------------------------------

SERVICE_UID = 4242


def _state_with_root_files(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    os.chown(state, SERVICE_UID, SERVICE_UID)
    (state / "keys" / "box.key").write_text("k")
    (state / "device.toml").write_text("x")
    return state


@pytest.mark.needs_root
def test_hand_over_gives_root_files_away_but_follows_no_link_when_the_folder_holds_traps(tmp_path: Path) -> None:
    need_tools()
    state = _state_with_root_files(tmp_path)
    canary = Canary.plant(tmp_path / "etc")
    other = Canary.plant(tmp_path / "etc2")
    before, other_before = canary.snapshot(), other.snapshot()
    (state / "link").symlink_to(canary.path)
    (state / "dirlink").symlink_to(other.path.parent)
    os.link(canary.path, state / "hardlink")  # the service user cannot do this (protected_hardlinks); still
    os.mkfifo(state / "fifo")
    assert usb.hand_over(state) == 3  # keys/, keys/box.key, device.toml
    for path in (state / "keys", state / "keys/box.key", state / "device.toml"):
        assert (path.stat().st_uid, path.stat().st_gid) == (SERVICE_UID, SERVICE_UID), path
    assert canary.snapshot() == before and other.snapshot() == other_before
    assert os.lstat(state / "link").st_uid == 0


SWAPPER = """
import os, sys
state, target = sys.argv[1], sys.argv[2]
os.setgid(4242); os.setuid(4242)
print("racing", flush=True)
sub, tmp = os.path.join(state, "sub"), os.path.join(state, "sub.tmp")
for _ in range(int(sys.argv[3])):  # swap a folder of root files for a link to root's folder, and back
    os.rename(sub, tmp); os.symlink(target, sub); os.unlink(sub); os.rename(tmp, sub)
"""


@pytest.fixture
def world_traversable() -> Iterator[Path]:
    """A folder the service user can reach (pytest's tmp_path is root's, mode 0700)."""
    base = Path(tempfile.mkdtemp(prefix="mgw-handover-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.needs_root
def test_hand_over_never_reowns_a_root_file_elsewhere_when_the_service_user_swaps_folders_for_links(
        world_traversable: Path) -> None:
    """A process running as the service user races the walk, turning a folder into a link to a
    root-owned folder and back; whatever it wins, nothing outside the state folder changes owner."""
    need_tools()
    state, outside = world_traversable / "state", world_traversable / "root-folder"
    (state / "sub").mkdir(parents=True)
    outside.mkdir()
    os.chown(state, SERVICE_UID, SERVICE_UID)
    os.chown(state / "sub", SERVICE_UID, SERVICE_UID)
    for n in range(20):
        (state / "sub" / f"canary{n}").write_text("root")  # what the walk should hand over
        (outside / f"canary{n}").write_text("root")  # same names, outside
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(state), str(outside), "10000000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == b"racing\n"
        rounds = 0
        while swapper.poll() is None and rounds < 2000:
            usb.hand_over(state)
            rounds += 1
    finally:
        swapper.kill()
        _, err = swapper.communicate(timeout=30)
    assert rounds == 2000, err.decode()  # the swapper was still racing when we stopped
    assert [p.name for p in outside.iterdir() if p.lstat().st_uid != 0] == []
