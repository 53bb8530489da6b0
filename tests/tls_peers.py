"""Real TLS peers for tests: a fleet CA, a mosquitto broker with mutual TLS and ACLs, and raw MQTT clients.

The clients are plain paho clients (not ``MqttLink``) so that a test can see
exactly what the broker grants or refuses: CONNACK codes, SUBACK codes and the
messages actually delivered.
"""

from __future__ import annotations

import queue
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.adapters import ports
from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.broker import pki as broker_pki
from tests.peers import PEER_START_S, _missing

PREFIX = "mgw/v1"
# mosquitto's words when a client's stream broke: TLS record errors, framing errors, drops.
BROKEN_STREAM = re.compile(r"disconnect|closed its connection|exceeded timeout|bad record mac|protocol error|"
                           r"wrong version number|openssl error|decryption failed|unexpected eof|socket error",
                           re.IGNORECASE)


def broker_log_offset(broker: MosquittoBroker) -> int:
    """Where mosquitto's log ends now; pass it to ``broken_streams`` to look only at what follows."""
    path = broker.workdir / "mosquitto.log"
    return path.stat().st_size if path.exists() else 0


def broken_streams(broker: MosquittoBroker, since: int) -> list[str]:
    """Lines of mosquitto's log after offset ``since`` that say a client lost its connection or TLS failed."""
    with open(broker.workdir / "mosquitto.log", "rb") as fh:
        fh.seek(since)
        text = fh.read().decode(errors="replace")
    return [line for line in text.splitlines() if BROKEN_STREAM.search(line)]


def box_identity(authority: FleetAuthority, box_id: str, out: Path, site: str = "site-1",
                 modality: str = "CT") -> tuple[Path, Path]:
    """Enrol ``box_id`` the real way (token + CSR, key made here); ``(cert, key)`` files."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, box_id)]))
           .sign(key, hashes.SHA256()))
    token = authority.create_token(box_id, site, modality, ttl_s=600)
    issued = authority.redeem(token, csr.public_bytes(serialization.Encoding.PEM), days=30)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{box_id}.pem", out / f"{box_id}.key"
    cert_path.write_bytes(issued.certificate_pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


PLUGIN_DIR = Path(tempfile.gettempdir()) / "mgw-broker-plugin"


def start_tls_broker(authority: FleetAuthority, workdir: Path) -> MosquittoBroker:
    """A mosquitto with mutual TLS and the guard plugin; it reads the CRL at ``authority.crl_copies[0]``."""
    crl = authority.crl_copies[0] if authority.crl_copies else None
    tls = broker_pki.emit(authority, workdir / "pki", PREFIX, ["127.0.0.1"], crl_file=crl, plugin_dir=PLUGIN_DIR)
    broker = MosquittoBroker(workdir, tls=tls, persistence=False)
    broker.start()
    return broker


def service_identity(authority: FleetAuthority, role: str, worker: str, out: Path) -> tuple[Path, Path]:
    """A cloud process's ``(cert, key)`` files, CN ``cloud.<role>.<worker>``."""
    key, cert = broker_pki.issue_service_identity(authority, role, worker, out)
    return cert, key


@dataclass
class Client:
    """A raw MQTT 5 client; ``connect()`` returns the CONNACK outcome or the TLS error text."""

    port: int
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    client_id: str = "test"
    messages: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self._connack: queue.Queue[int] = queue.Queue()
        self._mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None:
            ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        self._mqtt.tls_set_context(ctx)
        self.disconnected = threading.Event()
        self._mqtt.on_connect = lambda c, u, f, rc, p: self._connack.put(rc.value)
        self._mqtt.on_disconnect = self._on_disconnect
        self._mqtt.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self._mqtt.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put([r.value for r in rcs])
        self._thread: threading.Thread | None = None

    def _on_disconnect(self, client, userdata, flags, rc, properties) -> None:  # type: ignore[no-untyped-def]
        self._connack.put(-1)
        self.disconnected.set()

    def connect(self, timeout_s: float = 10.0, clean_start: bool = True) -> str:
        """"ok", "refused:<code>" or "tls:<error>" / "closed". Not reconnecting after a drop."""
        self._mqtt.reconnect_delay_set(3600, 3600)
        try:
            self._mqtt.connect("127.0.0.1", self.port, keepalive=30, clean_start=clean_start,
                               properties=self._session_properties(clean_start))
        except (ssl.SSLError, OSError) as exc:
            return f"tls:{exc}"
        self._mqtt.loop_start()
        try:
            code = self._connack.get(timeout=timeout_s)
        except queue.Empty:
            return "closed"
        return "ok" if code == 0 else "closed" if code < 0 else f"refused:{code}"

    @staticmethod
    def _session_properties(clean_start: bool) -> Properties | None:
        if clean_start:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        return props

    def subscribe(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        self._mqtt.subscribe(topic, qos=1)
        return self.subacks.get(timeout=timeout_s)

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        info = self._mqtt.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout_s)

    def close(self) -> None:
        try:
            self._mqtt.disconnect()
        finally:
            self._mqtt.loop_stop()


def mosquitto_on(conf: Path, port: int, what: str) -> subprocess.Popen[bytes]:
    """mosquitto on a configuration rendered for ``port`` (its log in ``conf``'s ``data/``), once it
    listens there itself; ``PortInUseError`` if the port was taken, for ``ports.on_free_port`` to
    try another."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    output = ports.appended(conf.parent / "data" / "mosquitto.log")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ports.wait_listening(proc, [port], what, output, PEER_START_S)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


@contextmanager
def fleet_ca_and_tls_broker(root: Path) -> Iterator[tuple[FleetAuthority, MosquittoBroker]]:
    """A fleet CA in ``root/ca`` and a mutual-TLS mosquitto with the guard it trusts; both closed after."""
    authority = FleetAuthority(root / "ca")
    try:
        broker = start_tls_broker(authority, root / "broker")
    except Exception as exc:  # noqa: BLE001 - only to skip or fail with the reason
        authority.close()
        _missing(str(exc))
    try:
        yield authority, broker
    finally:
        broker.stop()
        authority.close()
