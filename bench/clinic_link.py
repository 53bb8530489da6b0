"""Time to cloud over a clinic link: our edge -> broker -> cloud beside DCMTK storescu -> storescp.

    sudo .venv/bin/python bench/clinic_link.py [--mb 500] [--cc cubic|bbr|reno] [--cuts N] [--every-s 5]

Needs root (network namespaces, ethtool). The edge side lives in its own network namespace,
joined to the cloud side (this namespace) through a third namespace where bench/link_emulator.py
forwards frames between two veth pairs: 20 Mbit/s each way, 40 ms each way (80 ms RTT), 1%
random loss on the uplink (edge -> cloud). (The kernel here has no sch_netem, hence the user-space
emulator.) The modality (DCMTK storescu, TCP_NODELAY=1) sends a study of real images with fresh
UIDs:

  (a) DIMSE: storescu in the edge namespace -> DCMTK storescp on the cloud side, across the link;
  (b) ours: storescu -> `mgw edge run` on the edge side's loopback; the edge forwards over MQTT
      to mosquitto and `mgw cloud run` on the cloud side; done when the cloud has acknowledged
      every instance (the edge's spool says ACKNOWLEDGED).

Reports seconds for each, our compressed bytes (sealed frames) and goodput against the ideal
(compressed bytes / link rate); for ours also when the first 64 KiB reached the cloud side, when
the edge had the whole study and when the last acknowledgement came (``--every-s`` prints the
edge's progress as it goes). The anchor, in the same run: one plain TCP flow carrying the same
number of bytes from the edge namespace over the same link (``--skip-anchor`` leaves it out).
``--uplink KEY=INT`` sets an ``[uplink]`` key of the edge (``transfers_in_flight=4``).
``--cuts N`` takes the link down N times (``--cut-s`` each, at
random moments) during (b) and reports the extra bytes the edge put on the wire per cut, against
a run without cuts. ``--cc`` asks for a congestion control in the edge namespace, which sends;
the one in use is printed (some sandboxes forbid setting it, then the kernel default stays).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import make_study  # noqa: E402

from gateway.adapters.mosquitto import MosquittoBroker  # noqa: E402
from gateway.loopback import EDGE_AE, LoopbackDeployment  # noqa: E402
from tests.peers import dcmtk, dcmtk_env, dcmtk_storescp  # noqa: E402

NS, NS_LINK = "mgw7-edge", "mgw7-link"
VETH_EDGE, VETH_CLOUD, LINK_EDGE, LINK_CLOUD = "mgw7e0", "mgw7c0", "mgw7e1", "mgw7c1"
EDGE_IP, CLOUD_IP = "10.77.7.2", "10.77.7.1"
RATE_MBIT, ONE_WAY_DELAY_MS, LOSS = 20.0, 40.0, 0.01
LINK_BPS = RATE_MBIT * 1e6


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def in_ns(*args: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *args]


def link_up(cc: str) -> subprocess.Popen[bytes]:
    """Namespaces, veths and the emulator; returns the emulator process."""
    link_down()
    for ns in (NS, NS_LINK):
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", VETH_CLOUD, "type", "veth", "peer", "name", LINK_CLOUD)
    sh("ip", "link", "add", VETH_EDGE, "type", "veth", "peer", "name", LINK_EDGE)
    sh("ip", "link", "set", LINK_CLOUD, "netns", NS_LINK)
    sh("ip", "link", "set", LINK_EDGE, "netns", NS_LINK)
    sh("ip", "link", "set", VETH_EDGE, "netns", NS)
    sh("ip", "addr", "add", f"{CLOUD_IP}/24", "dev", VETH_CLOUD)
    sh(*in_ns("ip", "addr", "add", f"{EDGE_IP}/24", "dev", VETH_EDGE))
    for prefix, dev in (((), VETH_CLOUD), (in_ns(), VETH_EDGE), (in_link(), LINK_CLOUD), (in_link(), LINK_EDGE)):
        # frames of at most one MTU with real checksums: the emulator forwards them as they are
        sh(*prefix, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off")
        sh(*prefix, "ip", "link", "set", dev, "up")
    sh(*in_ns("ip", "link", "set", "lo", "up"))
    if cc:  # some sandboxes forbid it: then the kernel's default stays, and is reported
        sh(*in_ns("sysctl", "-w", f"net.ipv4.tcp_congestion_control={cc}"), check=False)
    emulator = subprocess.Popen(in_link(sys.executable, str(Path(__file__).resolve().parent / "link_emulator.py"),
                                        LINK_EDGE, LINK_CLOUD, "--rate-mbit", str(RATE_MBIT),
                                        "--delay-ms", str(ONE_WAY_DELAY_MS), "--loss", str(LOSS)))
    with socket.create_server((CLOUD_IP, 0)) as probe:  # the link passes a TCP handshake
        probe_port = probe.getsockname()[1]
        connect = f"import socket; socket.create_connection(('{CLOUD_IP}', {probe_port}), timeout=5).close()"
        if sh(*in_ns(sys.executable, "-c", connect), check=False).returncode != 0:
            emulator.terminate()
            raise SystemExit("the emulated link does not pass a TCP handshake")
    return emulator


def congestion_control() -> str:
    return sh(*in_ns("cat", "/proc/sys/net/ipv4/tcp_congestion_control")).stdout.strip()


def link_down() -> None:
    sh("ip", "link", "del", VETH_CLOUD, check=False)
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "netns", "del", NS_LINK, check=False)


def in_link(*args: str) -> list[str]:
    return ["ip", "netns", "exec", NS_LINK, *args]


def edge_tx_bytes() -> int:
    return int(sh(*in_ns("cat", f"/sys/class/net/{VETH_EDGE}/statistics/tx_bytes")).stdout)


def storescu(port: int, called: str, host: str, study: Path) -> float:
    args = in_ns(dcmtk("storescu"), "-aet", "MODALITY", "-aec", called, "--max-pdu", "131072", "+sd", "+r",
                 host, str(port), str(study))
    t0 = time.perf_counter()
    done = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def dimse_run(root: Path, study: Path) -> float:
    with dcmtk_storescp(root / "storescp") as port:  # on every address of the cloud side, CLOUD_IP included
        return storescu(port, "REFERENCE", CLOUD_IP, study)


class ClinicDeployment(LoopbackDeployment):
    """The loopback deployment with the edge in the namespace behind the shaped link."""

    def __init__(self, root: Path, uplink: dict[str, object]) -> None:
        # keepalive 5 s: a cut longer than ~8 s drops the MQTT connection, so cuts exercise resume
        super().__init__(root, edge_overrides={"mqtt": {"host": CLOUD_IP, "keepalive_s": 5},
                                               "dicom": {"max_pdu_bytes": 0},
                                               "uplink": {"ack_timeout_s": 30.0, **uplink}})
        self.broker = MosquittoBroker(root / "broker", host=CLOUD_IP)

    def write_configs(self) -> None:
        super().write_configs()
        self.cloud_toml.write_text(self.cloud_toml.read_text().replace('"127.0.0.1"', f'"{CLOUD_IP}"'))

    def start_edge(self, wait_s: float = 120.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.root / "edge.log", "ab") as log:  # `ip netns exec` execs: the edge keeps this pid
            self.edge = subprocess.Popen(
                in_ns(sys.executable, "-m", "gateway", "edge", "run", "--config", str(self.edge_toml)),
                stdout=subprocess.DEVNULL, stderr=log, env=env)
        self.await_report(self.edge_dir, "edge", self.edge, wait_s)  # it listens, in the namespace


def edge_state(edge_dir: Path) -> tuple[int, int]:
    """(acknowledged items, sealed bytes of all packed items)."""
    db = next(edge_dir.rglob("spool.db"), None)
    if db is None:
        return 0, 0
    with sqlite3.connect(db, timeout=30) as conn:
        acked = conn.execute("SELECT count(*) FROM items WHERE state IN ('acknowledged', 'purged')").fetchone()[0]
        packed = conn.execute("SELECT coalesce(sum(packed_bytes), 0) FROM items").fetchone()[0]
    return int(acked), int(packed)


@dataclass
class Run:
    elapsed_s: float  # storescu started -> every instance acknowledged
    sealed: int  # sealed bytes of all packed items
    wire: int  # bytes the edge put on the link
    first_byte_s: float  # storescu started -> the first 64 KiB reached the cloud side
    received_s: float  # storescu started -> storescu done (the edge has every instance)


def cloud_rx_bytes() -> int:
    return int(Path(f"/sys/class/net/{VETH_CLOUD}/statistics/rx_bytes").read_text())


def first_bytes(t0: float, rx0: int, stop: threading.Event, out: list[float]) -> None:
    """When the cloud side has received 64 KiB beyond ``rx0`` (more than MQTT's own traffic)."""
    while not stop.is_set():
        if cloud_rx_bytes() - rx0 >= 64 * 1024:
            out.append(time.perf_counter() - t0)
            return
        stop.wait(0.02)


def timeline(edge_dir: Path, t0: float, rx0: int, every_s: float, stop: threading.Event) -> None:
    """Every ``every_s``: instances spooled, MB packed (sealed), MB acknowledged, MB at the cloud side."""
    while not stop.wait(every_s):
        db = next(edge_dir.rglob("spool.db"), None)
        if db is None:
            continue
        with sqlite3.connect(db, timeout=30) as conn:
            items, packed, acked = conn.execute(
                "SELECT count(*), coalesce(sum(packed_bytes), 0), coalesce(sum(CASE WHEN state IN "
                "('acknowledged', 'purged') THEN packed_bytes END), 0) FROM items").fetchone()
        print(f"  t={time.perf_counter() - t0:5.1f} s  spooled {items:4d}  packed {packed / 1e6:6.1f} MB  "
              f"acknowledged {acked / 1e6:6.1f} MB  at the cloud side {(cloud_rx_bytes() - rx0) / 1e6:6.1f} MB",
              flush=True)


def ours_run(root: Path, study: Path, count: int, cuts: int, timeout_s: float, cut_s: float = 10.0,
             uplink: dict[str, object] | None = None, every_s: float = 0.0) -> Run:
    deploy = ClinicDeployment(root, uplink or {})
    deploy.start()
    stop = threading.Event()
    first: list[float] = []
    try:
        tx0, rx0 = edge_tx_bytes(), cloud_rx_bytes()
        t0 = time.perf_counter()
        watcher = threading.Thread(target=first_bytes, args=(t0, rx0, stop, first), daemon=True)
        watcher.start()
        if every_s:
            threading.Thread(target=timeline, args=(deploy.edge_dir, t0, rx0, every_s, stop), daemon=True).start()
        cutter = threading.Thread(target=cut_link, args=(cuts, cut_s, stop), daemon=True)
        cutter.start()
        storescu(deploy.dicom_port, EDGE_AE, "127.0.0.1", study)
        received = time.perf_counter() - t0
        deadline = time.monotonic() + timeout_s
        while (state := edge_state(deploy.edge_dir))[0] < count and time.monotonic() < deadline:
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        stop.set()
        cutter.join()
        watcher.join()
        if state[0] < count:
            raise SystemExit(f"only {state[0]}/{count} acknowledged after {timeout_s} s; see {root}")
        return Run(elapsed, state[1], edge_tx_bytes() - tx0, first[0] if first else float("nan"), received)
    finally:
        stop.set()
        deploy.stop()


TCP_SENDER = """
import socket, sys, time
n, host, port, cc = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
sock = socket.socket()
if cc:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
sock.connect((host, port))
block = bytes(65536)
while n > 0:
    n -= sock.send(block[:min(n, len(block))])
sock.close()
"""


def tcp_anchor(nbytes: int, cc: str) -> float:
    """Seconds for one plain TCP flow (``cc``, the kernel's when empty) to carry ``nbytes`` from the
    edge namespace to the cloud side, connect to last byte received: what the link itself allows."""
    with socket.create_server((CLOUD_IP, 0)) as server:
        port = server.getsockname()[1]
        sender = subprocess.Popen(in_ns(sys.executable, "-c", TCP_SENDER, str(nbytes), CLOUD_IP, str(port), cc))
        conn, _ = server.accept()
        t0, got = time.perf_counter(), 0
        with conn:
            while chunk := conn.recv(1 << 20):
                got += len(chunk)
        elapsed = time.perf_counter() - t0
        sender.wait(60)
    if got != nbytes:
        raise SystemExit(f"the TCP anchor received {got} of {nbytes} bytes")
    return elapsed


def cut_link(cuts: int, cut_s: float, stop: threading.Event) -> None:
    rng = random.Random(7)  # noqa: S311 - timing jitter, not security
    for _ in range(cuts):
        if stop.wait(rng.uniform(3.0, 8.0)):
            return
        sh(*in_link("ip", "link", "set", LINK_EDGE, "down"))
        time.sleep(cut_s)
        sh(*in_link("ip", "link", "set", LINK_EDGE, "up"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=500.0)
    parser.add_argument("--image", default="693_UNCI.dcm")
    parser.add_argument("--cc", default="", choices=["", "cubic", "bbr", "reno"],
                        help="congestion control of the edge namespace (default: the kernel's)")
    parser.add_argument("--cuts", type=int, default=0)
    parser.add_argument("--cut-s", type=float, default=10.0, help="length of each cut (> ~8 s drops MQTT)")
    parser.add_argument("--skip-dimse", action="store_true")
    parser.add_argument("--skip-anchor", action="store_true", help="no plain TCP flow beside ours")
    parser.add_argument("--every-s", type=float, default=0.0, help="print the edge's progress this often (0: never)")
    parser.add_argument("--timeout-s", type=float, default=7200.0)
    parser.add_argument("--uplink", action="append", default=[], metavar="KEY=INT",
                        help="an [uplink] setting of the edge, e.g. transfers_in_flight=4 (repeatable)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and tc")
    root = Path(tempfile.mkdtemp(prefix="mgw-bench-link-"))
    os.chmod(root, 0o755)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"link: {RATE_MBIT:.0f} Mbit/s each way, {ONE_WAY_DELAY_MS:.0f} ms each way, {LOSS:.0%} loss edge->cloud "
          f"(bench/link_emulator.py)")
    try:
        count, total = make_study(root / "study", args.image, args.mb)
        print(f"study: {count} x {args.image} with fresh UIDs, {total / 1e6:.1f} MB")
        emulator = link_up(args.cc)
        print(f"congestion control of the sending side: {congestion_control()}"
              + (f" (asked for {args.cc})" if args.cc and args.cc != congestion_control() else ""))
        if not args.skip_dimse:
            t_dimse = dimse_run(root, root / "study")
            print(f"{'DIMSE storescu -> storescp':<32} {t_dimse:8.1f} s  {total / t_dimse / 1e6:6.2f} MB/s of original")
        uplink: dict[str, object] = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.uplink)}
        if uplink:
            print(f"edge [uplink] settings: {uplink}")
        ours = ours_run(root / "ours", root / "study", count, 0, args.timeout_s, uplink=uplink, every_s=args.every_s)
        t_ours, sealed, wire = ours.elapsed_s, ours.sealed, ours.wire
        ideal = sealed * 8 / LINK_BPS
        print(f"{'mgw edge -> MQTT -> cloud':<32} {t_ours:8.1f} s  {total / t_ours / 1e6:6.2f} MB/s of original; "
              f"sealed {sealed / 1e6:.1f} MB ({total / sealed:.2f}x), ideal {ideal:.1f} s -> "
              f"{ideal / t_ours * 100:.0f}% of ideal; {wire / 1e6:.1f} MB on the wire "
              f"({(wire / sealed - 1) * 100:+.1f}%)")
        print(f"{'':<32} first 64 KiB at the cloud after {ours.first_byte_s:.1f} s, study received by the edge "
              f"after {ours.received_s:.1f} s, last acknowledgement after {t_ours:.1f} s")
        if not args.skip_anchor:
            t_tcp = tcp_anchor(sealed, args.cc)
            print(f"{'plain TCP, same bytes (anchor)':<32} {t_tcp:8.1f} s  {sealed * 8 / t_tcp / 1e6:6.2f} Mbit/s -> "
                  f"{ideal / t_tcp * 100:.0f}% of ideal ({args.cc or congestion_control()})")
        if not args.skip_dimse:
            print(f"speed-up over DIMSE: {t_dimse / t_ours:.2f}x")
        if args.cuts:
            cut = ours_run(root / "ours-cut", root / "study", count, args.cuts, args.timeout_s, args.cut_s, uplink)
            print(f"with {args.cuts} cuts of {args.cut_s:.0f} s: {cut.elapsed_s:.1f} s, {cut.wire / 1e6:.1f} MB on the "
                  f"wire, {(cut.wire - wire) / args.cuts / 1e6:.2f} MB extra per cut")
        return 0
    finally:
        if "emulator" in locals():
            emulator.terminate()
            emulator.wait(10)
        link_down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
