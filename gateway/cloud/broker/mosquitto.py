"""The mosquitto 2.0 broker profile: one node, authorised by the ``mgw_guard`` plugin.

mosquitto is what `mgw demo`, the loopback deployment and the tests run (``adapters/mosquitto.py``
runs the process and writes its configuration format); this profile is how the cloud renders
it for production (`mgw cloud broker-config --profile mosquitto`):

- mutual TLS with the fleet PKI's files, ``require_certificate``, no anonymous clients;
- the fleet policy (``policy``) enforced by the guard plugin (``adapters/mgw_guard.c``,
  compiled here): client id bound to the certificate's CN, grants, deny the rest;
- revocation without anyone acting: the plugin re-reads the CRL file within a second of a
  change and disconnects the open connections of every certificate it lists;
- ``BrokerLimits`` as ``max_packet_size``, ``max_inflight_messages`` (announced as Receive
  Maximum) and ``max_queued_messages``.

mosquitto is a single node: no cluster, so no session shared between nodes (docs/deployment.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.adapters import blobs
from gateway.adapters.mosquitto import BrokerTls, build_guard, render_config
from gateway.cloud.broker.profile import BrokerFiles, BrokerLimits, Listener, Revocation
from gateway.core import topics


@dataclass(frozen=True)
class MosquittoProfile:
    name: str = "mosquitto"
    limits: BrokerLimits = field(default_factory=BrokerLimits)
    plugin_dir: Path | None = None  # where the guard plugin is compiled (default: the output directory)
    user: str | None = None  # whom mosquitto becomes when started as root (default: who renders it, if root)

    def tls(self, files: BrokerFiles, prefix: str, plugin_dir: Path) -> BrokerTls:
        """The listener's TLS and guard plugin (compiled into ``plugin_dir`` once per source version)."""
        return BrokerTls(ca_file=files.ca_file, cert_file=files.cert_file, key_file=files.key_file,
                         guard_plugin=build_guard(plugin_dir), prefix=prefix, crl_file=files.crl_file)

    def settings(self) -> dict[str, int]:
        """``BrokerLimits`` in mosquitto.conf's words."""
        return {"max_packet_size": self.limits.max_packet_bytes, "max_inflight_messages": self.limits.receive_maximum,
                "max_queued_messages": self.limits.max_queued_messages}

    def render(self, files: BrokerFiles, prefix: str, listener: Listener, out_dir: Path) -> list[Path]:
        """``mosquitto.conf`` (its persistence and log in ``out_dir/data``) and the guard plugin."""
        tls = self.tls(files, prefix, self.plugin_dir or out_dir)
        data = out_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = out_dir / "mosquitto.conf"
        text = render_config(listener.port, data, listener.bind, True, tls, self.settings(), self.user)
        blobs.write_atomic(conf, text.encode(), mode=0o644)
        return [conf, tls.guard_plugin]

    def revocation(self, identity: str) -> Revocation:
        return Revocation(automatic=True)

    def shared_subscription(self, group: str, topic_filter: str) -> str:
        return topics.shared_subscription(group, topic_filter)
