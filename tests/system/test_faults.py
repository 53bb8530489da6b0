"""Fast fault injection with real processes: link cuts, a slow lossy link, the edge killed while
receiving. Every case ends with a reconciliation against the cloud archive. The long randomized
run is bench/faults.py."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.link_proxy import LinkProxy
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.peers import dcmtk, dcmtk_env, dimse_statuses, real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile, state_count
from tests.system.test_end_to_end import SLOW_UPLINK, _large_study, _send

pytestmark = pytest.mark.slow  # fault and schedule trials: the slow target (.ci/run runs it too)

Deploy = Callable[..., LoopbackDeployment]


@pytest.fixture
def proxied(deploy: Deploy) -> Iterator[tuple[LoopbackDeployment, LinkProxy]]:
    """A deployment whose edge reaches the broker only through a LinkProxy."""
    proxy = LinkProxy()
    overrides = {**SLOW_UPLINK, "mqtt": {"port": proxy.port}}
    d = deploy(edge_overrides=overrides)
    proxy.target = ("127.0.0.1", d.broker.port)
    try:
        yield d, proxy
    finally:
        proxy.close()


def _all_acknowledged(d: LoopbackDeployment, n: int) -> None:
    try:
        wait_for(lambda: acknowledged_count(d) >= n, 180, f"{n} cloud acknowledgements")
    except pytest.fail.Exception:
        print(d.log_tail())
        raise


def test_transfer_completes_once_when_the_link_is_cut_twice_mid_transfer(
        proxied: tuple[LoopbackDeployment, LinkProxy]) -> None:
    d, proxy = proxied
    files = _large_study()[1:]  # without the 7 MB CR: long enough to cut twice
    _send(d, files)

    def seen(text: str, n: int) -> bool:
        return (d.root / "edge.log").read_text().count(text) >= n

    for cut in (1, 2):
        wait_for(lambda n=cut: seen("uplink connected", n), 60, "the uplink (re)connected")
        wait_for(lambda: state_count(d, "sending") >= 1, 60, "a transfer in flight")
        proxy.cut()
        wait_for(lambda n=cut: seen("uplink lost", n), 30, "the edge to notice the cut")
        proxy.restore()
    _all_acknowledged(d, len(files))
    assert reconcile(d, files).clean


def test_transfer_completes_once_when_the_link_is_slow_and_drops_connections(
        proxied: tuple[LoopbackDeployment, LinkProxy]) -> None:
    d, proxy = proxied
    proxy.rate_bps = 400_000
    proxy.drop_after_bytes = 300_000  # every connection dies mid-stream after 300 kB
    files = _large_study()[1:]
    _send(d, files)
    wait_for(lambda: (d.root / "edge.log").read_text().count("uplink lost") >= 2, 120, "dropped connections")
    proxy.drop_after_bytes = 0
    _all_acknowledged(d, len(files))
    assert reconcile(d, files).clean


def _store_one(port: int, path: Path) -> int | None:
    """One C-STORE with DCMTK storescu; its DIMSE status, None if it got no response."""
    args = [dcmtk("storescu"), "-d", "-aet", "MODALITY", "-aec", EDGE_AE, "127.0.0.1", str(port), str(path)]
    out = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    statuses = dimse_statuses(out.stdout + out.stderr)
    return statuses[0] if statuses else None


def test_no_false_success_when_the_edge_is_killed_while_receiving(deploy: Deploy) -> None:
    d = deploy()
    big = next(p for p in real_images() if p.name == "RG1_UNCI.dcm")  # 7 MB
    slow = LinkProxy()  # the modality's link, throttled so that the kill lands mid-dataset
    slow.target, slow.rate_bps = ("127.0.0.1", d.dicom_port), 4_000_000
    result: list[int | None] = []
    sender = threading.Thread(target=lambda: result.append(_store_one(slow.port, big)))
    sender.start()
    wait_for(lambda: slow.bytes_moved > 3_000_000, 60, "a C-STORE half way")
    d.kill_edge()
    sender.join(120)
    slow.close()
    assert result == [None]  # the modality got no response: it was never told "stored"
    d.start_edge()
    assert state_count(d, "received") + state_count(d, "packed") == 0  # nothing half-stored was kept
    blobs = d.edge_dir / "spool" / "blobs"  # where the dataset was landing, in a file made ahead: swept
    assert [p.name for p in blobs.iterdir() if p.stat().st_size] == []
    assert _store_one(d.dicom_port, big) == 0x0000  # it sends again, as a modality does
    _all_acknowledged(d, 1)
    outcome = reconcile(d, [big])
    assert outcome.clean, outcome
    assert list((d.edge_dir / "spool" / "incoming").iterdir()) == []  # the partial file was swept


def test_lost_window_is_resent_when_the_broker_restarts_without_persistence_and_no_worker(deploy: Deploy) -> None:
    """Chunks published while no ingest worker is subscribed are dropped by a fresh broker;
    their window slots must expire so that they are sent again (bench/faults.py found this stall)."""
    d = deploy(edge_overrides=SLOW_UPLINK, broker_persistence=False)
    files = _large_study()[1:]
    _send(d, files)
    wait_for(lambda: state_count(d, "sending") >= 1, 60, "a transfer in flight")
    d.kill_cloud()
    d.broker.kill()
    d.broker.start()  # empty: no session, no subscription of the cloud
    wait_for(lambda: (d.root / "edge.log").read_text().count("uplink connected") >= 2, 30, "the edge reconnected")
    d.start_cloud()
    _all_acknowledged(d, len(files))
    assert reconcile(d, files).clean
