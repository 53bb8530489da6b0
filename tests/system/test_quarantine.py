"""`mgw quarantine` against a real spool: list, show, replay through a live edge, delete; no PHI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from gateway.adapters.store import SpoolStore
from gateway.core import spool
from gateway.core.spool import ItemState
from gateway.loopback import LoopbackDeployment
from tests.peers import real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile, state_count
from tests.system.test_end_to_end import _send

Deploy = Callable[..., LoopbackDeployment]


def mgw(d: LoopbackDeployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "quarantine", *args, "--config", str(d.edge_toml)],
                          capture_output=True, text=True, timeout=60)


def _quarantine_first(d: LoopbackDeployment, reason: str) -> int:
    store = SpoolStore(d.edge_dir / "spool.db")
    try:
        (item,) = store.in_state(ItemState.PACKED)
        store.transition(item.id, spool.CloudRejected(reason=reason), 0.0)
        return item.id
    finally:
        store.close()


def _blobs(d: LoopbackDeployment) -> list[Path]:
    """The files in spool/blobs/ holding data (the listener also keeps a few empty ones made ahead)."""
    return [p for p in (d.edge_dir / "spool" / "blobs").iterdir() if p.stat().st_size]


def test_replayed_item_is_archived_once_when_it_had_been_quarantined(deploy: Deploy) -> None:
    d = deploy()
    d.broker.stop()
    files = [next(p for p in real_images() if p.name == "693_UNCI.dcm")]
    _send(d, files)
    wait_for(lambda: state_count(d, "packed") == 1, 60, "the instance packed")
    d.kill_edge()
    item_id = _quarantine_first(d, "cloud: TOO_LARGE")
    d.start_edge()
    d.broker.start()
    listed = json.loads(mgw(d, "list", "--json").stdout)
    assert [(e["id"], e["kind"], e["reason"]) for e in listed] == [(str(item_id), "item", "cloud: TOO_LARGE")]
    assert listed[0]["sop_class"] == "CT Image Storage" and listed[0]["blob_present"]
    out = mgw(d, "show", str(item_id))
    assert out.returncode == 0 and "CT Image Storage" in out.stdout
    meta = dcmread(files[0], stop_before_pixels=True)
    for phi in (str(meta.PatientName), str(meta.PatientID), meta.SOPInstanceUID, meta.StudyInstanceUID):
        assert phi not in out.stdout + json.dumps(listed)
    assert mgw(d, "replay", str(item_id)).returncode == 0
    wait_for(lambda: acknowledged_count(d) == 1, 60, "the replayed instance acknowledged")
    assert reconcile(d, files).clean
    out = mgw(d, "list")
    assert out.returncode == 0 and "quarantine is empty" in out.stdout


def test_delete_removes_the_blob_and_keeps_the_row_when_an_operator_gives_up(deploy: Deploy) -> None:
    d = deploy()
    d.broker.stop()
    _send(d, [next(p for p in real_images() if p.name == "US1_UNCI.dcm")])
    wait_for(lambda: state_count(d, "packed") == 1, 60, "the instance packed")
    d.kill_edge()
    item_id = _quarantine_first(d, "cloud: BAD_MANIFEST")
    blobs_before = _blobs(d)
    assert len(blobs_before) == 1
    bad = mgw(d, "replay", "999")
    assert bad.returncode == 1 and "no quarantined item" in bad.stderr
    deleted = json.loads(mgw(d, "delete", str(item_id), "--json").stdout)
    assert deleted["id"] == str(item_id)
    assert _blobs(d) == []
    assert state_count(d, "purged") == 1 and state_count(d, "quarantined") == 0
    assert mgw(d, "show", str(item_id)).returncode == 1


def test_unreadable_dataset_file_is_listed_and_deletable_but_not_replayable(deploy: Deploy, tmp_path: Path) -> None:
    d = deploy()
    qdir = d.edge_dir / "spool" / "quarantine"
    (qdir / "abc.dcm").write_bytes(b"\0" * 100)
    listed = json.loads(mgw(d, "list", "--json").stdout)
    assert [(e["id"], e["kind"], e["bytes"]) for e in listed] == [("file:abc.dcm", "file", 100)]
    out = mgw(d, "replay", "file:abc.dcm")
    assert out.returncode == 1 and "cannot be replayed" in out.stderr
    assert mgw(d, "show", "file:../spool.db").returncode == 1
    assert mgw(d, "delete", "file:abc.dcm").returncode == 0
    assert not (qdir / "abc.dcm").exists()
