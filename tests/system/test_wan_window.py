"""Chunk ranges lost and duplicated on the way, through a real mosquitto, between a real edge and
a real cloud: the edge resends exactly what the cloud's range acks do not list, and the archive
holds every instance once, byte-identical.

The fault is an MQTT relay (``LossyRelay``): the edge publishes under another topic prefix, which
only the relay reads; the relay republishes each chunk under the cloud's prefix, dropping the first
copy of some seqs and repeating others, and carries the cloud's acks back. Frames and acks do not
cover the prefix (their AAD and signature bind the box id and the header), so the relay changes
nothing the protocol checks: it is a lossy network at the granularity of MQTT messages.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.mqtt_link import Inbound, MqttLink
from gateway.config import MqttSettings
from gateway.core import topics
from gateway.core.framing import parse_chunk
from gateway.loopback import BOX_ID, LoopbackDeployment
from tests.peers import wait_for
from tests.system.reconcile import acknowledged_count, reconcile
from tests.system.test_end_to_end import _large_study, _send

Deploy = Callable[..., LoopbackDeployment]
CLOUD_PREFIX, EDGE_PREFIX = "mgw/v1", "mgw/relay"
LOST_SEQS = {1, 2, 3}  # a range of each transfer: its first copy never reaches the cloud
DOUBLED_SEQS = {4, 5}  # another range reaches the cloud twice


class LossyRelay:
    """Carries chunks edge -> cloud and acks cloud -> edge between the two prefixes, with faults."""

    def __init__(self, port: int) -> None:
        self.seen: Counter[tuple[str, int]] = Counter()  # (transfer, seq) published by the edge
        self.dropped: set[tuple[str, int]] = set()
        self.doubled = 0
        self._out: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._up = threading.Event()
        self._link = MqttLink(
            MqttSettings(host="127.0.0.1", port=port), "relay",
            subscriptions=[(topics.chunk_topic(EDGE_PREFIX, BOX_ID, "+"), 1),
                           (topics.ack_topic(CLOUD_PREFIX, BOX_ID), 1)],
            on_message=self._on_message, on_state=lambda up: self._up.set() if up else self._up.clear())
        self._thread = threading.Thread(target=self._forward, name="relay", daemon=True)

    def start(self) -> None:
        self._link.start()
        self._thread.start()
        wait_for(self._up.is_set, 30, "the relay connected")

    def stop(self) -> None:
        self._out.put(None)
        self._thread.join(10)
        self._link.stop()

    def _on_message(self, message: Inbound) -> None:  # paho's thread: decide, queue, return
        if message.topic.startswith(CLOUD_PREFIX + "/"):  # an ack: back to the edge, as it is
            self._out.put((topics.ack_topic(EDGE_PREFIX, BOX_ID), message.payload))
            return
        transfer = message.topic.rsplit("/", 1)[-1]
        seq = parse_chunk(message.payload).seq
        self.seen[(transfer, seq)] += 1
        if seq in LOST_SEQS and (transfer, seq) not in self.dropped:
            self.dropped.add((transfer, seq))
            return
        target = topics.chunk_topic(CLOUD_PREFIX, BOX_ID, transfer)
        self._out.put((target, message.payload))
        if seq in DOUBLED_SEQS:
            self._out.put((target, message.payload))
            self.doubled += 1

    def _forward(self) -> None:
        while (next_message := self._out.get()) is not None:
            topic, payload = next_message
            while not self._link.publish(topic, payload, qos=1):  # False: not queued; the link is back soon
                self._up.wait(1.0)


def test_lost_and_duplicated_chunk_ranges_are_resent_and_archived_byte_exact_when_a_relay_drops_them(
        deploy: Deploy) -> None:
    d = deploy(edge_overrides={"mqtt": {"topic_prefix": EDGE_PREFIX},
                               "uplink": {"max_frame_bytes": 4096, "ack_timeout_s": 8.0}})
    relay = LossyRelay(d.broker.port)
    relay.start()
    try:
        files: list[Path] = _large_study()[1:]  # three images, each many 4 KiB chunks
        _send(d, files)
        try:
            wait_for(lambda: acknowledged_count(d) >= len(files), 120, "every instance acknowledged")
        except Exception:
            print(d.log_tail())
            raise
    finally:
        relay.stop()
    outcome = reconcile(d, files)
    assert outcome.clean, outcome
    assert len({t for t, _ in relay.dropped}) == len(files)
    with_doubles = {key for key in relay.seen if key[1] in DOUBLED_SEQS}  # an image may pack into fewer chunks
    assert with_doubles and relay.doubled >= len(with_doubles)
    # every dropped chunk was published again by the edge, and nothing else needed to be:
    # the cloud's range acks named exactly the gap
    assert all(relay.seen[key] >= 2 for key in relay.dropped)
    resent_beyond_gap = [key for key, n in relay.seen.items() if n > 1 and key not in relay.dropped and key[1] != 0]
    assert resent_beyond_gap == []
