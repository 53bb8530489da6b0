"""The box's command record, remote configuration and diagnostic bundle, on real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.adapters.command_store import AlreadyAccepted, CommandStore
from gateway.config import load_edge
from gateway.core import command_wire
from gateway.core.errors import ConfigError, EnvelopeTamperedError
from gateway.edge import diagnostics, remote_config

BASE = "[box]\nid = \"ct-01\"\ncloud_public_key = \"" + "A" * 43 + "=\"\n"


def test_a_seq_is_accepted_once_and_results_survive_a_reopen_when_commands_are_recorded(tmp_path: Path) -> None:
    store = CommandStore(tmp_path / "commands.db")
    store.accept("a" * 32, 5, "echo", 1.0)
    with pytest.raises(AlreadyAccepted):
        store.accept("b" * 32, 5, "echo", 2.0)  # the same seq: a replay that raced the check
    with pytest.raises(AlreadyAccepted):
        store.accept("c" * 32, 4, "echo", 2.0)
    assert [c.id for c in store.unfinished()] == ["a" * 32]
    store.record("a" * 32, "succeeded", b'{"state":"succeeded"}', 3.0)
    assert [c.id for c in store.unpublished()] == ["a" * 32]
    store.mark_published("a" * 32, b'{"state":"succeeded"}')
    store.close()
    again = CommandStore(tmp_path / "commands.db")
    stored = again.get("a" * 32)
    assert stored is not None and (stored.seq, stored.state) == (5, "succeeded")
    assert stored.result == b'{"state":"succeeded"}'
    assert again.last_seq() == 5 and again.unfinished() == [] and again.unpublished() == []
    again.close()


def _files(tmp_path: Path) -> list[Path]:
    site = tmp_path / "gateway.toml"
    site.write_text(BASE + f"state_dir = \"{tmp_path}\"\n")
    return [site]


def test_remote_document_is_refused_when_it_names_keys_that_are_not_remote_managed(tmp_path: Path) -> None:
    files = _files(tmp_path)
    with pytest.raises(ConfigError, match="not remote-managed"):
        remote_config.validate("[box]\nid = \"other\"\n", files, tmp_path)
    with pytest.raises(ConfigError, match="'mqtt.cert_file' is not remote-managed"):
        remote_config.validate("[mqtt]\ncert_file = \"/tmp/x\"\n", files, tmp_path)
    with pytest.raises(ConfigError, match="not valid TOML"):
        remote_config.validate("[health\n", files, tmp_path)
    with pytest.raises(ConfigError):
        remote_config.validate("[spool]\nretention_hours = \"many\"\n", files, tmp_path)  # the edge's own checks
    assert remote_config.validate("[health]\nheartbeat_s = 7.0\n", files, tmp_path).health.heartbeat_s == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml"], "the candidate file is removed"


def test_pending_version_commits_or_rolls_back_to_the_previous_document_when_its_start_decides(tmp_path: Path) -> None:
    files = _files(tmp_path)
    remote_config.stage(tmp_path, 3, "[health]\nheartbeat_s = 7.0\n", "c" * 32)
    assert remote_config.starting(tmp_path).attempts == 1
    assert remote_config.commit(tmp_path).version == 3
    assert load_edge([*files, remote_config.remote_file(tmp_path)]).health.heartbeat_s == 7.0

    remote_config.stage(tmp_path, 4, "[health]\nheartbeat_s = 9.0\n", "d" * 32)
    remote_config.starting(tmp_path)
    state = remote_config.starting(tmp_path)  # the first start with it never reached its check: a crash
    assert (state.version, state.pending, state.last_command, state.last_rolled_back) == (3, "", "d" * 32, True)
    assert remote_config.remote_file(tmp_path).read_text() == "[health]\nheartbeat_s = 7.0\n"
    assert remote_config.version(tmp_path) == 3


def test_bundle_holds_no_secret_and_no_uid_when_the_log_and_configuration_carry_them(tmp_path: Path) -> None:
    settings = load_edge(_files(tmp_path))
    doc = diagnostics.config_document(settings)
    assert doc["box"]["id"] == "ct-01"
    secrets = {"enrolment": {"token": "s3cr3t-token"}, "mqtt": {"key_file": "/x", "password": "pw"}}
    scrubbed = diagnostics._without_secrets(secrets)
    assert scrubbed["enrolment"]["token"] == diagnostics.REMOVED and scrubbed["mqtt"]["password"] == diagnostics.REMOVED
    text = diagnostics.scrub("study 1.2.840.113619.2.55.3 at 10.0.0.5 v1.2.3")
    assert "1.2.840.113619" not in text and "10.0.0.5" in text and "v1.2.3" in text


def test_bundle_parts_open_to_the_document_only_with_the_clouds_key_when_sealed(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    plain = json.dumps({"logs": ["x" * 300_000]}).encode()
    parts, sealed, digest = diagnostics.seal_parts(plain, public, "ct-01", "e" * 32)
    assert len(parts) == -(-len(sealed) // command_wire.BLOB_PART_BYTES) >= 3
    assert diagnostics.open_parts(list(reversed(parts)), private.private_bytes_raw(), "ct-01", "e" * 32) \
        == json.loads(plain)
    with pytest.raises(EnvelopeTamperedError):
        diagnostics.open_parts(parts, os.urandom(32), "ct-01", "e" * 32)
