"""docs/deployment.md's bring-up, run as written: `mgw cloud init` on a blank host, the services its
units start, a token, `mgw provision`, and the box online in the console's API.

No systemd here: each service runs as a real process from its generated unit's ExecStart= line
(``/usr/bin/mgw`` as this interpreter's ``-m gateway``), with the generated configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cloud_units
from gateway.adapters import ports
from gateway.loopback import await_ports
from gateway.tomlwrite import render_toml
from tests.peers import _missing, wait_for

BOX = "clinic-ct-1"
PASSWORD = "a long first admin password"  # noqa: S105 - the test's admin


def _mgw(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                         input=stdin)
    assert out.returncode == 0, f"mgw {' '.join(args)}: {out.stdout}{out.stderr}"
    return out


def _init(root: Path, broker_port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """The command of docs/deployment.md, into ``root``, with ports a test may use."""
    return _mgw("cloud", "init", "--dir", str(root), "--units-dir", str(root / "units"), "--hostname", "127.0.0.1",
                "--broker-port", str(broker_port), "--enrol-port", "0", "--console-port", "0", "--metrics-port", "0",
                "--workers", "2", "--admin-password-file", str(_password_file(root)), *extra)


def _password_file(root: Path) -> Path:
    path = root.parent / f"{root.name}.password"
    if not path.exists():
        path.write_text(PASSWORD + "\n")
        path.chmod(0o600)
    return path


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its SHA-256 and mode."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _command(unit: Path, instance: str = "") -> list[str]:
    """The unit's ExecStart= as argv: specifiers resolved, our executable run by this interpreter."""
    argv = [word.replace("%i", instance).replace("%%", "%") for word in shlex.split(cloud_units.exec_start(
        unit.read_text()))]
    return [sys.executable, "-m", "gateway", *argv[1:]] if argv[0] == cloud_units.MGW else argv


class Host:
    """The processes the units would run, and their logs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, unit: str, instance: str = "") -> subprocess.Popen[bytes]:
        log = open(self.root / f"{unit}{instance}.log", "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(_command(self.root / "units" / unit, instance), stdout=log, stderr=log, env=env)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.root.glob("*.log"))


def _bring_up(tmp_path: Path, hosts: list[Host]) -> Any:
    """init with the broker on a port picked free, then the broker from its unit; again on another port if
    that one was taken meanwhile (each try on a fresh host)."""
    def attempt(port: int) -> Host:
        host = Host(tmp_path / f"host-{port}")
        hosts.append(host)
        host.root.mkdir()
        _init(host.root, port)
        broker = host.start("mgw-broker.service")
        log = host.root / "var/lib/gateway/broker/data/mosquitto.log"
        ports.wait_listening(broker, [port], "mosquitto from mgw-broker.service",
                             ports.appended(log, host.root / "mgw-broker.service.log"), 30)
        host.broker_port = port  # type: ignore[attr-defined]
        return host

    return ports.on_free_port(attempt)


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for host in started:
        host.stop()


def _get(url: str, token: str, ca: Path) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(ca)), timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def test_box_shows_online_in_the_fleet_api_when_the_cloud_is_brought_up_by_init_and_its_units(
        tmp_path: Path, hosts: list[Host]) -> None:
    host = _bring_up(tmp_path, hosts)
    state, conf = host.root / "var/lib/gateway", host.root / "etc/gateway/cloud.toml"
    try:
        enrol = host.start("mgw-enrol.service")
        workers = [host.start("mgw-ingest@.service", str(n)) for n in (1, 2)]
        fleet = host.start("mgw-fleet.service")
        enrol_port = await_ports(state, "enrolment", enrol)["https"]
        for n, worker in enumerate(workers, 1):
            await_ports(state, f"ingest-ingest-{n}", worker)
        console_port = await_ports(state, "fleet-1", fleet)["https"]
        _mgw("doctor", "--cloud", "--config", str(conf))

        made = json.loads(_mgw("cloud", "token", "--config", str(conf), "--box", BOX, "--site", "clinic",
                               "--modality", "CT", "--json").stdout)
        assert made["url"].startswith("https://127.0.0.1:")
        url = re.sub(r":\d+$", f":{enrol_port}", made["url"])  # the test's enrolment port was any free one
        edge = tmp_path / "edge"
        _mgw("provision", "--url", url, "--ca-fingerprint", made["ca_fingerprint"], "--token", made["token"],
             "--state-dir", str(edge), "--modality", "MODALITY@127.0.0.1")
        site = tmp_path / "gateway.toml"
        site.write_text(render_toml({"dicom": {"ae_title": "MGW", "bind_host": "127.0.0.1", "port": 0},
                                     "health": {"heartbeat_s": 2.0, "metrics_port": 0}}))
        log = open(host.root / "edge.log", "ab")  # noqa: SIM115 - the child owns it
        box = subprocess.Popen([sys.executable, "-m", "gateway", "edge", "run", "--config", str(site),
                                "--config", str(edge / "device.toml")], stdout=log, stderr=log)
        host.procs.append(box)
        await_ports(edge, "edge", box)

        token = json.loads(_mgw("cloud", "api-token", "create", "--config", str(conf), "--user", "admin",
                                "--name", "bring-up check", "--role", "viewer", "--json").stdout)["token"]
        console = f"https://127.0.0.1:{console_port}/api/v1/boxes/{BOX}"

        def online() -> bool:
            try:
                return bool(_get(console, token, state / "pki/ca.pem")["online"])
            except OSError:  # 404 until its birth arrives
                return False

        wait_for(online, 90, f"{BOX} online in the fleet API")
        assert all(proc.poll() is None for proc in host.procs), host.logs()
        _refresh_crl_and_reload_the_broker(host, url)
    except BaseException:
        print(host.logs())
        raise


def _next_update(crl: Path) -> float:
    from cryptography import x509

    return x509.load_pem_x509_crl(crl.read_bytes()).next_update_utc.timestamp()


def _refresh_crl_and_reload_the_broker(host: Host, enrol_url: str) -> None:
    """mgw-crl.service's command writes the broker's CRL afresh; the broker's ExecReload= (what
    mgw-broker-reload.path starts) has it re-read it, and it still admits a newly provisioned box."""
    crl = host.root / "var/lib/gateway/broker/crl.pem"
    before = _next_update(crl)
    refresh = subprocess.run(_command(host.root / "units/mgw-crl.service"), capture_output=True, text=True,
                             timeout=120)
    assert refresh.returncode == 0, refresh.stderr
    assert _next_update(crl) > before
    broker = host.procs[0]
    reload = cloud_units.exec_reload((host.root / "units/mgw-broker.service").read_text())
    subprocess.run([w.replace("$MAINPID", str(broker.pid)) for w in shlex.split(reload)], check=True, timeout=30)
    conf = host.root / "etc/gateway/cloud.toml"
    made = json.loads(_mgw("cloud", "token", "--config", str(conf), "--box", "clinic-ct-2", "--site", "clinic",
                           "--modality", "CT", "--json").stdout)
    _mgw("provision", "--url", enrol_url, "--ca-fingerprint", made["ca_fingerprint"], "--token", made["token"],
         "--state-dir", str(host.root / "edge-2"))  # its self-test connects to the reloaded broker
    assert broker.poll() is None


def _mqtt_connects(host: Host, identity: str = "ingest-1") -> bool:
    """An MQTT 5 CONNECT over mutual TLS as cloud process ``identity``: whether CONNACK comes back."""
    state = host.root / "var/lib/gateway"
    context = ssl.create_default_context(cafile=str(state / "pki/ca.pem"))
    context.load_cert_chain(str(state / f"keys/{identity}.pem"), str(state / f"keys/{identity}.key"))
    client_id = b"cloud." + identity.replace("-", ".").encode()
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection(("127.0.0.1", host.broker_port), 10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(bytes([0x10, len(body)]) + body)
            return tls.recv(1) == b"\x20"
    except OSError:  # ssl.SSLError included: the broker refused the certificate
        return False


def test_broker_admits_clients_again_when_an_expired_crl_is_refreshed_by_the_crl_unit(
        tmp_path: Path, hosts: list[Host]) -> None:
    """mosquitto refuses every client once its CRL's next update has passed, and reads the file only at
    start and SIGHUP: what mgw-crl.timer and mgw-broker-reload.path are for."""
    from gateway.adapters import blobs
    from gateway.cloud.authority.ca import FleetAuthority

    host = _bring_up(tmp_path, hosts)
    broker = host.procs[0]
    assert _mqtt_connects(host)
    state = host.root / "var/lib/gateway"
    stale = FleetAuthority(state / "pki", clock=lambda: time.time() - 8 * 86400)  # a CRL from 8 days ago
    blobs.write_atomic(state / "broker/crl.pem", stale.crl_pem(), mode=0o644)
    stale.close()
    reload = [w.replace("$MAINPID", str(broker.pid)) for w in shlex.split(cloud_units.exec_reload(
        (host.root / "units/mgw-broker.service").read_text()))]
    subprocess.run(reload, check=True, timeout=30)
    wait_for(lambda: not _mqtt_connects(host), 30, "the broker to refuse clients under an expired CRL")
    refresh = subprocess.run(_command(host.root / "units/mgw-crl.service"), capture_output=True, text=True,
                             timeout=120)
    assert refresh.returncode == 0, refresh.stderr
    subprocess.run(reload, check=True, timeout=30)
    wait_for(lambda: _mqtt_connects(host), 30, "the broker to admit clients under the refreshed CRL")
    assert broker.poll() is None


def test_init_changes_nothing_when_run_again_and_force_keeps_every_key(tmp_path: Path) -> None:
    root = tmp_path / "host"
    first = json.loads(_init(root, 8883, "--json").stdout)
    assert first["made"] and first["admin_password"] is None  # the password came from the file
    before = _snapshot(root)
    again = json.loads(_init(root, 8883, "--json").stdout)
    assert again["made"] == [] and _snapshot(root) == before
    forced = json.loads(_init(root, 8883, "--json", "--force").stdout)
    keys = [name for name in before if name.endswith((".key", ".pem", ".db"))]
    assert keys and all(_snapshot(root)[name] == before[name] for name in keys), forced["made"]
    secrets = [p for p in (root / "var/lib/gateway").rglob("*.key")]
    assert secrets and all(p.stat().st_mode & 0o077 == 0 for p in secrets)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} not installed (apt-get install systemd)")
    return str(path)


def test_units_verify_clean_and_score_at_most_2_when_checked_by_systemd_analyze(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    host = tmp_path / "host"
    _init(host, 8883)
    root = tmp_path / "root"  # the host's system units, our units, and the executables they name
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(host / "units", root / "etc/systemd/system")
    for unit in (host / "units").iterdir():
        for line in unit.read_text().splitlines():
            if line.startswith(("ExecStart=", "ExecReload=")):
                exe = root / line.split("=", 1)[1].split()[0].lstrip("/")
                exe.parent.mkdir(parents=True, exist_ok=True)
                exe.write_text("#!/bin/sh\n")
                exe.chmod(0o755)
    names = [u.name.replace("@.", "@1.") for u in (host / "units").iterdir()]
    out = subprocess.run([analyze, "verify", f"--root={root}", *names], capture_output=True, text=True, timeout=60)
    if "Failed to" in out.stderr and "root" in out.stderr:
        pytest.skip(f"systemd-analyze verify does not work here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr + out.stdout
    for unit in (host / "units").glob("*.service"):
        found = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                               capture_output=True, text=True, timeout=60)
        score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", found.stdout)
        assert score and float(score.group(1)) <= 2.0, f"{unit.name}: {found.stdout[-300:]}"


def test_index_and_admin_are_in_postgresql_when_init_is_given_a_dsn(tmp_path: Path, pg_cluster: Any) -> None:
    from gateway import config

    dsn = pg_cluster.create_database(f"cloudinit{os.getpid()}")
    secret = tmp_path / "db.password"
    secret.write_text("not needed by a trusting test cluster\n")
    secret.chmod(0o600)
    root = tmp_path / "host"
    made = json.loads(_init(root, 8883, "--postgres", dsn, "--postgres-password-file", str(secret), "--json").stdout)
    assert "account admin" in made["made"]
    conf = root / "etc/gateway/cloud.toml"
    settings = config.load_cloud([conf])
    assert (settings.index.backend, settings.index.dsn) == ("postgres", dsn)
    copy = root / "var/lib/gateway" / settings.index.password_file
    assert copy.read_text() == secret.read_text() and copy.stat().st_mode & 0o077 == 0
    assert not (root / "var/lib/gateway/fleet.db").exists()  # the account went to PostgreSQL
    accounts = json.loads(_mgw("cloud", "user", "list", "--config", str(conf), "--json").stdout)
    assert [(a["name"], a["role"]) for a in accounts] == [("admin", "admin")]


def test_state_belongs_to_the_service_user_when_init_runs_as_root(tmp_path: Path) -> None:
    """Run as root, init gives every file of the state directory to the services' user (here `nobody`,
    which every Debian host has; `mgw` in production), so that the units' User= can read its keys."""
    import pwd

    from tests.peers import require_root

    require_root("to hand files to another user")
    nobody = pwd.getpwnam("nobody")
    root = tmp_path / "host"
    out = _init(root, 8883, "--user", "nobody", "--json")
    state = root / "var/lib/gateway"
    owners = {(p.stat(follow_symlinks=False).st_uid, p.stat(follow_symlinks=False).st_gid)
              for p in [state, *state.rglob("*")]}
    assert owners == {(nobody.pw_uid, nobody.pw_gid)}
    assert "user nobody" in (state / "broker/mosquitto.conf").read_text().splitlines()
    assert any(step.startswith("sudo -u nobody mgw cloud token") for step in json.loads(out.stdout)["next"])
    assert "User=nobody" in (root / "units/mgw-fleet.service").read_text().splitlines()
