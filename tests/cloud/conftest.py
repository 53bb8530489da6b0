"""Fixtures the cloud's service tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from tests.peers import _missing


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real mosquitto on loopback (plain MQTT), stopped after the test."""
    try:
        b = MosquittoBroker(tmp_path / "broker")
    except Exception as exc:  # noqa: BLE001 - skip or fail with the reason
        _missing(str(exc))
    b.start()
    yield b
    b.stop()
