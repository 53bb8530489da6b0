"""Edge footprint: peak RSS and CPU of `mgw edge run` while it receives and forwards a study.

    .venv/bin/python bench/footprint.py [--mb 1000] [--image MR2_UNCI.dcm]

A loopback deployment (mosquitto, one cloud ingest worker, one edge, each a real process).
DCMTK storescu sends a study of real images with fresh UIDs (bench/ingest.py builds it) on one
association; the bench waits until the cloud has acknowledged every instance, then reads the
edge's peak RSS (VmHWM) and CPU seconds from /proc, and the same for the cloud worker.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import make_study, storescu  # noqa: E402

from gateway.loopback import EDGE_AE, LoopbackDeployment  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def proc_figures(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds user+system) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return hwm_kb / 1024, (int(fields[11]) + int(fields[12])) / TICKS


def acknowledged(edge_dir: Path) -> int:
    db = next(edge_dir.rglob("spool.db"), None)
    if db is None:
        return 0
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM items WHERE state = 'acknowledged'").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1000.0)
    parser.add_argument("--image", default="MR2_UNCI.dcm")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mgw-bench-footprint-"))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    try:
        count, total = make_study(root / "study", args.image, args.mb)
        print(f"study: {count} x {args.image} with fresh UIDs, {total / 1e6:.1f} MB")
        deploy = LoopbackDeployment(root / "deploy", edge_overrides={"dicom": {"max_pdu_bytes": 0}})
        deploy.start()
        try:
            assert deploy.edge is not None and deploy.cloud is not None
            t0 = time.perf_counter()
            t_send = storescu(deploy.dicom_port, EDGE_AE, root / "study")
            deadline = time.monotonic() + args.timeout_s
            while (done := acknowledged(deploy.edge_dir)) < count and time.monotonic() < deadline:
                time.sleep(0.5)
            t_all = time.perf_counter() - t0
            edge_rss, edge_cpu = proc_figures(deploy.edge.pid)
            cloud_rss, cloud_cpu = proc_figures(deploy.cloud.pid)
        finally:
            deploy.stop()
        print(f"received in {t_send:.1f} s ({total / t_send / 1e6:.0f} MB/s); {done}/{count} acknowledged by the "
              f"cloud after {t_all:.1f} s ({total / t_all / 1e6:.1f} MB/s end to end on loopback)")
        print(f"edge  peak RSS {edge_rss:6.1f} MB  CPU {edge_cpu:6.1f} s ({edge_cpu / t_all * 100:.0f}% of a core)")
        print(f"cloud peak RSS {cloud_rss:6.1f} MB  CPU {cloud_cpu:6.1f} s ({cloud_cpu / t_all * 100:.0f}% of a core)")
        return 0 if done == count else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
