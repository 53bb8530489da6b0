"""A full disk: the edge's state directory on a small tmpfs, DCMTK storescu as the modality.

While the uplink is down nothing can be purged (nothing is acknowledged), so the box fills
up and answers 0xA700; when the uplink returns, acknowledged instances are purged oldest
first and the box accepts again.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.peers import _missing, dcmtk, dcmtk_env, dimse_statuses, real_images, require_root, wait_for
from tests.system.reconcile import acknowledged_count, state_count

TMPFS_MIB = 32
WATERMARKS = {"high_water_percent": 50.0, "low_water_percent": 15.0}


def _store(port: int, path: Path) -> int:
    args = [dcmtk("storescu"), "-d", "-aet", "MODALITY", "-aec", EDGE_AE, "127.0.0.1", str(port), str(path)]
    out = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    statuses = dimse_statuses(out.stdout + out.stderr)
    assert len(statuses) == 1, out.stdout[-2000:] + out.stderr[-2000:]
    return statuses[0]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[LoopbackDeployment]:
    require_root("to mount a tmpfs")
    try:
        MosquittoBroker(tmp_path / "probe")
    except Exception as exc:  # noqa: BLE001 - only to skip or fail with the reason
        _missing(str(exc))
    d = LoopbackDeployment(tmp_path / "d", edge_overrides={"spool": WATERMARKS})
    d.edge_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700", "tmpfs", str(d.edge_dir)],
                   check=True)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(d.edge_dir)], check=False)


def _instances(source: Path, folder: Path, n: int) -> list[Path]:
    """``n`` distinct instances of ``source`` (new SOP Instance UIDs): the box would answer a
    re-sent one from what it holds, without spooling it (docs/conformance.md 4.3)."""
    folder.mkdir()
    ds = dcmread(source)
    out = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(folder / f"{i}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def _used_percent(d: LoopbackDeployment) -> float:
    st = os.statvfs(d.edge_dir)
    return 100.0 * (st.f_blocks - st.f_bfree) / st.f_blocks


@pytest.mark.needs_root
def test_store_is_refused_with_a700_then_accepted_after_purge_when_the_disk_fills(
        small_disk: LoopbackDeployment, tmp_path: Path) -> None:
    d = small_disk
    big = _instances(next(p for p in real_images() if p.name == "RG1_UNCI.dcm"), tmp_path / "big", 7)  # 7 MB each
    d.broker.stop()  # nothing can be acknowledged, so nothing may be purged
    statuses = []
    for instance in big[:6]:
        statuses.append(_store(d.dicom_port, instance))
        if statuses[-1] == 0xA700:
            break
        wait_for(lambda n=statuses.count(0): state_count(d, "packed") == n, 60, "the instance packed")
    assert statuses[-1] == 0xA700, statuses
    accepted = statuses.count(0x0000)
    assert accepted >= 1
    assert state_count(d, "packed") == accepted  # every accepted instance is still held
    wait_for(lambda: "high-water mark reached" in (d.root / "edge.log").read_text(), 60, "the alert")
    d.broker.start()  # the uplink returns: acknowledgements, then a purge of the oldest
    wait_for(lambda: acknowledged_count(d) == accepted, 120, "the cloud acknowledgements")
    # one acknowledged 7 MB blob alone is above the low-water mark (15 % of 32 MiB): only a purge gets below
    wait_for(lambda: _used_percent(d) < WATERMARKS["low_water_percent"], 60, "a purge below the low-water mark")
    assert state_count(d, "purged") >= 1
    assert _store(d.dicom_port, big[-1]) == 0x0000
    log = (d.root / "edge.log").read_text()
    assert "purged early to free disk space" in log
