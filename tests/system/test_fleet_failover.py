"""Two `mgw cloud fleet` processes on one fleet store (the deployment's SQLite file): the leader is
killed with SIGKILL (no clean stop, its lease not released), the other takes the lease once it
expires, raises the alert the dead leader can no longer raise, and its console keeps answering."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

from gateway.adapters import ports
from gateway.loopback import BOX_ID, LoopbackDeployment
from tests.console_auth import bearer, deployment_token
from tests.peers import wait_for

Deploy = Callable[..., LoopbackDeployment]
LEASE_S = 3.0


def get(d: LoopbackDeployment, port: int, path: str) -> Any:
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}",
                                     headers=bearer(deployment_token(d.fleet_toml)))  # both share the store
    with urllib.request.urlopen(request, timeout=10, context=d.console_context()) as rsp:  # noqa: S310
        return json.loads(rsp.read())


def test_the_other_fleet_process_takes_the_lease_and_raises_alerts_when_the_leader_is_killed(deploy: Deploy) -> None:
    d = deploy(cloud_overrides={"fleet": {"lease_s": LEASE_S, "offline_after_s": 600.0}})
    second = d.start_fleet_instance("2")
    consoles = {"1": d.fleet_port, "2": d.reported_port("fleet-2", "https")}
    wait_for(lambda: [get(d, p, "/healthz")["leader"] for p in consoles.values()].count(True) == 1, 60,
             "exactly one fleet process to lead")
    for port in consoles.values():  # both know the box, from their own subscriptions
        wait_for(lambda p=port: any(b["box_id"] == BOX_ID for b in get(d, p, "/api/v1/registry")["boxes"]), 60,
                 "the box on both consoles")
    leader = next(w for w, p in consoles.items() if get(d, p, "/healthz")["leader"])
    survivor = "2" if leader == "1" else "1"
    d.kill_fleet(leader)
    port = consoles[survivor]
    health = wait_for(lambda: (h := get(d, port, "/healthz"))["leader"] and h, 60, "the survivor to take the lease")
    assert health["leader_instance"].endswith(f"/fleet-{survivor}") and health["ok"] is True
    d.kill_edge()  # its last will: the box goes offline, and only a leader raises the alert
    wait_for(lambda: any(a["box_id"] == BOX_ID and a["kind"] == "box_offline"
                         for a in get(d, port, "/api/v1/alerts")["alerts"]), 60, "the new leader to raise box_offline")
    alerts = [a for a in get(d, port, "/api/v1/alerts?all=1")["alerts"] if a["kind"] == "box_offline"]
    assert len(alerts) == 1
    log = (d.root / ("fleet.log" if survivor == "1" else "fleet-2.log")).read_text()
    assert "fleet leadership taken" in log
    assert (second.poll() is None) == (survivor == "2")  # the killed one is gone, the survivor runs
    assert ports.reported(d.cloud_dir, f"fleet-{survivor}", "https") == port
