"""A real deployment per test (as in tests/system): mosquitto, `mgw cloud run`, `mgw edge run`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.loopback import LoopbackDeployment
from tests.peers import _missing


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., LoopbackDeployment]]:
    made: list[LoopbackDeployment] = []

    def make(**kwargs: object) -> LoopbackDeployment:
        try:
            MosquittoBroker(tmp_path / "probe")
        except Exception as exc:  # noqa: BLE001 - only to skip or fail with the reason
            _missing(str(exc))
        deployment = LoopbackDeployment(tmp_path / f"d{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(deployment)
        deployment.start()
        return deployment

    yield make
    for deployment in made:
        deployment.stop()
