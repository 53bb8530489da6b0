"""The whole path with real peers: DCMTK modality -> edge -> mosquitto -> cloud archive.

Each test runs `mgw edge run` and `mgw cloud run` as real processes against a
real mosquitto, sends real images with DCMTK storescu, injects a fault, and
ends with a reconciliation against the cloud archive.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.adapters.dicom_scu import storescu
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.console_auth import bearer, deployment_token
from tests.orthanc import orthanc
from tests.peers import dcmtk, echo, real_images, wait_for
from tests.system.reconcile import (
    acknowledged_count,
    edge_items,
    forward_states,
    frame_sizes,
    reconcile,
    staged_chunks,
    state_count,
)

Deploy = Callable[..., LoopbackDeployment]
_databases = itertools.count()
# Small frames and a small window make a transfer long enough to cut in the middle.
SLOW_UPLINK = {"uplink": {"max_frame_bytes": 4096, "window_chunks": 4, "ack_timeout_s": 2.0}}


def _send(d: LoopbackDeployment, files: list[Path]) -> None:
    dcmtk("storescu")
    result = storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files)
    assert result.returncode == 0, result.stdout + result.stderr


def _wait_all_acknowledged(d: LoopbackDeployment, n: int, timeout_s: float = 120.0) -> None:
    try:
        wait_for(lambda: acknowledged_count(d) >= n, timeout_s, f"{n} cloud acknowledgements")
    except pytest.fail.Exception:
        print(d.log_tail())
        raise


def _index_tables(index: str, request: pytest.FixtureRequest) -> dict[str, dict[str, object]]:
    """Cloud TOML tables for an index backend: nothing for SQLite, a fresh database for PostgreSQL."""
    if index == "sqlite":
        return {}
    cluster = request.getfixturevalue("pg_cluster")
    return {"index": {"backend": "postgres", "dsn": cluster.create_database(f"e2e_{os.getpid()}_{next(_databases)}")}}


def _large_study() -> list[Path]:
    by_name = {p.name: p for p in real_images()}
    return [by_name[n] for n in ("RG1_UNCI.dcm", "MR2_UNCI.dcm", "693_UNCI.dcm", "US1_UNCI.dcm")]


@pytest.mark.parametrize("index", ["sqlite", "postgres"])
def test_study_is_archived_byte_identical_when_a_modality_sends_it(
        deploy: Deploy, index: str, request: pytest.FixtureRequest) -> None:
    d = deploy(cloud_overrides=_index_tables(index, request))
    assert echo(d.dicom_port, EDGE_AE).returncode == 0
    files = real_images()
    modalities = {subprocess.run(["dcmdump", "+P", "0008,0060", str(f)], capture_output=True, text=True).stdout
                  for f in files}
    assert len(modalities) >= 3
    _send(d, files)
    _wait_all_acknowledged(d, len(files))
    result = reconcile(d, files)
    assert result.clean, result
    assert result.archived_rows == len(files)
    # The fleet service (mgw cloud fleet) keeps the box's exam records in the same backend.
    token = deployment_token(d.fleet_toml)  # the console answers an authenticated principal only
    wait_for(lambda: _fleet_images(d, token) == len(files), 60, "every image counted by the fleet")
    assert (d.cloud_dir / "fleet.db").exists() == (index == "sqlite")


def _fleet_images(d: LoopbackDeployment, token: str) -> int:
    try:
        request = urllib.request.Request(d.dashboard_url + "api/v1/modalities",
                                         headers=bearer(token))
        with urllib.request.urlopen(request, timeout=10, context=d.console_context()) as rsp:  # noqa: S310
            return sum(m["images"] for m in json.loads(rsp.read())["modalities"])
    except OSError:
        return -1


def _archive_versions(d: LoopbackDeployment, uid: str) -> list[tuple[str, float | None]]:
    with sqlite3.connect(f"file:{d.cloud_dir / 'archive.db'}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT sha256, superseded_at FROM instances WHERE sop_instance_uid = ? "
                                 "ORDER BY stored_at", (uid,)))


def test_resent_study_is_neither_spooled_nor_sent_again_and_a_changed_instance_becomes_the_current_version(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy()
    files = real_images()
    _send(d, files)
    _wait_all_acknowledged(d, len(files))
    items_before = edge_items(d)
    _send(d, files)  # the technologist sends the whole study again: every C-STORE answered success
    assert edge_items(d) == items_before  # nothing spooled, so nothing goes over the uplink again
    resent = (d.root / "edge.log").read_text(errors="replace").count("re-sent instance already held")
    assert resent == len(files)
    result = reconcile(d, files)
    assert result.clean and result.archived_rows == len(files), result
    # a corrected header: the same SOP Instance UID, other bytes -> a new version, sent and current
    changed = tmp_path / "corrected.dcm"
    ds = dcmread(files[0])
    ds.InstitutionName = "Corrected Institution"
    ds.save_as(changed, enforce_file_format=True)
    _send(d, [changed])
    assert len(edge_items(d)) == len(items_before) + 1
    _wait_all_acknowledged(d, len(files) + 1)
    versions = _archive_versions(d, str(ds.SOPInstanceUID))
    assert len(versions) == 2 and versions[0][1] is not None and versions[1][1] is None, versions


@pytest.mark.slow  # a fault trial: in the slow target (.ci/run runs it too)
def test_transfer_completes_once_when_the_broker_restarts_mid_transfer(deploy: Deploy) -> None:
    d = deploy(edge_overrides=SLOW_UPLINK, broker_persistence=False)
    files = _large_study()
    _send(d, files)
    wait_for(lambda: state_count(d, "sending") >= 1, 60, "a transfer in flight")
    d.broker.kill()
    d.broker.start()
    _wait_all_acknowledged(d, len(files))
    result = reconcile(d, files)
    assert result.clean, result


@pytest.mark.slow  # a fault trial: in the slow target (.ci/run runs it too)
def test_transfer_completes_once_when_the_edge_is_killed_mid_transfer(deploy: Deploy) -> None:
    d = deploy(edge_overrides=SLOW_UPLINK)
    files = _large_study()
    _send(d, files)
    wait_for(lambda: state_count(d, "sending") >= 1, 60, "a transfer in flight")
    d.kill_edge()
    assert acknowledged_count(d) < len(files)
    d.start_edge()
    _wait_all_acknowledged(d, len(files))
    result = reconcile(d, files)
    assert result.clean, result


@pytest.mark.slow  # a fault trial: in the slow target (.ci/run runs it too)
def test_transfer_completes_once_when_the_cloud_is_killed_mid_transfer(deploy: Deploy) -> None:
    d = deploy(edge_overrides=SLOW_UPLINK)
    files = _large_study()
    _send(d, files)
    wait_for(lambda: state_count(d, "sending") >= 1, 60, "a transfer in flight")
    d.kill_cloud()
    d.start_cloud()
    _wait_all_acknowledged(d, len(files))
    result = reconcile(d, files)
    assert result.clean, result


@pytest.mark.slow  # a fault trial: in the slow target (.ci/run runs it too)
@pytest.mark.parametrize("index", ["sqlite", "postgres"])
def test_transfer_completes_once_when_one_of_three_workers_is_killed_mid_transfer(
        deploy: Deploy, index: str, request: pytest.FixtureRequest) -> None:
    # A broker keeps routing a share of the group's messages to a dead worker's session until it
    # expires (mosquitto queues them there); a short expiry bounds that, the edge resends the rest.
    overrides = {"ingest": {"session_expiry_s": 2}, **_index_tables(index, request)}
    d = deploy(edge_overrides=SLOW_UPLINK, cloud_workers=3, cloud_overrides=overrides)
    files = _large_study()
    _send(d, files)
    wait_for(lambda: state_count(d, "sending") >= 1, 60, "a transfer in flight")
    wait_for(lambda: staged_chunks(d) >= 2, 60, "chunks staged, awaiting reassembly")
    d.kill_cloud_worker(1)  # SIGKILL, mid-transfer; not restarted
    assert acknowledged_count(d) < len(files)
    _wait_all_acknowledged(d, len(files))
    result = reconcile(d, files)
    assert result.clean, result
    assert result.archived_rows == len(files)
    assert all(p is not None and p.poll() is None for n, p in enumerate(d.clouds) if n != 1)


@pytest.mark.slow  # a fault trial: in the slow target (.ci/run runs it too)
def test_study_arrives_byte_identical_when_the_broker_has_tight_packet_and_inflight_limits(deploy: Deploy) -> None:
    # A clustered broker may announce a small Maximum Packet Size and Receive Maximum in its
    # CONNACK; the edge packs to the first and keeps in flight no more than the second.
    d = deploy(broker_limits={"max_packet_size": 8192, "max_inflight_messages": 2},
               edge_overrides={"uplink": {"window_chunks": 16, "ack_timeout_s": 5.0}})
    files = _large_study()
    _send(d, files)
    _wait_all_acknowledged(d, len(files))
    result = reconcile(d, files)
    assert result.clean, result
    log = (d.root / "broker" / "mosquitto.log").read_text(errors="replace")
    assert "too large" not in log.lower() and "exceeded" not in log.lower()
    assert frame_sizes(d) and max(frame_sizes(d)) < 8192  # packed to the broker's limit, not 128 KiB


def test_items_packed_for_a_larger_broker_limit_are_packed_again_when_the_broker_lowers_it(deploy: Deploy) -> None:
    d = deploy()
    d.broker.kill()
    files = _large_study()
    _send(d, files)  # packed offline at the configured 128 KiB frames
    wait_for(lambda: state_count(d, "packed") == len(files), 60, "items packed offline")
    assert min(frame_sizes(d)) > 8192
    d.broker.limits = {"max_packet_size": 8192}
    d.broker.start()
    _wait_all_acknowledged(d, len(files))
    result = reconcile(d, files)
    assert result.clean, result
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        packed = conn.execute("SELECT frame_bytes, packed_bytes FROM items WHERE frame_bytes IS NOT NULL").fetchall()
    # an item whose whole payload fits the new limit (693_UNCI packs to ~5 kB) is sent as it was
    assert all(frame < 8192 for frame, total in packed if total >= 8192) and any(frame < 8192 for frame, _ in packed)
    assert "packing again" in (d.root / "edge.log").read_text()


def test_study_reaches_a_real_pacs_byte_identical_when_the_cloud_forwards_it(deploy: Deploy, tmp_path: Path) -> None:
    with orthanc(tmp_path / "orthanc") as pacs:
        d = deploy(cloud_overrides={"forward": {"stow_url": pacs.stow_url}})
        files = _large_study()
        _send(d, files)
        _wait_all_acknowledged(d, len(files))
        assert reconcile(d, files).clean
        wait_for(lambda: forward_states(d) == {"DONE": len(files)}, 60, "every object forwarded")
        received_by_edge = {sha for _, _, sha in edge_items(d)}
        held = {hashlib.sha256(pacs.instance_file(i)).hexdigest() for i in pacs.instances()}
        assert held == received_by_edge  # modality -> edge -> broker -> cloud -> PACS, every byte
