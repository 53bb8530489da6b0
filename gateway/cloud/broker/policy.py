"""The fleet's broker policy, the same on every broker: identities, client ids, grants.

Identity is the client certificate's common name (CN), never what a client says:

- a box: its box id (no '.'); a cloud process: ``cloud.<role>.<worker>``
  (``authority.service_identity``);
- client ids: the identity itself, or the identity, ':' and a role (``CLIENT_ROLES``: a box's
  ``<box>:telemetry`` and ``<box>:selftest`` connections); anything else is refused at CONNECT,
  before the broker looks for a session to hand over (``client_ids``);
- grants (``grants``): everything not granted is denied, subscriptions included.

The mosquitto guard plugin (``adapters/mgw_guard.c``) enforces these rules in C
(``tests/cloud/test_broker_profiles.py`` checks it against ``grants`` on a real mosquitto);
every other broker profile renders them in its own terms (``emqx.render_acl``).
"""

from __future__ import annotations

from dataclasses import dataclass

CLIENT_ROLES = ("telemetry", "selftest")
BOX, INGEST, FLEET = "box", "cloud.ingest", "cloud.fleet"  # who: any box, or identities with that prefix
OWN = "{own}"  # in a grant's topic: the identity itself (a box's own subtree)


@dataclass(frozen=True)
class Grant:
    """One thing an identity may do; the policy is the list of them and deny for the rest."""

    who: str  # BOX, INGEST or FLEET
    action: str  # "publish" or "subscribe"
    topic: str  # a topic filter; OWN stands for the identity
    note: str
    exact: bool = False  # subscribe to this very filter only (no wildcard, no shared subscription)
    shared: bool = False  # subscribe only through a shared subscription, in any group


def grants(prefix: str) -> tuple[Grant, ...]:
    own = f"{prefix}/{OWN}"
    return (
        Grant(BOX, "publish", f"{own}/up/+", "its chunks"),
        Grant(BOX, "publish", f"{own}/state", "birth and death"),
        Grant(BOX, "publish", f"{own}/health", "heartbeats"),
        Grant(BOX, "publish", f"{own}/util", "exam records"),
        Grant(BOX, "subscribe", f"{own}/ack", "its chunk acks, literally", exact=True),
        Grant(BOX, "subscribe", f"{own}/util/ack", "its exam-record acks, literally", exact=True),
        Grant(BOX, "publish", f"{own}/worklist/status", "its worklist steps' performed status"),
        Grant(BOX, "subscribe", f"{own}/worklist", "its sealed worklist, literally", exact=True),
        Grant(BOX, "subscribe", f"{own}/worklist/status/ack", "its worklist status acks, literally", exact=True),
        Grant(BOX, "publish", f"{own}/commission", "its signed commissioning reports"),
        Grant(BOX, "subscribe", f"{own}/commission/ack", "its commissioning-report acks, literally", exact=True),
        Grant(BOX, "subscribe", f"{own}/cmd", "its signed remote commands, literally", exact=True),
        Grant(BOX, "publish", f"{own}/cmd/result", "where its remote commands stand"),
        Grant(BOX, "publish", f"{own}/cmd/blob", "its sealed diagnostic bundles, in parts"),
        Grant(INGEST, "subscribe", f"{prefix}/+/up/+", "the shared chunk subscription", shared=True),
        Grant(INGEST, "publish", f"{prefix}/+/ack", "chunk acks"),
        Grant(FLEET, "subscribe", f"{prefix}/+/state", "births and deaths"),
        Grant(FLEET, "subscribe", f"{prefix}/+/health", "heartbeats"),
        Grant(FLEET, "subscribe", f"{prefix}/+/util", "exam records"),
        Grant(FLEET, "publish", f"{prefix}/+/util/ack", "exam-record acks"),
        Grant(FLEET, "subscribe", f"{prefix}/+/worklist/status", "worklist status reports"),
        Grant(FLEET, "publish", f"{prefix}/+/worklist", "each box's sealed worklist (retained)"),
        Grant(FLEET, "publish", f"{prefix}/+/worklist/status/ack", "worklist status acks"),
        Grant(FLEET, "subscribe", f"{prefix}/+/commission", "signed commissioning reports"),
        Grant(FLEET, "publish", f"{prefix}/+/commission/ack", "commissioning-report acks"),
        Grant(FLEET, "publish", f"{prefix}/+/cmd", "signed remote commands"),
        Grant(FLEET, "subscribe", f"{prefix}/+/cmd/result", "remote command results"),
        Grant(FLEET, "subscribe", f"{prefix}/+/cmd/blob", "remote command blobs (diagnostic bundles)"),
    )


def client_ids(identity: str) -> tuple[str, ...]:
    """Every client id ``identity`` may connect with."""
    return (identity, *(f"{identity}:{role}" for role in CLIENT_ROLES))
