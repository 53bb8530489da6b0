"""Broker profiles (gateway.cloud.broker): one fleet policy, rendered per broker.

The mosquitto profile's rendered configuration runs on a real mosquitto, which then enforces
exactly the grants of ``policy.grants`` (every grant carries a message end to end, and the same
filters and topics are refused to everyone else) and announces ``BrokerLimits`` in CONNACK. The
EMQX profile (EMQX cannot be installed here) renders the same grants, client ids and limits,
checked by reading its files back. `mgw cloud broker-config` and `mgw cloud revoke` select the
profile.
"""

from __future__ import annotations

import os
import queue
import re
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.adapters import ports
from gateway.adapters.mosquitto import render_config
from gateway.cloud.authority.ca import FleetAuthority
from gateway.cloud.broker import emqx, pki, policy, registry
from gateway.cloud.broker.emqx import EmqxProfile
from gateway.cloud.broker.mosquitto import MosquittoProfile
from gateway.cloud.broker.policy import Grant
from gateway.cloud.broker.profile import BrokerFiles, BrokerLimits, Listener
from gateway.core import topics
from gateway.core.errors import ConfigError
from tests.tls_peers import PLUGIN_DIR, PREFIX, Client, box_identity, mosquitto_on, service_identity

GRANTED_QOS1, NOT_AUTHORIZED = 1, 0x87
HEX = "0" * 32
BOX_LEVEL = len(PREFIX.split("/"))  # where the box id sits in a topic
IDENTITY = {policy.BOX: "box-a", policy.INGEST: "cloud.ingest.1", policy.FLEET: "cloud.fleet.1"}
GROUP = "ingest"


@dataclass
class Rendered:
    port: int
    client: Callable[[str, str], Client]  # (identity, client id or "" for the identity) -> a new client
    files: BrokerFiles
    identity: Callable[[str], tuple[Path, Path]]  # certificate and key of an identity


@pytest.fixture
def rendered_mosquitto(tmp_path: Path) -> Iterator[Rendered]:
    """A real mosquitto running the mosquitto profile's rendered configuration, and a client maker."""
    authority = FleetAuthority(tmp_path / "ca", crl_copies=(tmp_path / "broker" / "crl.pem",))
    files = pki.emit_files(authority, tmp_path / "broker", ["127.0.0.1"], tmp_path / "broker" / "crl.pem")
    profile = MosquittoProfile(plugin_dir=PLUGIN_DIR)
    def start(port: int) -> tuple[int, subprocess.Popen[bytes]]:
        """The rendered configuration on a port picked free (rendered again on another if it was taken)."""
        conf, plugin = profile.render(files, PREFIX, Listener(port, "127.0.0.1"), tmp_path / "broker")
        assert plugin.parent == PLUGIN_DIR and conf.name == "mosquitto.conf"
        return port, mosquitto_on(conf, port, "the rendered mosquitto")

    port, proc = ports.on_free_port(start)
    clients: list[Client] = []
    identities: dict[str, tuple[Path, Path]] = {}

    def identity(name: str) -> tuple[Path, Path]:
        if name not in identities:
            identities[name] = (box_identity(authority, name, tmp_path / "boxes") if "." not in name else
                                service_identity(authority, *name.split(".")[1:], tmp_path / "cloud"))
        return identities[name]

    def client(name: str, client_id: str = "") -> Client:
        c = Client(port, authority.ca_cert_path, *identity(name), client_id=client_id or name)
        clients.append(c)
        return c

    try:
        yield Rendered(port, client, files, identity)
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(10)
        authority.close()


def _topic(grant: Grant, identity: str) -> str:
    """A concrete topic the grant covers: ``identity``'s own subtree, box-b's for a box '+', a transfer id last."""
    topic = grant.topic.replace(policy.OWN, identity).replace("/+/", "/box-b/")
    return topic.removesuffix("/+") + f"/{HEX}" if topic.endswith("/+") else topic


def _matches(topic_filter: str, topic: str) -> bool:
    pattern = "^" + re.escape(topic_filter).replace(r"\+", "[^/]+").replace(r"\#", ".*") + "$"
    return re.match(pattern, topic) is not None


def _subscription(grant: Grant, identity: str) -> str:
    topic_filter = grant.topic.replace(policy.OWN, identity)
    return MosquittoProfile().shared_subscription(GROUP, topic_filter) if grant.shared else topic_filter


def test_every_grant_carries_a_message_on_a_real_mosquitto_when_it_runs_the_rendered_config(
        rendered_mosquitto: Rendered) -> None:
    client = rendered_mosquitto.client
    grants = policy.grants(PREFIX)
    used: set[Grant] = set()
    for publish in (g for g in grants if g.action == "publish"):
        publisher = "box-b" if publish.who == policy.BOX else IDENTITY[publish.who]
        topic = _topic(publish, publisher)
        readers = [g for g in grants if g.action == "subscribe"
                   and _matches(g.topic.replace(policy.OWN, topic.split("/")[BOX_LEVEL]), topic)]
        assert len(readers) == 1, f"{topic}: {len(readers)} readers in the policy"
        reading = readers[0]
        reader_identity = topic.split("/")[BOX_LEVEL] if reading.who == policy.BOX else IDENTITY[reading.who]
        reader = client(reader_identity, f"{reader_identity}:selftest" if reading.who == policy.BOX else "")
        sender = client(publisher, f"{publisher}:telemetry" if publish.who == policy.BOX else "")
        assert reader.connect() == "ok" and sender.connect() == "ok"
        assert reader.subscribe(_subscription(reading, reader_identity)) == [GRANTED_QOS1], reading
        sender.publish(topic, publish.note.encode())
        assert reader.messages.get(timeout=10) == (topic, publish.note.encode()), publish
        reader.close()
        sender.close()
        used |= {publish, reading}
    assert used == set(grants)  # every grant was exercised, none left untested


def test_filters_of_one_kind_of_identity_are_refused_to_every_other_when_they_subscribe(
        rendered_mosquitto: Rendered) -> None:
    client = rendered_mosquitto.client
    subscribe = [g for g in policy.grants(PREFIX) if g.action == "subscribe"]
    for who, identity in IDENTITY.items():
        c = client(identity, "")
        assert c.connect() == "ok"
        for grant in subscribe:
            if grant.who != who:
                assert c.subscribe(_subscription(grant, "box-b")) == [NOT_AUTHORIZED], (identity, grant)
            elif grant.who == policy.BOX:  # another box's own filters, and its own ones widened
                assert c.subscribe(_subscription(grant, "box-b")) == [NOT_AUTHORIZED], (identity, grant)
                assert c.subscribe(grant.topic.replace(policy.OWN, "+")) == [NOT_AUTHORIZED], (identity, grant)
            elif grant.shared:  # only through a shared subscription
                assert c.subscribe(grant.topic) == [NOT_AUTHORIZED], (identity, grant)
        for anything in ("#", f"{PREFIX}/#", "$SYS/#"):
            assert c.subscribe(anything) == [NOT_AUTHORIZED], (identity, anything)
        c.close()


def test_box_publishes_into_another_box_subtree_are_dropped_when_the_policy_applies(
        rendered_mosquitto: Rendered) -> None:
    client = rendered_mosquitto.client
    for grant in (g for g in policy.grants(PREFIX) if g.action == "publish" and g.who == policy.BOX):
        reader_grant = next(g for g in policy.grants(PREFIX) if g.action == "subscribe" and g.who != policy.BOX
                            and _matches(g.topic, _topic(grant, "box-b")))
        reader = client(IDENTITY[reader_grant.who], "")
        forger = client("box-a", "")
        assert reader.connect() == "ok" and forger.connect() == "ok"
        assert reader.subscribe(_subscription(reader_grant, "")) == [GRANTED_QOS1]
        forger.publish(_topic(grant, "box-b"), b"forged")  # returns once the broker has handled it
        forger.publish(_topic(grant, "box-a"), b"genuine")
        assert reader.messages.get(timeout=10) == (_topic(grant, "box-a"), b"genuine"), grant
        reader.close()
        forger.close()


def test_client_ids_of_the_policy_connect_and_others_are_refused_when_certificates_are_the_identity(
        rendered_mosquitto: Rendered) -> None:
    client = rendered_mosquitto.client
    for client_id in policy.client_ids("box-a"):
        c = client("box-a", client_id)
        assert c.connect() == "ok", client_id
        c.close()
    for stolen in ("box-b", "cloud.ingest.1", "box-b:telemetry", "box-a-x"):
        assert client("box-a", stolen).connect() == f"refused:{NOT_AUTHORIZED}", stolen


def test_connack_announces_the_profile_limits_when_a_client_connects_to_the_rendered_mosquitto(
        rendered_mosquitto: Rendered) -> None:
    cert, key = rendered_mosquitto.identity("box-c")
    announced: queue.Queue[dict[str, int]] = queue.Queue()
    mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="box-c", protocol=paho.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(rendered_mosquitto.files.ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    mqtt.tls_set_context(ctx)
    mqtt.on_connect = lambda c, u, f, rc, props: announced.put({
        "MaximumPacketSize": getattr(props, "MaximumPacketSize", 0),
        "ReceiveMaximum": getattr(props, "ReceiveMaximum", 0)})
    mqtt.connect("127.0.0.1", rendered_mosquitto.port)
    mqtt.loop_start()
    try:
        got = announced.get(timeout=10)
    finally:
        mqtt.disconnect()
        mqtt.loop_stop()
    limits = MosquittoProfile().limits
    assert got == {"MaximumPacketSize": limits.max_packet_bytes, "ReceiveMaximum": limits.receive_maximum}


_ALLOW = re.compile(r'^\{allow, \{username, \{re, "(?P<who>[^"]+)"\}\}, (?P<action>publish|subscribe), '
                    r'\[(?P<topic>"[^"]+"|\{eq, "[^"]+"\})\]\}\.$')


def test_emqx_profile_renders_the_policy_grants_when_its_acl_is_read_back(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "crl.pem")
    conf, acl = EmqxProfile().render(files, PREFIX, Listener(8883, "0.0.0.0"), tmp_path)
    rules = [m for line in acl.read_text().splitlines() if (m := _ALLOW.match(line))]
    who = {'^[a-z0-9][a-z0-9-]*$': policy.BOX, r'^cloud\\.ingest\\.[a-z0-9][a-z0-9-]*$': policy.INGEST,
           r'^cloud\\.fleet\\.[a-z0-9][a-z0-9-]*$': policy.FLEET}
    read_back = set()
    for m in rules:
        exact, topic = m["topic"].startswith("{eq"), m["topic"].split('"')[1]
        shared = topic.startswith("$share/+/")
        read_back.add(Grant(who[m["who"]], m["action"], topic.removeprefix("$share/+/").replace("${username}",
                            policy.OWN), "", exact=exact, shared=shared))
    assert read_back == {Grant(g.who, g.action, g.topic, "", g.exact, g.shared) for g in policy.grants(PREFIX)}
    assert acl.read_text().rstrip().endswith("{deny, all}.")
    text = conf.read_text()
    assert f'path = "{acl}"' in text and f'cacertfile = "{files.ca_file}"' in text
    roles = re.findall(r"concat\(\[cert_common_name, ':(\w+)'\]\)", text)
    assert tuple(roles) == policy.CLIENT_ROLES


def test_both_profiles_render_the_same_limits_and_the_loopback_broker_runs_them_when_rendered(tmp_path: Path) -> None:
    limits = BrokerLimits()
    mosquitto, emqx_profile = MosquittoProfile(), EmqxProfile()
    assert mosquitto.limits == emqx_profile.limits == limits
    files = BrokerFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "crl.pem")
    conf = emqx.render_conf(files, tmp_path / "acl.conf", Listener(), limits)
    assert {f"max_packet_size = {limits.max_packet_bytes}", f"max_inflight = {limits.receive_maximum}",
            f"max_mqueue_len = {limits.max_queued_messages}"} <= {line.strip() for line in conf.splitlines()}
    settings = mosquitto.settings()
    assert settings == {"max_packet_size": limits.max_packet_bytes, "max_inflight_messages": limits.receive_maximum,
                        "max_queued_messages": limits.max_queued_messages}
    # MosquittoBroker (demo, loopback, tests) renders without overrides: the same limits
    assert render_config(1883, tmp_path) == render_config(1883, tmp_path, limits=settings)


def test_profiles_share_the_mqtt5_subscription_syntax_and_differ_in_revocation_when_looked_up() -> None:
    assert set(registry.PROFILES) == {"mosquitto", "emqx"}
    for name in registry.PROFILES:
        profile = registry.by_name(name)
        assert profile.name == name
        assert profile.shared_subscription(GROUP, f"{PREFIX}/+/up/+") == topics.ingest_subscription(PREFIX, GROUP)
    assert registry.by_name("mosquitto").revocation("box-a").automatic  # the guard plugin reads the CRL
    kicked = registry.by_name("emqx").revocation("box-a")
    assert not kicked.automatic and "/api/v5/banned" in kicked.commands[0]
    assert [c.rsplit("/", 1)[1] for c in kicked.commands[1:]] == list(policy.client_ids("box-a"))
    with pytest.raises(ConfigError, match="unknown broker profile 'vernemq'"):
        registry.by_name("vernemq")


def _mgw(cloud_toml: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run([sys.executable, "-m", "gateway", "cloud", *args, "--config", str(cloud_toml)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_broker_config_writes_the_selected_profile_and_revoke_prints_its_session_end_when_the_fleet_runs_emqx(
        tmp_path: Path) -> None:
    cloud_toml = tmp_path / "cloud.toml"
    cloud_toml.write_text(f'[cloud]\nstate_dir = "{tmp_path / "state"}"\n')
    out = tmp_path / "emqx-broker"
    made = _mgw(cloud_toml, "broker-config", "--profile", "emqx", "--out", str(out), "--port", "8884")
    assert made.returncode == 0, made.stderr
    assert {"emqx.conf", "acl.conf", "ca.pem", "server.pem", "server.key", "crl.pem"} <= {p.name for p in out.iterdir()}
    assert not (out / "mosquitto.conf").exists() and 'bind = "0.0.0.0:8884"' in (out / "emqx.conf").read_text()
    assert "wrote the emqx configuration" in made.stdout
    authority = FleetAuthority(tmp_path / "state" / "pki")
    box_identity(authority, "box-r", tmp_path / "box")
    authority.close()
    revoked = _mgw(cloud_toml, "revoke", "box-r", "--broker", "emqx")
    assert revoked.returncode == 0, revoked.stderr
    lines = revoked.stdout.splitlines()
    assert "revoked 1 certificate(s) of box-r" in revoked.stdout and "emqx does not read this CRL" in revoked.stdout
    assert [line.rsplit("/", 1)[1] for line in lines if "-X DELETE" in line] == list(policy.client_ids("box-r"))
    unknown = _mgw(cloud_toml, "broker-config", "--profile", "vernemq", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "unknown broker profile" in unknown.stderr
