"""The MQTT 5 link (paho-mqtt 2.x): the only module that imports paho.

paho keeps its session in memory only, so it is a pipe here, not a store: the
edge outbox and the cloud index are the sources of truth. This adapter runs
its own network thread with reconnects (exponential backoff with jitter),
turns paho callbacks into plain calls (``on_message(Inbound)``,
``on_state(bool)``) and never lets a paho return code escape.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttSettings
from gateway.core.errors import LocalError
from gateway.core.policy import backoff_s
from gateway.logs import MSG

log = logging.getLogger(__name__)


class PacketTooLargeError(LocalError):
    """A PUBLISH would exceed the broker's Maximum Packet Size; it was not sent."""

    def __init__(self, packet_bytes: int, max_packet_bytes: int) -> None:
        super().__init__(f"a {packet_bytes}-byte PUBLISH exceeds the broker's maximum packet size {max_packet_bytes}")
        self.packet_bytes, self.max_packet_bytes = packet_bytes, max_packet_bytes


def _varint_bytes(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_packet_bytes(topic: str, payload: bytes, qos: int, with_expiry: bool) -> int:
    """Size of the MQTT 5 PUBLISH packet paho sends for this message (MQTT 5.0, 3.3)."""
    props = 5 if with_expiry else 0  # Message Expiry Interval: id byte + four-byte integer
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + _varint_bytes(props) + props + len(payload)
    return 1 + _varint_bytes(remaining) + remaining


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        subscriptions: list[tuple[str, int]],
        on_message: Callable[[Inbound], None],
        on_state: Callable[[bool], None] = lambda up: None,
        session_expiry_s: int = 7 * 86400,
        manual_ack: bool = False,
        max_inflight: int = 64,
        will: Will | None = None,
        jitter: Callable[[], float] = random.random,
        will_factory: Callable[[], Will] | None = None,
    ) -> None:
        self._settings = settings
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_state = on_state
        self._session_expiry_s = session_expiry_s
        self._jitter = jitter
        self._will_factory = will_factory  # called before every connect (a fresh will each time)
        self._stop = threading.Event()
        self._kick = threading.Event()  # ends a reconnect back-off early: stop() or nudge()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self.reconnects = 0
        self.nudges = 0
        self._outage_logged = False
        self.client_id = client_id
        self._max_inflight = max_inflight
        self.server_max_packet_bytes = 0  # the broker's Maximum Packet Size from CONNACK; 0 = none announced
        self.server_receive_maximum = 0  # the broker's Receive Maximum from CONNACK; 0 = none announced
        self._client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
        )
        self._client.max_inflight_messages_set(max_inflight)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        self._tls: ssl.SSLContext | None = None
        if settings.ca_file:
            self._tls = ssl.create_default_context(cafile=settings.ca_file)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.cert_file:
                self._tls.load_cert_chain(settings.cert_file, settings.key_file or None)
            self._client.tls_set_context(self._tls)

    def reload_identity(self) -> None:
        """Load the (renewed) client certificate and key; the next connection presents them."""
        if self._tls is not None and self._settings.cert_file:
            self._tls.load_cert_chain(self._settings.cert_file, self._settings.key_file or None)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0, send_will: bool = False) -> None:
        """Disconnect; with ``send_will`` the broker publishes our will (MQTT 5 reason 0x04)."""
        self._stop.set()
        self._kick.set()
        try:
            if send_will:
                self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
            else:
                self._client.disconnect()
        except (OSError, ValueError):  # already gone
            pass
        if self._thread is not None:
            self._thread.join(timeout_s)

    def nudge(self) -> None:
        """A network link came up: end the current reconnect back-off and try at once."""
        self.nudges += 1
        self._kick.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def alive(self) -> bool:
        """The network thread is running (for the watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    # -- traffic -----------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
        expiry_s: int | None = None,
    ) -> bool:
        """Hand a message to paho; False when the link is down (nothing queued)."""
        if not self._connected.is_set():
            return False
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry_s
        size = publish_packet_bytes(topic, payload, qos, expiry_s is not None)
        if self.server_max_packet_bytes and size > self.server_max_packet_bytes:
            # Sending it would make the broker close the connection (0x95), again and again.
            raise PacketTooLargeError(size, self.server_max_packet_bytes)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def ack(self, message: Inbound) -> None:
        """With ``manual_ack``: send the PUBACK once the message is durably handled."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    # -- network thread -------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            if not self._connect_once():
                delay = backoff_s(attempt, self._settings.reconnect_min_s,
                                  self._settings.reconnect_max_s, self._jitter())
                attempt += 1
                if self._kick.wait(delay) and not self._stop.is_set():
                    attempt = 0  # nudged: the network changed, start the back-off afresh
                self._kick.clear()
                continue
            attempt = 0
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.2)
                if rc != paho.MQTT_ERR_SUCCESS:
                    break
            self._set_down(f"loop ended: {paho.error_string(rc)}")
        try:
            self._client.loop(timeout=0.1)
        except (OSError, ValueError):
            pass

    def _connect_once(self) -> bool:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        if self._will_factory is not None:
            will = self._will_factory()
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        try:
            self._client.connect(
                self._settings.host, self._settings.port, self._settings.keepalive_s,
                clean_start=False, properties=props,
            )
        except (TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            log.warning("broker unreachable", extra={
                "MESSAGE_ID": MSG.UPLINK_DOWN.value, "BROKER": f"{self._settings.host}:{self._settings.port}",
                "ERROR": str(exc)})
            return False
        return True

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.warning("broker refused connection", extra={
                "MESSAGE_ID": MSG.UPLINK_DOWN.value, "REASON": str(reason_code)})
            return
        self._apply_server_limits(client, properties)
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos=qos)
        self._connected.set()
        self._outage_logged = False
        log.info("uplink connected", extra={
            "MESSAGE_ID": MSG.UPLINK_UP.value, "BROKER": f"{self._settings.host}:{self._settings.port}",
            "SESSION_PRESENT": bool(flags.session_present)})
        self._notify(True)

    def _apply_server_limits(self, client: paho.Client, properties: Properties | None) -> None:
        """Honour the broker's CONNACK limits: never more in flight, never a larger packet."""
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties else None
        self.server_receive_maximum = int(receive_maximum or 0)
        inflight = max(1, min(self._max_inflight, self.server_receive_maximum or self._max_inflight))
        # paho 2 refuses max_inflight_messages_set() once connected and never reads Receive
        # Maximum itself; at CONNACK nothing is in flight yet on this connection, so its limit
        # is set directly before anything is (re)sent.
        client._max_inflight_messages = inflight  # noqa: SLF001
        max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
        self.server_max_packet_bytes = int(max_packet or 0)

    def receive_maximum(self) -> int:
        """QoS 1 publishes the broker lets us have in flight; 0 if it announced no limit."""
        return self.server_receive_maximum

    def max_payload_bytes(self, topic: str) -> int:
        """Largest QoS 1 payload on ``topic`` the broker accepts; 0 if it announced no limit."""
        if not self.server_max_packet_bytes:
            return 0
        return max(0, self.server_max_packet_bytes - (publish_packet_bytes(topic, b"", 1, False) + 4))

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._set_down(str(reason_code))

    def _set_down(self, reason: str) -> None:
        if not self._connected.is_set():
            return
        self._connected.clear()
        self.reconnects += 1
        log.warning("uplink lost", extra={"MESSAGE_ID": MSG.UPLINK_DOWN.value, "REASON": reason})
        self._notify(False)

    def _notify(self, up: bool) -> None:
        try:
            self._on_state(up)
        except Exception:  # observer: log and swallow
            log.exception("link state observer failed")

    def _handle_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        inbound = Inbound(message.topic, bytes(message.payload), message.mid, message.qos)
        try:
            self._on_message(inbound)
        except Exception:
            log.exception("inbound message handler failed", extra={"TOPIC": message.topic})
