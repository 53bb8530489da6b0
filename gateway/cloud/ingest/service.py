"""One cloud ingest worker: the MQTT shared subscription wired to ``Ingest``.

Chunks are PUBACKed (manual ack) only after ``Ingest`` has handled them, so
the broker keeps what a crashed worker had not staged; the cloud's own ack
frames are what the edge trusts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway import __version__
from gateway.adapters import keystore
from gateway.adapters.metrics_http import MetricsServer, Sample
from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.cloud import backends
from gateway.cloud.archive.forward import Forwarder, run_forever
from gateway.cloud.archive.store import Archive
from gateway.cloud.authority import ack_keys
from gateway.cloud.broker import pki as broker
from gateway.cloud.fleet.deadletter import DeadLetterReason, DeadLetters
from gateway.cloud.ingest.pipeline import Ingest
from gateway.config import BOX_ID, CloudSettings
from gateway.core import topics
from gateway.core.errors import FrameError, GatewayError, LocalError
from gateway.core.framing import CHUNK_HEADER_BYTES
from gateway.logs import MSG
from gateway.paths import Paths
from gateway.supervision import StartRecord

log = logging.getLogger(__name__)
STAGING_SWEEP_S = 3600.0
DEAD_LETTER_FLUSH_S = 1.0
GAUGES_S = 10.0  # how often the worker counts what is staged and queued for forwarding, for /metrics
LOOP_STALE_S = 120.0  # one object's assembly (up to max_object_bytes) happens inside a turn


@dataclass(frozen=True)
class Gauges:
    """What the worker counted last (every ``GAUGES_S``): scrapes read it, never the databases."""

    staged_transfers: int = 0
    staged_chunks: int = 0
    forward_queue: dict[str, int] = field(default_factory=dict)  # "destination:state" -> entries


class CloudService:
    def __init__(self, settings: CloudSettings, paths: Paths) -> None:
        self.settings = settings
        self.paths = paths
        key = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
        self.archive = backends.open_archive(settings, paths)
        # The worker thread's own fleet-store connection, for dead letters (opened before it starts).
        self._letters_store = backends.open_fleet_store(settings, paths)
        self.dead_letters = DeadLetters(self._letters_store, settings.dead_letters,
                                        f"ingest-{settings.ingest.share_group}-{settings.ingest.worker_id}", time.time)
        self.signer = ack_keys.load_signer(paths.key_file(settings.cloud.ack_key_file))
        self.staging = backends.open_staging(settings, paths)
        self.ingest = Ingest(settings.ingest, key, self.signer, self.archive, self.staging,
                             dead_letters=self.dead_letters, budgets=settings.budgets)
        self.gauges = Gauges()
        self.forwarder: Forwarder | None = None
        self._forwarder: threading.Thread | None = None
        self._forward_archive: Archive | None = None
        destinations = backends.open_destinations(settings, paths)
        if destinations:  # its own index connection: the ingest thread never waits on a PACS
            owner = f"{settings.ingest.share_group}-{settings.ingest.worker_id}"
            self._forward_archive = backends.open_archive(settings, paths)
            forwarder = self.forwarder = Forwarder(settings.forward, self._forward_archive, destinations, owner)
            self._forwarder = threading.Thread(
                target=run_forever, args=(forwarder, self._stop_requested), kwargs={"wait": self._wait},
                name="forward", daemon=True)
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._stop = threading.Event()
        prefix, group = settings.mqtt.topic_prefix, settings.ingest.share_group
        self.link = MqttLink(
            settings.mqtt, client_id=broker.service_client_id(settings.mqtt, "ingest", settings.ingest.worker_id),
            subscriptions=[(topics.ingest_subscription(prefix, group), 1)],
            on_message=self._inbox.put, manual_ack=True, session_expiry_s=settings.ingest.session_expiry_s,
        )
        self._worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        self.starts = StartRecord(paths.state_dir, f"ingest-{group}-{settings.ingest.worker_id}", time.time)
        self.metrics = MetricsServer(settings.ingest.metrics_bind, settings.ingest.metrics_port, self._samples,
                                     backends.bearer_token(paths, settings.ingest.metrics_token_file))
        self.topic_rejects = 0
        self.loop_heartbeat = time.monotonic()

    def _samples(self) -> Iterator[Sample]:
        """/metrics of this worker: what it handled, what it set aside, and its own starts."""
        labels = {"worker": f"{self.settings.ingest.share_group}-{self.settings.ingest.worker_id}"}
        counters = self.ingest.counters()
        for name, value in counters.items():
            yield Sample(f"mgw_ingest_{name}_total", f"ingest counter {name}", value, labels, counter=True)
        yield from _by_label(counters, "chunks_rejected_", "mgw_ingest_chunks_refused_total",
                             "chunks refused (not acknowledged, dead-lettered), by reason", "reason", labels)
        yield from _by_label(counters, "chunks_over_budget_", "mgw_ingest_chunks_throttled_total",
                             "chunks of a box over its budget (not acknowledged: resent later), by limit", "limit",
                             labels)
        g = self.gauges
        yield Sample("mgw_ingest_staged_transfers", "unfinished transfers in the shared staging (all workers)",
                     g.staged_transfers, labels)
        yield Sample("mgw_ingest_staged_chunks", "chunks in the shared staging (all workers)", g.staged_chunks, labels)
        for key, n in sorted(g.forward_queue.items()):
            destination, state = key.rsplit(":", 1)
            yield Sample("mgw_ingest_forward_queue", "archived objects to forward, by destination and state", n,
                         {**labels, "destination": destination, "state": state})
        if self.forwarder is not None:
            for result, n in vars(self.forwarder.counters).items():
                yield Sample("mgw_ingest_forwards_total", "forward attempts of this worker, by result", n,
                             {**labels, "result": result}, counter=True)
        yield Sample("mgw_ingest_topic_rejects_total", "messages on a topic that is not a chunk topic",
                     self.topic_rejects, labels, counter=True)
        for reason in DeadLetterReason:
            yield Sample("mgw_ingest_dead_letters_total", "messages set aside, by reason",
                         self.dead_letters.counts[reason], {**labels, "reason": reason.value}, counter=True)
        yield Sample("mgw_ingest_uplink_connected", "1 while connected to the broker", int(self.link.connected),
                     labels)
        yield Sample("mgw_ingest_broker_reconnects_total", "connections to the broker lost", self.link.reconnects,
                     labels, counter=True)
        yield from self.starts.samples()

    def _stop_requested(self) -> bool:
        return self._stop.is_set()

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def start(self) -> None:
        self.metrics.start()
        self._worker.start()
        if self._forwarder is not None:
            self._forwarder.start()
        self.link.start()
        log.info("cloud ingest started", extra={
            "MESSAGE_ID": MSG.SERVICE_STARTED.value, "VERSION": __version__,
            "BROKER": f"{self.settings.mqtt.host}:{self.settings.mqtt.port}",
            "ENVELOPE_PUBLIC_KEY": keystore.public_b64(
                keystore.read_x25519(self.paths.key_file(self.settings.cloud.envelope_key_file))),
            "ACK_KEY_ID": self.signer.key_id.hex()})

    def stop(self) -> None:
        self._stop.set()
        self.metrics.stop()
        self.link.stop()
        self._worker.join(10)
        if self._forwarder is not None:
            self._forwarder.join(30)
        if self._forward_archive is not None:
            self._forward_archive.close()
        self.ingest.close()
        self.archive.close()
        self._letters_store.close()

    def ports(self) -> dict[str, int]:
        return {} if self.metrics.port is None else {"metrics": self.metrics.port}

    def alive(self) -> bool:
        """The worker thread turns and the MQTT thread runs (for the watchdog)."""
        fresh = time.monotonic() - self.loop_heartbeat < LOOP_STALE_S
        return fresh and self._worker.is_alive() and self.link.alive()

    def _work(self) -> None:
        prefix = self.settings.mqtt.topic_prefix
        next_expiry = next_flush = next_count = 0.0
        while not self._stop.is_set():
            self.loop_heartbeat = time.monotonic()
            if time.monotonic() >= next_expiry:
                self._expire()
                next_expiry = time.monotonic() + STAGING_SWEEP_S
            if time.monotonic() >= next_count:
                self._count()
                next_count = time.monotonic() + GAUGES_S
            try:
                message = self._inbox.get(timeout=0.2)
            except queue.Empty:
                pass
            else:
                self._handle_one(prefix, message)
            if time.monotonic() >= next_flush:  # also when the flood has stopped: idle turns flush too
                self._flush_dead_letters()
                next_flush = time.monotonic() + DEAD_LETTER_FLUSH_S
        self._flush_dead_letters()

    def _handle_one(self, prefix: str, message: Inbound) -> None:
        """Handle one message and PUBACK it, whatever happens: nothing a box sends ends this loop."""
        try:
            self._handle(prefix, message)
        except LocalError as exc:
            # Our disk or index failed. PUBACK anyway: a held message would block the
            # broker's in-flight slots, and the edge resends every chunk the cloud has
            # not acknowledged itself.
            log.error("chunk not handled", extra={"ERROR": str(exc)})
        except Exception as exc:  # a bug met by this message: set it aside, go on with the next
            log.exception("chunk handling failed; message dead-lettered")
            box_id = _topic_box(prefix, message.topic)
            self.dead_letters.put(box_id, message.topic, DeadLetterReason.INTERNAL,
                                  f"{type(exc).__name__}: {exc}", len(message.payload))
        finally:
            self.link.ack(message)

    def _flush_dead_letters(self) -> None:
        try:
            self.dead_letters.flush()
        except Exception:  # housekeeping must not end the loop
            log.exception("dead-letter flush failed")

    def _count(self) -> None:
        """Count what is staged and queued for forwarding, for /metrics (on this thread: it owns the connections)."""
        try:
            self.gauges = Gauges(self.staging.transfer_count(), self.staging.chunk_count(),
                                 self.archive.index.forward_counts() if self.forwarder is not None else {})
        except GatewayError as exc:  # an observer: log, count again next time
            log.warning("staging and forward queue not counted", extra={"ERROR": str(exc)})

    def _expire(self) -> None:
        try:
            self.ingest.expire_staging()
        except GatewayError as exc:  # housekeeping: log, try again next sweep
            log.error("staging sweep failed", extra={"ERROR": str(exc)})

    def _handle(self, prefix: str, message: Inbound) -> None:
        try:
            box_id, transfer_hex = topics.parse_chunk_topic(prefix, message.topic)
            if message.payload[8:24].hex() != transfer_hex or len(message.payload) < CHUNK_HEADER_BYTES:
                raise FrameError("chunk's transfer id differs from its topic")
        except FrameError as exc:
            self.topic_rejects += 1
            self.dead_letters.put(_topic_box(prefix, message.topic), message.topic, DeadLetterReason.TOPIC,
                                  str(exc), len(message.payload))
            return
        for out in self.ingest.handle_chunk(box_id, message.payload, message.topic):
            self.link.publish(topics.ack_topic(prefix, out.box_id), out.payload, qos=1)


def _by_label(counters: dict[str, int], prefix: str, name: str, help_text: str, label: str,
              labels: dict[str, str]) -> Iterator[Sample]:
    """One labelled family from the counters named ``<prefix><value>``."""
    for key, value in sorted(counters.items()):
        if key.startswith(prefix):
            yield Sample(name, help_text, value, {**labels, label: key[len(prefix):]}, counter=True)


def _topic_box(prefix: str, topic: str) -> str | None:
    """The box a topic names (``{prefix}/{box}/...``), if it names a well-formed one."""
    head = prefix + "/"
    box = topic[len(head):].split("/", 1)[0] if topic.startswith(head) else ""
    return box if BOX_ID.fullmatch(box) else None
