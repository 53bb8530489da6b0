"""Priority, bandwidth cap and stable-study detection with real processes and DCMTK storescu."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import pytest

from gateway.adapters.dicom_scu import storescu
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.peers import dcmtk, real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile, state_count

pytestmark = pytest.mark.slow  # schedule trials: the slow target (.ci/run runs it too)

Deploy = Callable[..., LoopbackDeployment]


def _rows(d: LoopbackDeployment, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql))


def test_stat_instance_overtakes_routine_ones_and_studies_complete_when_stable(deploy: Deploy) -> None:
    d = deploy(edge_overrides={
        "uplink": {"max_frame_bytes": 4096, "window_chunks": 4, "transfers_in_flight": 1},
        "priority": {"stat_calling_aets": ["ER"]},
        "spool": {"study_stable_s": 1.0}})
    dcmtk("storescu")
    by_name = {p.name: p for p in real_images()}
    routine = [by_name[n] for n in ("RG1_UNCI.dcm", "MR2_UNCI.dcm", "US1_UNCI.dcm")]
    stat = [by_name["693_UNCI.dcm"]]
    assert storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", routine).returncode == 0
    wait_for(lambda: state_count(d, "sending") >= 1, 60, "a routine transfer in flight")
    assert storescu("127.0.0.1", d.dicom_port, EDGE_AE, "ER", stat).returncode == 0
    wait_for(lambda: acknowledged_count(d) == 4, 180, "every instance acknowledged")
    order = [(ae, pr) for ae, pr, _ in _rows(d, "SELECT calling_ae, priority, acked_at FROM items ORDER BY acked_at")]
    assert ("ER", 2) in order
    assert order.index(("ER", 2)) < 3, order  # not last: it jumped the queue of routine transfers
    assert reconcile(d, routine + stat).clean
    log = (d.root / "edge.log").read_text()
    wait_for(lambda: (d.root / "edge.log").read_text().count("study complete") >= 2, 30, "both studies complete")
    log = (d.root / "edge.log").read_text()
    assert "INSTANCES=1" in log


def test_uplink_stays_under_its_cap_and_completes_when_throttled(deploy: Deploy) -> None:
    kbps = 2000
    d = deploy(edge_overrides={"uplink": {"max_kbps": kbps, "max_frame_bytes": 16384}})
    d.broker.stop()
    files = [next(p for p in real_images() if p.name == "MR2_UNCI.dcm")]
    assert storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files).returncode == 0
    wait_for(lambda: state_count(d, "packed") == 1, 60, "the instance packed")
    ((packed_bytes,),) = _rows(d, "SELECT packed_bytes FROM items")
    d.broker.start()
    started = time.monotonic()
    wait_for(lambda: acknowledged_count(d) == 1, 120, "the acknowledgement")
    elapsed = time.monotonic() - started
    rate = kbps * 1000 / 8
    burst = rate * 0.5
    assert elapsed >= (packed_bytes - burst) / rate * 0.9, (packed_bytes, elapsed)
    assert reconcile(d, files).clean
