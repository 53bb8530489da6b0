"""A whole deployment on one machine's loopback: broker, cloud ingest, one edge.

Each service runs as a real ``mgw`` process with generated TOML, so the demo,
the system tests and the benchmarks exercise exactly what systemd would run,
and can SIGKILL and restart any part of it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gateway.adapters import keystore
from gateway.adapters.mosquitto import MosquittoBroker, free_port
from gateway.core.errors import LocalError

BOX_ID = "demo-box"
EDGE_AE = "MGW"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_toml(tables: dict[str, dict[str, object]]) -> str:
    out = []
    for table, keys in tables.items():
        out.append(f"[{table}]")
        out += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        out.append("")
    return "\n".join(out)


class LoopbackDeployment:
    def __init__(self, root: Path, edge_overrides: dict[str, dict[str, object]] | None = None,
                 broker_persistence: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.broker = MosquittoBroker(root / "broker", persistence=broker_persistence)
        self.dicom_port = free_port()
        self.cloud_dir = root / "cloud"
        self.edge_dir = root / "edge"
        self.cloud_pub = keystore.public_b64(keystore.load_or_create_x25519(self.cloud_dir / "keys" / "envelope.key"))
        self.cloud_toml = root / "cloud.toml"
        self.edge_toml = root / "edge.toml"
        self._edge_overrides = edge_overrides or {}
        self.edge: subprocess.Popen[bytes] | None = None
        self.cloud: subprocess.Popen[bytes] | None = None

    def write_configs(self) -> None:
        mqtt = {"host": "127.0.0.1", "port": self.broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0}
        self.cloud_toml.write_text(render_toml({"cloud": {"state_dir": str(self.cloud_dir)}, "mqtt": mqtt}))
        tables: dict[str, dict[str, object]] = {
            "box": {"id": BOX_ID, "cloud_public_key": self.cloud_pub, "state_dir": str(self.edge_dir)},
            "dicom": {"ae_title": EDGE_AE, "bind_host": "127.0.0.1", "port": self.dicom_port},
            "mqtt": dict(mqtt),
            "uplink": {"ack_timeout_s": 5.0},
        }
        for table, keys in self._edge_overrides.items():
            tables.setdefault(table, {}).update(keys)
        self.edge_toml.write_text(render_toml(tables))

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args], stdout=subprocess.DEVNULL,
            stderr=open(self.root / log_name, "ab"), env=env,  # noqa: SIM115 - the child owns it
        )

    def start(self) -> None:
        self.broker.start()
        self.write_configs()
        self.start_cloud()
        self.start_edge()

    def start_cloud(self) -> None:
        self.cloud = self._spawn(["cloud", "run", "--config", str(self.cloud_toml)], "cloud.log")

    def start_edge(self, wait_s: float = 30.0) -> None:
        self.edge = self._spawn(["edge", "run", "--config", str(self.edge_toml)], "edge.log")
        self.wait_listening(wait_s)

    def wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in (self.edge, self.cloud):
                if proc is not None and proc.poll() is not None:
                    raise LocalError(f"a service exited early with {proc.returncode}; see {self.root}/*.log")
            try:
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise LocalError(f"the edge did not listen on port {self.dicom_port} within {timeout_s} s")

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill_edge(self) -> None:
        self._end(self.edge, signal.SIGKILL)

    def kill_cloud(self) -> None:
        self._end(self.cloud, signal.SIGKILL)

    def stop(self) -> None:
        self._end(self.edge, signal.SIGTERM)
        self._end(self.cloud, signal.SIGTERM)
        self.broker.stop()

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("edge.log", "cloud.log"):
            path = self.root / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


__all__ = ["BOX_ID", "EDGE_AE", "LoopbackDeployment", "free_port"]
