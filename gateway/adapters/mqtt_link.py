"""The MQTT 5 link (paho-mqtt 2.x): the only module that imports paho.

paho keeps its session in memory only, so it is a pipe here, not a store: the
edge outbox and the cloud index are the sources of truth. This adapter runs
its own network thread with reconnects (exponential backoff with jitter),
turns paho callbacks into plain calls (``on_message(Inbound)``,
``on_state(bool)``, both on the network thread) and never lets a paho return
code escape.

Threads: only the network thread touches the paho client and its TLS socket.
``publish()`` and ``ack()`` put a command in a ``Mailbox`` (a bounded queue
whose socketpair wakes the network thread's select() at once); ``stop()``,
``nudge()`` and ``reload_identity()`` set a flag and wake it. The network thread
drives paho with its external-loop API: ``socket()``, ``loop_read()``,
``loop_write()``, ``loop_misc()``, ``want_write()``. Not ``loop()`` from our
thread: then paho's ``publish()``/``ack()`` write to the socket from the
caller's thread (``_packet_queue`` calls ``loop_write()`` when ``_thread is
None``) while the network thread reads or closes it, which corrupts OpenSSL's
state and the heap. Not ``loop_start()``: its thread reconnects on its own
schedule (no jitter, no nudge, no fresh will per connect) and paho's state
would still be shared between threads. See docs/architecture.md, "Threads".
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.adapters.mailbox import Mailbox
from gateway.adapters.mqtt_types import (
    AckCommand,
    Inbound,
    PacketTooLargeError,
    PublishCommand,
    Will,
    publish_packet_bytes,
)
from gateway.config import MqttSettings
from gateway.core.policy import backoff_s
from gateway.logs import MSG

__all__ = ["Inbound", "MqttLink", "PacketTooLargeError", "Will", "publish_packet_bytes"]
log = logging.getLogger(__name__)

QUEUE_COMMANDS = 256  # publishes and acks waiting for the network thread (chunk frames: <= 32 MiB)
QUEUE_WAIT_S = 5.0  # a caller waits at most this long for room in the queue, then gets False
TICK_S = 1.0  # the network thread's longest sleep: keepalive pings and PINGRESP timeouts
TURN_COMMANDS = 64  # commands handed to paho per turn, so reading is never starved
STOP_FLUSH_S = 2.0  # at stop, queued messages and the DISCONNECT get this long to leave


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
        self._commands: Mailbox[PublishCommand | AckCommand] = Mailbox(QUEUE_COMMANDS)
        self._stop = threading.Event()
        self._kick = threading.Event()  # ends a reconnect back-off early: nudge()
        self._reload = threading.Event()  # reload_identity() asked; the network thread does it
        self._will_on_stop = False
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._epoch = 0  # +1 at every CONNACK; acks of an older connection are dropped
        self._publish_floor = 0  # publishes queued before this epoch are dropped: the session they were for is gone
        self.reconnects = 0
        self.nudges = 0
        self.dropped = 0  # commands queued while up whose connection ended before they were sent
        self.refused = 0  # QoS 1 publishes the broker answered with a failure reason (not authorised, ...)
        self.client_id = client_id
        self._max_inflight = max_inflight
        self.server_max_packet_bytes = 0  # the broker's Maximum Packet Size from CONNACK; 0 = none announced
        self.server_receive_maximum = 0  # the broker's Receive Maximum from CONNACK; 0 = none announced
        # CONNACK's session present flag of the last connection: the broker kept our subscriptions and
        # what it queued for us. Set on the network thread before ``on_state(True)``, which may read it.
        self.session_present = False
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                                   manual_ack=manual_ack)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_subscribe = self._handle_suback
        self._client.on_publish = self._handle_puback
        self._pending_subscriptions: dict[int, list[str]] = {}  # SUBSCRIBE mid -> topics, until SUBACK
        self._client.on_message = self._handle_message
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        self._tls = self._tls_context(settings)
        if self._tls is not None:
            self._client.tls_set_context(self._tls)

    @staticmethod
    def _tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
        if not settings.ca_file:
            return None
        context = ssl.create_default_context(cafile=settings.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file or None)
        return context

    def reload_identity(self) -> None:
        """Load the (renewed) client certificate and key; the next connection presents them.

        The network thread loads them (the SSL context is its own) before its next connect."""
        if self.alive() and not self._on_network_thread():
            self._reload.set()
            self._commands.wake()
        else:
            self._load_identity()

    def _load_identity(self) -> None:
        self._reload.clear()
        if self._tls is not None and self._settings.cert_file:
            self._tls.load_cert_chain(self._settings.cert_file, self._settings.key_file or None)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._commands.open()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0, send_will: bool = False) -> None:
        """Send what is queued, then disconnect; with ``send_will`` the broker publishes our
        will (MQTT 5 reason 0x04)."""
        self._will_on_stop = send_will
        self._stop.set()
        self._commands.wake()
        if self._thread is not None and not self._on_network_thread():
            self._thread.join(timeout_s)

    def nudge(self) -> None:
        """A network link came up: end the current reconnect back-off and try at once."""
        self.nudges += 1
        self._kick.set()
        self._commands.wake()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def alive(self) -> bool:
        """The network thread is running (for the watchdog)."""
        return self._thread is not None and self._thread.is_alive()

    def _on_network_thread(self) -> bool:
        return self._thread is not None and threading.get_ident() == self._thread.ident

    # -- traffic (any thread) -----------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
        expiry_s: int | None = None,
    ) -> bool:
        """Queue a message for the network thread; False when the link is down, or stalled (no
        room in the queue within QUEUE_WAIT_S): nothing was queued.

        True means queued on a live connection, not delivered. If that connection ends before
        the message is handed to paho, it goes on the next connection when the broker resumes the
        session (``session_present``), and is lost when the broker starts a new one (the caller's
        window resends).
        A message larger than the broker accepts raises ``PacketTooLargeError`` here."""
        if not self._connected.is_set() or self._stop.is_set():
            return False
        size = publish_packet_bytes(topic, payload, qos, expiry_s is not None)
        if self.server_max_packet_bytes and size > self.server_max_packet_bytes:
            # Sending it would make the broker close the connection (0x95), again and again.
            raise PacketTooLargeError(size, self.server_max_packet_bytes)
        return self._submit(PublishCommand(self._epoch, topic, payload, qos, retain, expiry_s))

    def ack(self, message: Inbound) -> None:
        """With ``manual_ack``: send the PUBACK once the message is durably handled.

        Dropped if the message's connection has ended: the broker redelivers it."""
        if message.qos == 0 or self._stop.is_set():
            return
        if not self._submit(AckCommand(message.epoch, message.mid, message.qos)) and not self._on_network_thread():
            log.warning("PUBACK not sent: the link is stalled", extra={
                "MESSAGE_ID": MSG.UPLINK_DOWN.value, "REASON": f"command queue full for {QUEUE_WAIT_S:.0f} s"})

    def _submit(self, command: PublishCommand | AckCommand) -> bool:
        if self._on_network_thread():  # from our own callback: hand it to paho now
            return self._execute(command)
        return self._commands.put(command, QUEUE_WAIT_S)  # False: the network thread is stuck

    # -- network thread: the only one that touches self._client ----------------------
    def _execute(self, command: PublishCommand | AckCommand) -> bool:
        """Hand one command to paho. An ack of an earlier connection is dropped (the broker
        redelivers its message), and so is a publish queued before the broker last started a new
        session; one queued before a reconnect that resumed the session goes on this connection."""
        stale = command.epoch != self._epoch if isinstance(command, AckCommand) else command.epoch < self._publish_floor
        if stale or not self._connected.is_set():
            self.dropped += 1
            return False
        if isinstance(command, AckCommand):
            return self._client.ack(command.mid, command.qos) == paho.MQTT_ERR_SUCCESS
        props = None
        if command.expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = command.expiry_s
        info = self._client.publish(command.topic, command.payload, qos=command.qos, retain=command.retain,
                                    properties=props)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def _hand_over(self, limit: int) -> None:
        """Queued commands to paho while its output buffer is empty (the socket keeps up)."""
        for _ in range(limit):
            if self._client.want_write() or self._client.socket() is None:
                return
            command = self._commands.get()
            if command is None:
                return
            self._execute(command)

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._load_identity()
                epoch = self._epoch
                if self._connect_once():
                    self._serve()
                    self._set_down("connection ended")
                    if self._epoch != epoch:  # it was up: reconnect at once
                        attempt = 0
                        continue
                delay = backoff_s(attempt, self._settings.reconnect_min_s, self._settings.reconnect_max_s,
                                  self._jitter())
                attempt += 1
                if self._idle(delay):
                    attempt = 0  # nudged: the network changed, start the back-off afresh
        finally:
            self._connected.clear()
            self._close()

    def _idle(self, delay: float) -> bool:
        """Back off for ``delay`` seconds; True if nudged. What is queued stays (bounded: ``publish``
        refuses while down); the next CONNACK decides whether it goes (``_execute``)."""
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            if self._kick.is_set():
                self._kick.clear()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._commands.wait(None, False, remaining)
        return False

    def _serve(self) -> None:
        """One connection, until it ends or stop() is asked."""
        while not self._stop.is_set():
            if self._reload.is_set():
                self._load_identity()
            if self._connected.is_set():  # not before CONNACK: it decides what the queue may send
                self._hand_over(TURN_COMMANDS)
            sock = self._client.socket()
            if sock is None or not self._turn(sock):
                return
        self._disconnect()

    def _turn(self, sock: paho.SocketLike) -> bool:
        """Wait for the socket or a wake-up, then read, write and keep alive; False once it ended."""
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0  # decrypted, not yet read
        busy = pending or (self._connected.is_set() and not self._commands.empty() and not self._client.want_write())
        readable, writable = self._commands.wait(sock, self._client.want_write(), 0.0 if busy else TICK_S)
        ok = paho.MQTT_ERR_SUCCESS
        if (readable or pending) and self._client.loop_read() != ok:
            return False
        if writable and self._client.socket() is not None and self._client.loop_write() != ok:
            return False
        return self._client.socket() is not None and self._client.loop_misc() == ok

    def _disconnect(self) -> None:
        """At stop: send what is queued and read its PUBACKs, then DISCONNECT (with the will if
        asked); all within STOP_FLUSH_S."""
        deadline = time.monotonic() + STOP_FLUSH_S
        while self._client.socket() is not None and time.monotonic() < deadline and (
                not self._commands.empty() or self._client.want_write() or self._unacknowledged()):
            self._hand_over(TURN_COMMANDS)
            if not self._turn(self._client.socket()):  # type: ignore[arg-type]
                return
        if self._client.socket() is None:
            return
        if self._will_on_stop:
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        else:
            self._client.disconnect()
        while (sock := self._client.socket()) is not None and self._client.want_write() and \
                time.monotonic() < deadline:
            self._commands.wait(sock, True, max(0.0, deadline - time.monotonic()))
            self._client.loop_write()

    def _unacknowledged(self) -> bool:
        """QoS 1 messages still without PUBACK, in flight or held back by the broker's Receive Maximum.
        Closing before their PUBACKs are read would reset the connection (unread data) and the
        broker could drop what it had not yet read, the DISCONNECT included."""
        return bool(self._client._out_messages)  # noqa: SLF001

    def _close(self) -> None:
        sock = self._client.socket()
        if sock is not None:  # the DISCONNECT could not leave in time
            sock.close()
        self._commands.close()

    def _connect_once(self) -> bool:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
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
        self._pending_subscriptions.clear()
        if self._subscriptions:
            result, mid = client.subscribe([(topic, qos) for topic, qos in self._subscriptions])
            if result == paho.MQTT_ERR_SUCCESS and mid is not None:
                self._pending_subscriptions[mid] = [topic for topic, _ in self._subscriptions]
        self._epoch += 1
        self.session_present = bool(flags.session_present)
        if not self.session_present:  # a new session: the owner resends what it still wants sent
            self._publish_floor = self._epoch
        self._connected.set()
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

    def _handle_suback(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        """Log what the broker granted: a refused subscription means this service hears nothing."""
        topics = self._pending_subscriptions.pop(mid, [])
        refused = [f"{topic}: {code}" for topic, code in zip(topics, reason_codes, strict=False) if code.is_failure]
        if refused:
            log.error("broker refused subscription", extra={
                "MESSAGE_ID": MSG.SUBSCRIPTION_REFUSED.value, "REFUSED": "; ".join(refused)})
        elif topics:
            log.info("subscriptions granted", extra={"MESSAGE_ID": MSG.UPLINK_SUBSCRIBED.value,
                                                     "TOPICS": ",".join(topics)})

    def _handle_puback(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        """A PUBACK with a failure reason (MQTT 5: 0x87 not authorised, 0x97 quota, ...): the
        message went nowhere. Counted, and the first of each run of refusals logged."""
        if reason_code.is_failure:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.error("broker refused a publish", extra={
                    "MESSAGE_ID": MSG.PUBLISH_REFUSED.value, "REASON": str(reason_code), "REFUSED": self.refused})

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._set_down(str(reason_code))

    def _set_down(self, reason: str) -> None:
        if not self._connected.is_set():
            return
        self._connected.clear()
        if self._stop.is_set():  # our own disconnect at stop() is not an outage
            return
        self.reconnects += 1
        log.warning("uplink lost", extra={"MESSAGE_ID": MSG.UPLINK_DOWN.value, "REASON": reason})
        self._notify(False)

    def _notify(self, up: bool) -> None:
        try:
            self._on_state(up)
        except Exception:  # observer: log and swallow
            log.exception("link state observer failed")

    def _handle_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        inbound = Inbound(message.topic, bytes(message.payload), message.mid, message.qos, self._epoch)
        try:
            self._on_message(inbound)
        except Exception:
            log.exception("inbound message handler failed", extra={"TOPIC": message.topic})
