"""The broker profiles the cloud knows, by name (`mgw cloud broker-config --profile NAME`).

Adding a broker is a module with its profile (``profile.BrokerProfile``) and one line here
(docs/development.md, "How to add a broker").
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.cloud.broker.emqx import EmqxProfile
from gateway.cloud.broker.mosquitto import MosquittoProfile
from gateway.cloud.broker.profile import BrokerProfile
from gateway.core.errors import ConfigError

PROFILES: dict[str, Callable[[], BrokerProfile]] = {
    "mosquitto": MosquittoProfile,
    "emqx": EmqxProfile,
}


def by_name(name: str) -> BrokerProfile:
    try:
        return PROFILES[name]()
    except KeyError:
        raise ConfigError(f"unknown broker profile {name!r}; known: {', '.join(PROFILES)}") from None
