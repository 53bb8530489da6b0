"""What the cloud needs from any MQTT 5 broker: the ``BrokerProfile`` seam.

A profile turns the fleet PKI's files (``pki.emit_files``) and the fleet's policy
(``policy``) into the broker's own configuration and authorisation files, says how a revoked
certificate's open sessions end on that broker, how it spells a shared subscription, and the
limits it enforces. ``registry.PROFILES`` lists them; `mgw cloud broker-config --profile`
selects one. What a clustered broker needs, and how to add a profile: docs/deployment.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.core.framing import MAX_PACKET_BYTES


@dataclass(frozen=True)
class BrokerFiles:
    """The fleet PKI's files for a broker's mutual-TLS listener (written by ``pki.emit_files``)."""

    ca_file: Path  # the fleet CA: every client certificate must chain to it
    cert_file: Path  # the broker's certificate, for the host names boxes use
    key_file: Path  # its key (0600)
    crl_file: Path  # the authority's current CRL (``authority.broker_crl_file`` when set)


@dataclass(frozen=True)
class Listener:
    port: int = 8883
    bind: str = "0.0.0.0"  # noqa: S104 - the listener faces the boxes


@dataclass(frozen=True)
class BrokerLimits:
    """What every broker enforces on every client (docs/deployment.md, "Limits")."""

    max_packet_bytes: int = MAX_PACKET_BYTES  # a larger packet disconnects its sender and no one else
    receive_maximum: int = 64  # QoS 1 publishes in flight per client, announced in CONNACK; the edge obeys it
    max_queued_messages: int = 100_000  # per session: a worker being restarted keeps its share


@dataclass(frozen=True)
class Revocation:
    """How the open sessions of a revoked identity end on a broker."""

    automatic: bool  # the broker reads the CRL file itself and disconnects them
    commands: tuple[str, ...] = ()  # otherwise: what to run after `mgw cloud revoke`, in order


class BrokerProfile(Protocol):
    """One broker product, as the cloud configures it."""

    @property
    def name(self) -> str:
        """As `mgw cloud broker-config --profile` and `mgw cloud revoke --broker` take it."""

    @property
    def limits(self) -> BrokerLimits: ...

    def render(self, files: BrokerFiles, prefix: str, listener: Listener, out_dir: Path) -> list[Path]:
        """Write the broker's configuration and the fleet policy in its terms into ``out_dir``;
        return the files written."""

    def revocation(self, identity: str) -> Revocation:
        """What ends ``identity``'s open sessions once its certificates are in the CRL."""

    def shared_subscription(self, group: str, topic_filter: str) -> str:
        """How a client subscribes to ``topic_filter`` as one member of ``group``."""
