"""Time to cloud over a clinic link: our edge -> broker -> cloud beside DCMTK storescu -> storescp.

    sudo .venv/bin/python bench/clinic_link.py [--mb 500] [--cc cubic|bbr|reno] [--cuts N]

Needs root (network namespaces, tc). The edge side lives in its own network namespace joined to
the cloud side (this namespace) by a veth pair shaped with tc netem: 20 Mbit/s each way, 40 ms
each way (80 ms RTT), 1% loss on the uplink (edge -> cloud). The modality (DCMTK storescu,
TCP_NODELAY=1) sends a study of real images with fresh UIDs:

  (a) DIMSE: storescu in the edge namespace -> DCMTK storescp on the cloud side, across the link;
  (b) ours: storescu -> `mgw edge run` on the edge side's loopback; the edge forwards over MQTT
      to mosquitto and `mgw cloud run` on the cloud side; done when the cloud has acknowledged
      every instance (the edge's spool says ACKNOWLEDGED).

Reports seconds for each, our compressed bytes (sealed frames) and goodput against the ideal
(compressed bytes / link rate). ``--cuts N`` takes the link down N times (3 s each, at random
moments) during (b) and reports the extra bytes the edge put on the wire per cut, against a run
without cuts. The congestion control (``--cc``) is set for the edge namespace, which sends.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import make_study  # noqa: E402

from gateway.adapters.mosquitto import MosquittoBroker, free_port  # noqa: E402
from gateway.loopback import EDGE_AE, LoopbackDeployment  # noqa: E402
from tests.peers import dcmtk, dcmtk_env  # noqa: E402

NS = "mgw7-edge"
VETH_EDGE, VETH_CLOUD = "mgw7e", "mgw7c"
EDGE_IP, CLOUD_IP = "10.77.7.2", "10.77.7.1"
RATE, ONE_WAY_DELAY, LOSS = "20mbit", "40ms", "1%"
LINK_BPS = 20e6


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def in_ns(*args: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *args]


def link_up(cc: str) -> None:
    link_down()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", VETH_CLOUD, "type", "veth", "peer", "name", VETH_EDGE)
    sh("ip", "link", "set", VETH_EDGE, "netns", NS)
    sh("ip", "addr", "add", f"{CLOUD_IP}/24", "dev", VETH_CLOUD)
    sh("ip", "link", "set", VETH_CLOUD, "up")
    sh(*in_ns("ip", "addr", "add", f"{EDGE_IP}/24", "dev", VETH_EDGE))
    sh(*in_ns("ip", "link", "set", VETH_EDGE, "up"))
    sh(*in_ns("ip", "link", "set", "lo", "up"))
    sh(*in_ns("tc", "qdisc", "add", "dev", VETH_EDGE, "root", "netem", "delay", ONE_WAY_DELAY,
              "loss", LOSS, "rate", RATE, "limit", "10000"))
    sh("tc", "qdisc", "add", "dev", VETH_CLOUD, "root", "netem", "delay", ONE_WAY_DELAY, "rate", RATE,
       "limit", "10000")
    sh(*in_ns("sysctl", "-w", f"net.ipv4.tcp_congestion_control={cc}"))


def link_down() -> None:
    sh("ip", "link", "del", VETH_CLOUD, check=False)
    sh("ip", "netns", "del", NS, check=False)


def edge_tx_bytes() -> int:
    return int(sh(*in_ns("cat", f"/sys/class/net/{VETH_EDGE}/statistics/tx_bytes")).stdout)


def storescu(port: int, called: str, host: str, study: Path) -> float:
    args = in_ns(dcmtk("storescu"), "-aet", "MODALITY", "-aec", called, "--max-pdu", "131072", "+sd",
                 host, str(port), str(study))
    t0 = time.perf_counter()
    done = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def dimse_run(root: Path, study: Path) -> float:
    out = root / "storescp"
    out.mkdir()
    port = free_port(CLOUD_IP)
    proc = subprocess.Popen([dcmtk("storescp"), "+B", "+xa", "+uf", "-aet", "REFERENCE", "-od", str(out),
                             str(port)], env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        return storescu(port, "REFERENCE", CLOUD_IP, study)
    finally:
        proc.terminate()
        proc.wait(10)


class ClinicDeployment(LoopbackDeployment):
    """The loopback deployment with the edge in the namespace behind the shaped link."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, edge_overrides={"mqtt": {"host": CLOUD_IP}, "dicom": {"max_pdu_bytes": 0},
                                               "uplink": {"ack_timeout_s": 30.0}})
        self.broker = MosquittoBroker(root / "broker", host=CLOUD_IP)

    def write_configs(self) -> None:
        super().write_configs()
        self.cloud_toml.write_text(self.cloud_toml.read_text().replace('"127.0.0.1"', f'"{CLOUD_IP}"'))

    def start_edge(self, wait_s: float = 30.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.edge = subprocess.Popen(
            in_ns(sys.executable, "-m", "gateway", "edge", "run", "--config", str(self.edge_toml)),
            stdout=subprocess.DEVNULL, stderr=open(self.root / "edge.log", "ab"), env=env)  # noqa: SIM115
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            echo = subprocess.run(in_ns(dcmtk("echoscu"), "-aec", EDGE_AE, "127.0.0.1", str(self.dicom_port)),
                                  env=dcmtk_env(), capture_output=True)
            if echo.returncode == 0:
                return
            time.sleep(0.2)
        raise SystemExit(f"the edge did not answer C-ECHO; see {self.root}/edge.log")


def edge_state(edge_dir: Path) -> tuple[int, int]:
    """(acknowledged items, sealed bytes of all packed items)."""
    db = next(edge_dir.rglob("spool.db"), None)
    if db is None:
        return 0, 0
    with sqlite3.connect(db, timeout=30) as conn:
        acked = conn.execute("SELECT count(*) FROM items WHERE state IN ('acknowledged', 'purged')").fetchone()[0]
        packed = conn.execute("SELECT coalesce(sum(packed_bytes), 0) FROM items").fetchone()[0]
    return int(acked), int(packed)


def ours_run(root: Path, study: Path, count: int, cuts: int, timeout_s: float) -> tuple[float, int, int]:
    """(seconds to all acknowledged, sealed bytes, bytes the edge put on the link)."""
    deploy = ClinicDeployment(root)
    deploy.start()
    stop = threading.Event()
    try:
        tx0 = edge_tx_bytes()
        t0 = time.perf_counter()
        cutter = threading.Thread(target=cut_link, args=(cuts, stop), daemon=True)
        cutter.start()
        storescu(deploy.dicom_port, EDGE_AE, "127.0.0.1", study)
        deadline = time.monotonic() + timeout_s
        while (state := edge_state(deploy.edge_dir))[0] < count and time.monotonic() < deadline:
            time.sleep(0.5)
        elapsed = time.perf_counter() - t0
        stop.set()
        cutter.join()
        if state[0] < count:
            raise SystemExit(f"only {state[0]}/{count} acknowledged after {timeout_s} s; see {root}")
        return elapsed, state[1], edge_tx_bytes() - tx0
    finally:
        stop.set()
        deploy.stop()


def cut_link(cuts: int, stop: threading.Event) -> None:
    rng = random.Random(7)  # noqa: S311 - timing jitter, not security
    for _ in range(cuts):
        if stop.wait(rng.uniform(5.0, 15.0)):
            return
        sh(*in_ns("ip", "link", "set", VETH_EDGE, "down"))
        time.sleep(3.0)
        sh(*in_ns("ip", "link", "set", VETH_EDGE, "up"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=500.0)
    parser.add_argument("--image", default="693_UNCI.dcm")
    parser.add_argument("--cc", default="cubic", choices=["cubic", "bbr", "reno"])
    parser.add_argument("--cuts", type=int, default=0)
    parser.add_argument("--skip-dimse", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=7200.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and tc")
    root = Path(tempfile.mkdtemp(prefix="mgw-bench-link-"))
    os.chmod(root, 0o755)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"link: veth + netem {RATE} each way, {ONE_WAY_DELAY} each way, {LOSS} loss edge->cloud; "
          f"congestion control {args.cc} on the sending side")
    try:
        count, total = make_study(root / "study", args.image, args.mb)
        print(f"study: {count} x {args.image} with fresh UIDs, {total / 1e6:.1f} MB")
        link_up(args.cc)
        if not args.skip_dimse:
            t_dimse = dimse_run(root, root / "study")
            print(f"{'DIMSE storescu -> storescp':<32} {t_dimse:8.1f} s  {total / t_dimse / 1e6:6.2f} MB/s of original")
        t_ours, sealed, wire = ours_run(root / "ours", root / "study", count, 0, args.timeout_s)
        ideal = sealed * 8 / LINK_BPS
        print(f"{'mgw edge -> MQTT -> cloud':<32} {t_ours:8.1f} s  {total / t_ours / 1e6:6.2f} MB/s of original; "
              f"sealed {sealed / 1e6:.1f} MB ({total / sealed:.2f}x), ideal {ideal:.1f} s -> "
              f"{ideal / t_ours * 100:.0f}% of ideal; {wire / 1e6:.1f} MB on the wire")
        if not args.skip_dimse:
            print(f"speed-up over DIMSE: {t_dimse / t_ours:.2f}x")
        if args.cuts:
            t_cut, _, wire_cut = ours_run(root / "ours-cut", root / "study", count, args.cuts, args.timeout_s)
            print(f"with {args.cuts} cuts of 3 s: {t_cut:.1f} s, {wire_cut / 1e6:.1f} MB on the wire, "
                  f"{(wire_cut - wire) / args.cuts / 1e6:.2f} MB extra per cut")
        return 0
    finally:
        link_down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
