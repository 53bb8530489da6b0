"""The MQTT link against a real mosquitto with tight limits (gateway.adapters.mqtt_link)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.adapters.mqtt_link import MqttLink, PacketTooLargeError, publish_packet_bytes
from gateway.config import MqttSettings
from tests.peers import _missing


@pytest.fixture
def tight_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    try:
        broker = MosquittoBroker(tmp_path / "broker", limits={"max_packet_size": 4096, "max_inflight_messages": 3})
    except Exception as exc:  # noqa: BLE001
        _missing(str(exc))
    broker.start()
    yield broker
    broker.stop()


def test_link_learns_and_enforces_the_broker_limits_when_connected(tight_broker: MosquittoBroker) -> None:
    link = MqttLink(MqttSettings(port=tight_broker.port), "limits-probe", subscriptions=[],
                    on_message=lambda m: None, session_expiry_s=0)
    link.start()
    try:
        assert link.wait_connected(60)
        topic = "mgw/v1/box-1/up/" + "0" * 32
        room = link.max_payload_bytes(topic)

        assert link.server_max_packet_bytes == 4096
        assert room > 0 and publish_packet_bytes(topic, b"x" * room, 1, False) <= 4096
        assert link.publish(topic, b"x" * room)
        with pytest.raises(PacketTooLargeError):
            link.publish(topic, b"x" * (room + 100))
        assert link.connected  # nothing oversized was sent, so the broker kept us
    finally:
        link.stop()


@pytest.mark.parametrize(("payload", "expected"), [(0, 55), (100, 156), (200, 256), (16_000, 16_056)])
def test_publish_packet_size_matches_mqtt5_encoding_when_computed(payload: int, expected: int) -> None:
    assert publish_packet_bytes("mgw/v1/box-1/up/" + "0" * 32, b"x" * payload, 1, False) == expected
