"""How many boxes one cloud fleet process keeps fresh, and what it costs.

For each fleet size: a real mosquitto, one real ``mgw cloud fleet`` process, and the fleet
simulator (gateway/simulator.py, in this process) publishing births, heartbeats every
``--heartbeat-s`` and exam records for N boxes. Once a second the bench reads
``/api/v1/registry`` (every box in one document) and measures, per box, how far the registry is
behind: if the registry does not yet hold the last heartbeat the box sent, it is behind by
the time since that heartbeat was sent; else 0. It reports the worst and the 99th
percentile of that over the run, the API's response time, and the fleet process's CPU
(from /proc, user+system over wall time) and peak RSS.

``--index postgres`` runs the same with the fleet store in a real PostgreSQL (Debian's server,
started on a loopback port), as ``[index] backend = "postgres"`` does.

    .venv/bin/python -m bench.fleet --boxes 1000 --seconds 120 [--index sqlite postgres]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.config import MqttSettings
from gateway.core.utilisation import percentile
from gateway.loopback import await_ports
from gateway.simulator import Simulator
from gateway.tomlwrite import render_toml

GOAL_BEHIND_S = 5.0


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _admin_token(toml: Path) -> str:
    """An admin API token in the fleet store the service opened (as `mgw cloud token create` makes one)."""
    import secrets

    from gateway import config
    from gateway.cloud import backends
    from gateway.cloud.fleet.accounts import Accounts, Actor
    from gateway.core.access import Role
    from gateway.paths import Paths

    settings = config.load_cloud([toml])
    store = backends.open_fleet_store(settings, Paths.from_env(settings.cloud.state_dir, base=toml.parent))
    try:
        accounts, actor = Accounts(store.auth, settings.fleet.auth), Actor("bench", "cli", "")
        accounts.create("bench", secrets.token_urlsafe(24), Role.ADMIN, None, actor)
        return accounts.create_token("bench", "bench", Role.ADMIN, None, 1.0, actor)[1]
    finally:
        store.close()


def _get(url: str, context: ssl.SSLContext | None = None, token: str = "") -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30, context=context) as rsp:  # noqa: S310 - loopback only
        return json.loads(rsp.read())


def run_one(boxes: int, seconds: float, heartbeat_s: float, root: Path, dsn: str = "") -> dict[str, Any]:
    broker = MosquittoBroker(root / "broker", persistence=False)
    broker.start()
    toml = root / "cloud.toml"
    toml.write_text(render_toml({
        "cloud": {"state_dir": str(root / "cloud"), "log_level": "WARNING"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "fleet": {"http_port": 0, "offline_after_s": 3 * heartbeat_s},  # any free port, reported
        **({"index": {"backend": "postgres", "dsn": dsn}} if dsn else {})}))
    with open(root / "fleet.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "cloud", "fleet", "--config", str(toml)],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = f"https://127.0.0.1:{await_ports(root / 'cloud', 'fleet-1', proc)['https']}/api/v1/registry"
        console = ssl.create_default_context(cafile=str(root / "cloud" / "pki" / "ca.pem"))  # the fleet CA
        token = _admin_token(toml)  # the console answers an authenticated principal only
        sim = Simulator(MqttSettings(port=broker.port), boxes, heartbeat_s=heartbeat_s, outage_percent=0.0,
                        backfill_hours=0.0)
        stop = threading.Event()
        runner = threading.Thread(target=sim.run, args=(seconds + heartbeat_s, stop), daemon=True)
        cpu0, wall0 = _proc_cpu_s(proc.pid), time.monotonic()
        runner.start()
        time.sleep(heartbeat_s)  # every box has sent its first heartbeat
        behind, api_s, rss, online = [], [], 0.0, 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.time()
            with sim._lock:
                sent = dict(sim.report.last_heartbeat)
            t_api = time.monotonic()
            doc = _get(url, console, token)
            api_s.append(time.monotonic() - t_api)
            held = {b["box_id"]: (b.get("heartbeat_at") or 0.0) for b in doc["boxes"]}
            online = sum(b["online"] for b in doc["boxes"])
            behind += [t - at if held.get(box, 0.0) < at - 0.01 else 0.0 for box, at in sent.items()]
            rss = max(rss, _proc_rss_mb(proc.pid))
            time.sleep(max(0.0, 1.0 - (time.time() - t)))
        cpu = (_proc_cpu_s(proc.pid) - cpu0) / (time.monotonic() - wall0)
        stop.set()
        runner.join(30)
        worst = max(behind, default=0.0)
        return {"index": "postgres" if dsn else "sqlite", "boxes": boxes, "heartbeat_s": heartbeat_s,
                "seconds": seconds, "online_at_end": online,
                "heartbeats_sent": sim.report.heartbeats, "behind_max_s": round(worst, 2),
                "behind_p99_s": round(percentile(behind, 99) or 0.0, 2),
                "api_p50_ms": round(1000 * (percentile(api_s, 50) or 0.0), 1),
                "api_max_ms": round(1000 * max(api_s, default=0.0), 1),
                "fleet_cpu_percent": round(100 * cpu, 1), "fleet_rss_mb_peak": round(rss, 1),
                "fresh": worst <= GOAL_BEHIND_S and online == boxes}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, nargs="+", default=[1000])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--heartbeat-s", type=float, default=30.0)
    parser.add_argument("--index", nargs="+", default=["sqlite"], choices=["sqlite", "postgres"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the simulator's links log every clean disconnect
    cluster = None
    if "postgres" in args.index:
        from tests.backends import start_cluster

        cluster = start_cluster()
    results = []
    try:
        for index in args.index:
            for n in args.boxes:
                dsn = cluster.create_database(f"fleet_{n}") if cluster and index == "postgres" else ""
                with tempfile.TemporaryDirectory(prefix="mgw-bench-fleet-") as tmp:
                    result = run_one(n, args.seconds, args.heartbeat_s, Path(tmp), dsn)
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        if cluster is not None:
            cluster.stop()
    print("| store | boxes | heartbeat | online | registry behind, max / p99 | API p50 / max | fleet CPU | fleet RSS "
          "| fresh |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['index']} | {r['boxes']} | {r['heartbeat_s']:.0f} s | {r['online_at_end']} | "
              f"{r['behind_max_s']} s / "
              f"{r['behind_p99_s']} s | {r['api_p50_ms']} / {r['api_max_ms']} ms | {r['fleet_cpu_percent']}% | "
              f"{r['fleet_rss_mb_peak']} MB | {'yes' if r['fresh'] else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
