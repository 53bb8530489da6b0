"""What the console's fleet overview costs a real browser at 2,000 boxes.

A real mosquitto and a real fleet service (in this process, over HTTPS from its fleet CA), its
registry filled through the service's own ``apply`` with what the simulator's boxes send
(``simulator.fleet_snapshot``), and the console in a real headless Chromium (Selenium). Measured
in the page and through the DevTools protocol (``Performance.getMetrics``: TaskDuration is the
renderer main thread's busy time):

* time to first render of the list (navigation start to the first rows drawn and painted);
* DOM elements and page height once the list is shown;
* one refresh (every 5 s): main-thread time and bytes of API documents, for a quiet fleet and
  for one where 5% of the boxes changed since the last refresh;
* sorting by a column: main-thread time until the new first row is shown.

Printed beside the issue's figures for the old dashboard (issue 16) and the targets, with the
machine and the command; screenshots in English and Chinese go to the directory given.

    .venv/bin/python -m bench.console /tmp/console-shots [--boxes 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.adapters.mosquitto import MosquittoBroker  # noqa: E402
from gateway.cloud.fleet.service import FleetService  # noqa: E402
from gateway.config import CloudSettings, FleetSettings, IngestSettings, MqttSettings, _fill_defaults  # noqa: E402
from gateway.core import fleet  # noqa: E402
from gateway.core.fleet import MessageKind  # noqa: E402
from gateway.paths import Paths  # noqa: E402
from gateway.simulator import fleet_snapshot, snapshot_sites  # noqa: E402
from tests.system.browser import chromium  # noqa: E402

ANCHORS = {"first render": "2.2 s", "DOM elements": "45,000", "page height": "139,000 px",
           "refresh main thread": "0.26 s", "bytes per refresh": "1.1 MB", "sort": "0.9 s"}
TARGETS = {"first render": "< 1 s", "refresh main thread": "< 50 ms"}


def wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(what)


def task_s(browser: Any) -> float:
    metrics = browser.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return float(next(m["value"] for m in metrics if m["name"] == "TaskDuration"))


def next_refresh(browser: Any) -> None:
    """Wait in the page for the next refresh to finish: one script call, no polling (a poll would be
    a task on the main thread that is measured)."""
    browser.set_script_timeout(30)
    browser.execute_async_script("""const done = arguments[arguments.length - 1];
        const seen = document.body.dataset.refreshes;
        new MutationObserver((_, obs) => {
          if (document.body.dataset.refreshes !== seen) { obs.disconnect(); done(); }
        }).observe(document.body, { attributes: true });""")


def one_refresh(browser: Any, change: Callable[[], None] | None = None) -> tuple[float, int]:
    """Main-thread seconds and API characters of one 5 s refresh (the idle time before it included),
    after ``change`` was made to the fleet."""
    next_refresh(browser)  # align: the measured one is the next
    if change is not None:
        change()
    before = task_s(browser)
    next_refresh(browser)
    return task_s(browser) - before, int(browser.execute_script("return Number(document.body.dataset.bytes)"))


def idle(browser: Any, seconds: float) -> float:
    """Main-thread seconds of ``seconds`` with the refresh stopped: what the measurement itself costs."""
    browser.execute_script("clearTimeout(timer)")
    before = task_s(browser)
    time.sleep(seconds)
    spent = task_s(browser) - before
    browser.execute_script("timer = setTimeout(route, 0)")
    return spent


def heartbeat(box_id: str, now: float, disk: float) -> fleet.Telemetry:
    site = f"site-{int(box_id[4:]) // 10:03d}"
    body = {"seq": 9, "at": now, "site": site, "version": "1.4.2", "disk": {"free_bytes": 1, "total_bytes": 100,
                                                                           "used_percent": disk}}
    return fleet.decode("health", box_id, fleet.encode(MessageKind.HEARTBEAT, box_id, 1, **body))


def measure(svc: FleetService, boxes: int, shots: Path) -> dict[str, str]:
    assert svc.http is not None
    url = svc.http.url
    out: dict[str, str] = {}
    with chromium(trust=svc.tls.ca_file) as browser:
        browser.execute_cdp_cmd("Performance.enable", {})
        browser.get(url)
        wait(lambda: browser.execute_script("return performance.getEntriesByName('mgw-list-painted').length"), 60,
             "the list painted")
        painted = browser.execute_script("return performance.getEntriesByName('mgw-list-painted')[0].startTime")
        drawn = browser.execute_script("return performance.getEntriesByName('mgw-list-drawn')[0].startTime")
        out["first render"] = f"{painted / 1000:.2f} s (rows in the DOM at {drawn / 1000:.2f} s)"
        wait(lambda: browser.execute_script("return document.querySelectorAll('#alerts li').length"), 60, "alerts")
        elements = browser.execute_script("return document.getElementsByTagName('*').length")
        out["DOM elements"] = f"{elements:,}"
        out["page height"] = f"{browser.execute_script('return document.documentElement.scrollHeight'):,} px"
        out["list rows in the DOM"] = str(browser.execute_script(
            "return document.querySelectorAll('#boxes .vlist > .row').length"))
        browser.save_screenshot(str(shots / "console-en.png"))
        quiet_s, quiet_b = one_refresh(browser)
        out["refresh main thread"] = f"{quiet_s * 1000:.1f} ms quiet"
        out["bytes per refresh"] = f"{quiet_b:,} B quiet"
        changed = [f"sim-{i:04d}" for i in range(0, boxes, 20)]  # 5%

        def change() -> None:
            now = time.time()
            for i, box_id in enumerate(changed):
                svc.apply(heartbeat(box_id, now, 20.0 + i % 40))

        busy_s, busy_b = one_refresh(browser, change)
        out["idle 5 s, no refresh"] = f"{idle(browser, 5.0) * 1000:.1f} ms main thread (the measurement's own cost)"
        out["refresh main thread"] += f", {busy_s * 1000:.1f} ms with 5% changed"
        out["bytes per refresh"] += f", {busy_b:,} B with 5% changed"
        before, start = task_s(browser), time.monotonic()
        browser.find_element("css selector", '#boxes .head [data-sort="box"]').click()
        wait(lambda: browser.execute_script(
            "const n = document.querySelector('#boxes .vlist > .row[data-box=\"sim-0000\"]');"
            "return n && n.style.top === '0px'"), 30, "sorted by box id")
        out["sort"] = f"{(task_s(browser) - before) * 1000:.1f} ms main thread, {time.monotonic() - start:.2f} s " \
                      "until shown (server round trip included)"
        browser.find_element("id", "lang").click()
        wait(lambda: "在线" in browser.execute_script("return document.getElementById('counts').textContent"), 30,
             "Chinese")
        browser.save_screenshot(str(shots / "console-zh-CN.png"))
        history(svc, "sim-0020", time.time())
        browser.get(f"{url}#/box/sim-0020")
        wait(lambda: browser.execute_script("return !!document.getElementById('chart-disk')"), 30, "the box page")
        browser.save_screenshot(str(shots / "box-zh-CN.png"))
    return out


def history(svc: FleetService, box_id: str, now: float) -> None:
    """A day of the box's health samples and exam records in the store, as a day's heartbeats and
    exam records would have left them, for the box page's screenshot."""
    svc.store.add_samples([{"box_id": box_id, "at": now - 300 * k, "online": 1, "backlog_items": (k * 7) % 40,
                            "backlog_bytes": (k * 7) % 40 * 520_000, "oldest_age_s": float((k * 13) % 900),
                            "disk_used_percent": 40.0 + k / 30, "cpu_temp_c": 50.0, "reconnects": 0}
                           for k in range(288)])
    for k in range(40):
        start = now - 86400 + k * 2100
        svc.store.upsert_exam({"box_id": box_id, "study_key": f"{k:032x}", "revision": 1, "site": "site-002",
                               "modality": "CT", "start": start, "end": start + 900, "images": 200 + k * 10,
                               "series": 3, "source": "mpps", "status": "completed",
                               "first_received_at": start + 60, "last_received_at": start + 960,
                               "cloud_stored_at": start + 960 + 20 + k % 7 * 15})


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    try:
        chrome = subprocess.run(["chromium", "--version"], capture_output=True, text=True, timeout=30,  # noqa: S607
                                check=False).stdout.strip()
    except OSError:
        chrome = "chromium ?"
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {chrome}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shots", type=Path, help="directory for the screenshots")
    parser.add_argument("--boxes", type=int, default=2000)
    args = parser.parse_args()
    args.shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mgw-bench-console-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker")
        broker.start()
        settings = _fill_defaults(CloudSettings(
            mqtt=MqttSettings(port=broker.port), ingest=IngestSettings(),
            fleet=FleetSettings(http_port=0, offline_after_s=3600.0, sites=snapshot_sites(args.boxes))))
        svc = FleetService(settings, Paths(root, root / "cloud", root))
        try:
            svc.start()
            for message in fleet_snapshot(args.boxes, time.time()):
                svc.apply(message)
            wait(svc.open_alerts, 60, "the fleet's alerts (evaluated once a second)")
            figures = measure(svc, args.boxes, args.shots)
        finally:
            svc.stop()
            broker.stop()
    print(f"machine: {machine()}")
    print(f"command: .venv/bin/python -m bench.console {args.shots} --boxes {args.boxes}")
    print(f"| {args.boxes} boxes | this console | old dashboard (issue 16) | target |")
    print("|---|---|---|---|")
    for key, value in figures.items():
        print(f"| {key} | {value} | {ANCHORS.get(key, '')} | {TARGETS.get(key, '')} |")
    print(f"screenshots: {', '.join(sorted(p.name for p in args.shots.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
