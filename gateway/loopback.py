"""A whole deployment on one machine's loopback: broker, cloud ingest, one edge.

Each service runs as a real ``mgw`` process with generated TOML, so the demo,
the system tests and the benchmarks exercise exactly what systemd would run,
and can SIGKILL and restart any part of it.

No port is picked for a service here: each is configured with port 0, binds any free
port, and reports what it got (``adapters/ports.py``); the harness reads the report of
the process it started, after every start. mosquitto, which cannot do that, is started
on a port picked free and again on another if that one was taken meanwhile.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from gateway.adapters import keystore, ports
from gateway.adapters.mosquitto import MosquittoBroker
from gateway.core.errors import LocalError
from gateway.tomlwrite import render_toml

BOX_ID = "demo-box"
EDGE_AE = "MGW"
SUBSCRIBED = "subscriptions granted"  # the MQTT link's log line at SUBACK (MSG.UPLINK_SUBSCRIBED)
MODALITY_AE = "MODALITY"  # the calling AE title the tests' modality uses; provisioning admits it
REPORT_TIMEOUT_S = 120.0  # a service's start on a loaded machine: imports, databases, then the listeners


def cloud_log(n: int) -> str:
    """The log file of cloud ingest worker ``n`` (0-based) in the deployment's root."""
    return "cloud.log" if n == 0 else f"cloud-{n + 1}.log"


class LoopbackDeployment:
    def __init__(self, root: Path, edge_overrides: dict[str, dict[str, object]] | None = None,
                 broker_persistence: bool = True, secure: bool = False, cloud_workers: int = 1,
                 cloud_overrides: dict[str, dict[str, object]] | None = None,
                 broker_limits: dict[str, int] | None = None,
                 modalities: tuple[str, ...] = (f"{MODALITY_AE}@127.0.0.1",)) -> None:
        self.root = root
        self.modalities = modalities  # what `mgw provision --modality` records (secure mode)
        root.mkdir(parents=True, exist_ok=True)
        self.broker = MosquittoBroker(root / "broker", persistence=broker_persistence, limits=broker_limits)
        self.secure = secure
        self.enrolment: subprocess.Popen[bytes] | None = None
        self._reports: dict[str, dict[str, int]] = {}  # service -> the ports its last started process reported
        self.cloud_dir = root / "cloud"
        self.edge_dir = root / "edge"
        self.cloud_pub = keystore.public_b64(keystore.load_or_create_x25519(self.cloud_dir / "keys" / "envelope.key"))
        self.ack_key_file = self.cloud_dir / "keys" / "ack.key"
        self.cloud_toml = root / "cloud.toml"
        self.fleet_toml = root / "fleet.toml"
        self.plugin_dir = Path(tempfile.gettempdir()) / "mgw-broker-plugin"  # built once per plugin version
        self.edge_toml = root / "edge.toml"
        self._edge_overrides = edge_overrides or {}
        self.edge: subprocess.Popen[bytes] | None = None
        self.cloud: subprocess.Popen[bytes] | None = None  # the first ingest worker
        self.clouds: list[subprocess.Popen[bytes] | None] = [None] * cloud_workers
        self._subscribed_marks: dict[int, int] = {}  # worker -> its log's SUBSCRIBED count at its last start
        self._cloud_overrides = cloud_overrides or {}
        self.fleet: subprocess.Popen[bytes] | None = None
        self.fleets: dict[str, subprocess.Popen[bytes]] = {}  # further fleet instances, by worker id
        self._fleet_overrides: dict[str, object] = {}

    def write_configs(self) -> None:
        mqtt: dict[str, object] = {"host": "127.0.0.1", "port": self.broker.port, "reconnect_min_s": 0.2,
                                   "reconnect_max_s": 2.0}
        cloud: dict[str, dict[str, object]] = {"cloud": {"state_dir": str(self.cloud_dir)}, "mqtt": dict(mqtt)}
        cloud["fleet"] = {"http_port": 0, "offline_after_s": 10.0, "history_interval_s": 2.0,
                          "opening_hours": "00:00-24:00", "open_weekdays": [1, 2, 3, 4, 5, 6, 7],
                          **self._fleet_overrides}
        tables: dict[str, dict[str, object]] = {
            "box": {"id": BOX_ID, "cloud_public_key": self.cloud_pub, "state_dir": str(self.edge_dir)},
            "dicom": {"ae_title": EDGE_AE, "bind_host": "127.0.0.1", "port": 0},
            "mqtt": dict(mqtt),
            "uplink": {"ack_timeout_s": 5.0},
            "health": {"heartbeat_s": 2.0, "metrics_port": 0},
            "utilisation": {"exam_quiet_s": 3.0},
        }
        if self.secure:  # identity, broker TLS files and the box id come from provisioning (device.toml)
            assert self.broker.tls is not None and self.broker.tls.crl_file is not None
            cloud["mqtt"]["ca_file"] = str(self.broker.tls.ca_file)
            cloud["authority"] = {"enrol_port": 0, "enrol_metrics_port": 0, "broker_host": "127.0.0.1",
                                  "broker_port": self.broker.port, "broker_crl_file": str(self.broker.tls.crl_file)}
            del tables["box"]
            tables["mqtt"] = {"reconnect_min_s": 0.2, "reconnect_max_s": 2.0}
        for n in range(len(self.clouds)):
            self.cloud_worker_toml(n).write_text(render_toml(self._service_tables(cloud, "ingest", n)))
        self.fleet_toml.write_text(render_toml(self._service_tables(cloud, "fleet", 0)))
        for table, keys in self._edge_overrides.items():
            tables.setdefault(table, {}).update(keys)
        self.edge_toml.write_text(render_toml(tables))
        if not self.secure:  # what provisioning would install: the cloud's ack public keys
            self.install_ack_keyring()

    def install_ack_keyring(self) -> None:
        from gateway.cloud.authority import ack_keys
        from gateway.edge import ack_keyring

        ack_keys.load_signer(self.ack_key_file)
        ack_keyring.save(ack_keyring.keyring_path(self.edge_dir), ack_keys.keyring_of(self.ack_key_file))
        from gateway.edge import command_keyring  # the fleet's command keys, as enrolment gives them

        command_key = self.cloud_dir / "keys" / "command.key"  # fleet.command_key_file's default
        ack_keys.load_signer(command_key)
        command_keyring.save(command_keyring.keyring_path(self.edge_dir), ack_keys.keyring_of(command_key))

    def _service_tables(self, cloud: dict[str, dict[str, object]], role: str, n: int) -> dict[str, dict[str, object]]:
        """One cloud process's configuration: its own worker id and, when secure, its own identity."""
        tables = {table: dict(keys) for table, keys in cloud.items()}
        tables["ingest"] = {"metrics_port": 0}  # any free port: several workers, parallel tests
        if role == "ingest" and len(self.clouds) > 1:
            tables["ingest"]["worker_id"] = str(n + 1)
        if self.secure:
            keys = self.cloud_dir / "keys"
            tables["mqtt"].update(cert_file=str(keys / f"{role}-{n + 1}.pem"),
                                  key_file=str(keys / f"{role}-{n + 1}.key"))
        for table, values in self._cloud_overrides.items():
            tables.setdefault(table, {}).update(values)
        return tables

    @property
    def tmp_dir(self) -> Path:
        """The services' temporary directory (``TMPDIR``), their own like systemd's PrivateTmp."""
        return self.root / "tmp"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        self.tmp_dir.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(self.tmp_dir))
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args], stdout=subprocess.DEVNULL,
            stderr=open(self.root / log_name, "ab"), env=env,  # noqa: SIM115 - the child owns it
        )

    def start(self) -> None:
        if self.secure:
            self._prepare_pki()
        self.broker.start()
        self.write_configs()
        self.start_cloud()
        self.wait_cloud_subscribed()
        if self.secure:
            self.start_enrolment()
            self.provision_edge(self.create_token())
        self.start_edge()

    # -- secure mode: fleet CA, mutual TLS broker, enrolment, a provisioned box ------------------
    def _prepare_pki(self) -> None:
        from gateway.cloud.authority.ca import FleetAuthority
        from gateway.cloud.broker import pki as broker_pki

        crl = self.root / "broker" / "pki" / "crl.pem"
        self.authority = FleetAuthority(self.cloud_dir / "pki", crl_copies=(crl,))
        self.broker.tls = broker_pki.emit(self.authority, self.root / "broker" / "pki", "mgw/v1", ["127.0.0.1"],
                                          crl_file=crl, plugin_dir=self.plugin_dir)
        for n in range(len(self.clouds)):
            broker_pki.issue_service_identity(self.authority, "ingest", str(n + 1), self.cloud_dir / "keys")
        broker_pki.issue_service_identity(self.authority, "fleet", "1", self.cloud_dir / "keys")

    def create_token(self, box_id: str = BOX_ID, ttl_s: float = 600.0) -> str:
        return self.authority.create_token(box_id, "loopback-site", "CT", ttl_s)

    @property
    def enrol_url(self) -> str:
        return f"https://127.0.0.1:{self.enrol_port}"

    def start_enrolment(self, timeout_s: float = REPORT_TIMEOUT_S) -> None:
        self.enrolment = self._spawn(["cloud", "enrol", "--config", str(self.cloud_toml)], "enrolment.log")
        self.await_report(self.cloud_dir, "enrolment", self.enrolment, timeout_s)

    def provision_edge(self, token: str) -> subprocess.CompletedProcess[str]:
        """``mgw provision`` as a field engineer runs it; raises if it fails."""
        args = [sys.executable, "-m", "gateway", "provision", "--url", self.enrol_url, "--ca-fingerprint",
                self.authority.ca_fingerprint, "--token", token, "--state-dir", str(self.edge_dir), "--force",
                *(arg for peer in self.modalities for arg in ("--modality", peer))]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)  # noqa: S603 - our own CLI
        with open(self.root / "provision.log", "a") as fh:
            fh.write(out.stdout + out.stderr)
        if out.returncode != 0:
            raise LocalError(f"mgw provision failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        return out

    def await_report(self, state_dir: Path, service: str, proc: subprocess.Popen[bytes],
                     timeout_s: float = REPORT_TIMEOUT_S) -> dict[str, int]:
        """Wait for the ports report of this deployment's ``proc`` and keep it."""
        try:
            self._reports[service] = await_ports(state_dir, service, proc, timeout_s)
        except LocalError as exc:
            raise LocalError(f"{exc}; see {self.root}/*.log") from exc
        return self._reports[service]

    def reported_port(self, service: str, name: str) -> int:
        """The port ``name`` of the last started ``service`` (``edge``, ``fleet-1``, ``enrolment``, ...)."""
        found = self._reports.get(service, {})
        if name not in found:
            raise LocalError(f"{service} has not reported a {name} port: is it started?")
        return found[name]

    @property
    def dicom_port(self) -> int:
        return self.reported_port("edge", "dicom")

    @property
    def edge_metrics_port(self) -> int:
        return self.reported_port("edge", "metrics")

    @property
    def fleet_port(self) -> int:
        """The fleet console's HTTPS port."""
        return self.reported_port(self._fleet_service, "https")

    @property
    def console_ca_file(self) -> Path:
        """The fleet CA's certificate, which issued the console's (the fleet makes the CA if none was)."""
        return self.cloud_dir / "pki" / "ca.pem"

    def console_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts the console's certificate through the fleet CA, and checks its name."""
        return ssl.create_default_context(cafile=str(self.console_ca_file))

    @property
    def enrol_port(self) -> int:
        return self.reported_port("enrolment", "https")

    def ingest_metrics_port(self, n: int = 0) -> int:
        """The /metrics port of cloud worker ``n`` (0 = the first), once it reported it."""
        proc = self.clouds[n]
        if proc is None:
            raise LocalError(f"cloud worker {n + 1} is not started")
        return self.await_report(self.cloud_dir, self._ingest_service(n), proc)["metrics"]

    def _ingest_service(self, n: int) -> str:
        """Cloud worker ``n``'s name in its start record and ports report."""
        ingest = {**({"worker_id": str(n + 1)} if len(self.clouds) > 1 else {}),
                  **self._cloud_overrides.get("ingest", {})}
        return f"ingest-{ingest.get('share_group', 'ingest')}-{ingest.get('worker_id', '1')}"

    @property
    def _fleet_service(self) -> str:
        """The fleet process's name in its start record and ports report."""
        return f"fleet-{self._cloud_overrides.get('ingest', {}).get('worker_id', '1')}"

    @property
    def index_dsn(self) -> str:
        """The PostgreSQL index's DSN when the cloud uses one, else ""."""
        return str(self._cloud_overrides.get("index", {}).get("dsn", ""))

    def cloud_worker_toml(self, n: int) -> Path:
        return self.cloud_toml if n == 0 else self.root / f"cloud-{n + 1}.toml"

    def start_cloud(self) -> None:
        for n in range(len(self.clouds)):
            self.start_cloud_worker(n)
        if self.fleet is None or self.fleet.poll() is not None:  # a restart of the workers keeps the fleet
            self.fleet = self._spawn(["cloud", "fleet", "--config", str(self.fleet_toml)], "fleet.log")
            self.await_report(self.cloud_dir, self._fleet_service, self.fleet)

    def start_fleet_instance(self, worker_id: str) -> subprocess.Popen[bytes]:
        """Another fleet instance on the same store (docs/operations.md#running-two-fleet-processes):
        the fleet's configuration with its own worker id, reported as ``fleet-<worker_id>``; plain
        mode only (the secure mode issues one fleet identity)."""
        if self.secure:
            raise LocalError("a second fleet instance needs its own broker identity; plain mode only")
        tables = tomllib.loads(self.fleet_toml.read_text())
        tables.setdefault("ingest", {})["worker_id"] = worker_id
        toml = self.root / f"fleet-{worker_id}.toml"
        toml.write_text(render_toml(tables))
        proc = self.fleets[worker_id] = self._spawn(["cloud", "fleet", "--config", str(toml)], f"fleet-{worker_id}.log")
        self.await_report(self.cloud_dir, f"fleet-{worker_id}", proc)
        return proc

    def kill_fleet(self, worker_id: str = "1") -> None:
        """SIGKILL a fleet instance (``1``: the first): it neither releases its lease nor says goodbye."""
        self._end_all([self.fleet if worker_id == "1" else self.fleets.get(worker_id)], signal.SIGKILL)

    @property
    def dashboard_url(self) -> str:
        return f"https://127.0.0.1:{self.fleet_port}/"

    def start_cloud_worker(self, n: int) -> None:
        log_name = cloud_log(n)
        self._subscribed_marks[n] = self._count_in_log(log_name, SUBSCRIBED)
        self.clouds[n] = self._spawn(["cloud", "run", "--config", str(self.cloud_worker_toml(n))], log_name)
        if n == 0:
            self.cloud = self.clouds[0]

    def _count_in_log(self, log_name: str, text: str) -> int:
        path = self.root / log_name
        return path.read_text(errors="replace").count(text) if path.exists() else 0

    def wait_cloud_subscribed(self, timeout_s: float = REPORT_TIMEOUT_S) -> None:
        """Wait until every cloud worker started since has its subscriptions granted by the broker.

        Until then the broker has no session for a fresh worker, and what boxes publish is not
        delivered to it (the edge resends; a test that publishes once must wait)."""
        deadline = time.monotonic() + timeout_s
        for n, proc in enumerate(self.clouds):
            while self._count_in_log(cloud_log(n), SUBSCRIBED) <= self._subscribed_marks.get(n, 0):
                if proc is not None and proc.poll() is not None:
                    raise LocalError(f"cloud worker {n + 1} exited early with {proc.returncode}; see {self.root}/*.log")
                if time.monotonic() > deadline:
                    raise LocalError(f"cloud worker {n + 1} had no subscription granted within {timeout_s} s")
                time.sleep(0.05)

    def start_edge(self, wait_s: float = REPORT_TIMEOUT_S) -> None:
        configs = ["--config", str(self.edge_toml)]
        if self.secure:
            configs += ["--config", str(self.edge_dir / "device.toml")]
        self.edge = self._spawn(["edge", "run", *configs], "edge.log")
        self.await_report(self.edge_dir, "edge", self.edge, wait_s)  # it listens once it reported its ports

    def kill_edge(self) -> None:
        self._end_all([self.edge], signal.SIGKILL)

    def stop_fleet(self) -> None:
        """The first fleet process, as systemd stops it (SIGTERM)."""
        self._end_all([self.fleet], signal.SIGTERM)

    def kill_cloud(self) -> None:
        self._end_all([*self.clouds], signal.SIGKILL)

    def kill_cloud_worker(self, n: int) -> None:
        self._end_all([self.clouds[n]], signal.SIGKILL)

    @staticmethod
    def _end_all(procs: list[subprocess.Popen[bytes] | None], sig: int, timeout_s: float = 15.0) -> None:
        """Signal every running process at once, then wait for all (each shuts down on its own)."""
        running = [p for p in procs if p is not None and p.poll() is None]
        for proc in running:
            proc.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Every service at once, then the broker they were all connected to."""
        self._end_all([self.edge, *self.clouds, self.enrolment, self.fleet, *self.fleets.values()], signal.SIGTERM)
        self.broker.stop()
        if self.secure:
            self.authority.close()

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("edge.log", cloud_log(0), "fleet.log", *(cloud_log(n) for n in range(1, len(self.clouds))),
                     "enrolment.log", "provision.log"):
            path = self.root / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def await_ports(state_dir: Path, service: str, proc: subprocess.Popen[bytes],
                timeout_s: float = REPORT_TIMEOUT_S) -> dict[str, int]:
    """The ports ``proc``, a started ``mgw`` service, reported once it listens (a report left by an
    earlier run of the service does not count); raises LocalError if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = ports.read(state_dir, service)
        if found is not None and found.pid == proc.pid:
            return found.ports
        if proc.poll() is not None:
            raise LocalError(f"{service} exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise LocalError(f"{service} reported no listening ports within {timeout_s} s")
        time.sleep(0.05)


__all__ = ["BOX_ID", "EDGE_AE", "MODALITY_AE", "LoopbackDeployment", "await_ports"]
