"""The EMQX rendering of the broker policy (EMQX itself cannot be installed here: the files are checked)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cloud.broker import emqx, policy
from gateway.cloud.broker.profile import BrokerFiles, BrokerLimits, Listener
from gateway.core.framing import MAX_PACKET_BYTES

ROOT = Path(__file__).resolve().parents[2]
RULE = re.compile(r'^\{allow, \{username, \{re, "(?P<who>[^"]+)"\}\}, (?P<action>publish|subscribe), '
                  r'\[(?P<topic>"[^"]+"|\{eq, "[^"]+"\})\]\}\.$')


def _rules(text: str) -> list[re.Match[str]]:
    lines = [line for line in text.splitlines() if line and not line.startswith("%%")]
    assert lines[-1] == "{deny, all}."
    matches = [RULE.match(line) for line in lines[:-1]]
    assert all(matches), [line for line, m in zip(lines, matches, strict=False) if not m]
    return [m for m in matches if m]


def test_box_rules_stay_in_its_own_subtree_when_the_acl_is_rendered() -> None:
    rules = _rules(emqx.render_acl("mgw/v1"))
    box = [m for m in rules if m["who"] == "^[a-z0-9][a-z0-9-]*$"]
    assert len(box) == len([g for g in policy.grants("mgw/v1") if g.who == policy.BOX]) >= 6
    assert all("mgw/v1/${username}/" in m["topic"] for m in box)
    assert all(m["topic"].startswith("{eq, ") for m in box if m["action"] == "subscribe")
    assert not any("$share" in m["topic"] or "#" in m["topic"] for m in box)


def test_only_ingest_identities_may_join_the_share_group_when_the_acl_is_rendered() -> None:
    rules = _rules(emqx.render_acl("mgw/v1"))
    shared = [m for m in rules if "$share" in m["topic"]]
    assert [(m["who"], m["action"]) for m in shared] == [(r"^cloud\\.ingest\\.[a-z0-9][a-z0-9-]*$", "subscribe")]


def test_shipped_emqx_acl_is_the_generated_one_when_compared() -> None:
    assert (ROOT / "deploy/broker/emqx-acl.conf").read_text() == emqx.render_acl("mgw/v1")


def test_emqx_conf_binds_client_ids_and_limits_packets_when_rendered(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "crl.pem")
    conf = emqx.render_conf(files, tmp_path / "acl.conf", Listener(8883), BrokerLimits())
    assert "peer_cert_as_username = cn" in conf and f"max_packet_size = {MAX_PACKET_BYTES}" in conf
    assert "max_inflight = 64" in conf and "max_mqueue_len = 100000" in conf and "shared_subscription = true" in conf
    assert "fail_if_no_peer_cert = true" in conf and "listeners.tcp.default.enable = false" in conf
    checks = re.findall(r'\{ is_match = "(.+)", result = (allow|deny) \}', conf)
    assert checks[0] == ("str_eq(clientid, cert_common_name)", "allow")
    assert checks[-1] == ("true", "deny")
    assert {c for c, r in checks[1:-1] if r == "allow"} == {
        f"str_eq(clientid, concat([cert_common_name, ':{role}']))" for role in emqx.CLIENT_ROLES}
    assert "no_match = deny" in conf and "deny_action = disconnect" in conf
    shipped = (ROOT / "deploy/broker/emqx.conf").read_text()
    assert all(f'is_match = "{c}"' in shipped for c, _ in checks)


def test_revocation_bans_the_identity_and_kicks_each_client_id_when_rendered() -> None:
    calls = emqx.revoke_commands("https://emqx:18083", "box-a")
    assert '"as": "username", "who": "box-a"' in calls[0] and "/api/v5/banned" in calls[0]
    assert [c.rsplit("/", 1)[1] for c in calls[1:]] == ["box-a", "box-a:telemetry", "box-a:selftest"]
    assert all("-X DELETE" in c for c in calls[1:])
