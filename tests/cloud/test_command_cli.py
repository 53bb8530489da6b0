"""`mgw cloud command ...`, run as a subprocess, on a real fleet store (SQLite file) and the fleet's key files:
commands queued with their seq and audited, refusals with their reason, config versions and their diff,
a bundle written 0600 and audited, a rollout started and shown; text in the language asked for (one at a time),
``--json`` the same in both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters import keystore
from gateway.adapters.sqlite_fleet_store import SqliteFleetStore
from gateway.cloud.authority import ack_keys
from gateway.cloud.commands.queue import CommandQueue
from gateway.core import command_wire
from tests.backends import Backend


@pytest.fixture
def toml(tmp_path: Path) -> str:
    path = tmp_path / "cloud.toml"
    path.write_text(f'[cloud]\nstate_dir = "{tmp_path / "state"}"\n[fleet]\ntime_zone = "Asia/Shanghai"\n')
    return str(path)


def run(*args: str, lang: str = "en") -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "gateway", "--lang", lang, "cloud", "command", *args],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def _chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_commands_are_queued_listed_and_audited_when_issued_from_the_cli(toml: str, tmp_path: Path) -> None:
    code, out, err = run("issue", "--box", "ct-01", "--kind", "echo", "--config", toml)
    assert code == 0 and "seq 1" in out and "queued for ct-01" in out and not _chinese(out), out
    assert "has not seen box ct-01 yet" in err  # queued anyway, with a note: a typo is easy to spot
    doc_file = tmp_path / "box.toml"
    doc_file.write_text('[dicom]\nae_title = "CT1"\n')
    code, _, _ = run("issue", "--box", "ct-01", "--kind", "config", "--document-file", str(doc_file), "--config", toml)
    assert code == 0
    doc_file.write_text('[dicom]\nae_title = "CT2"\n')
    code, out, _ = run("issue", "--box", "ct-01", "--kind", "config", "--document-file", str(doc_file), "--json",
                       "--config", toml)
    assert code == 0 and json.loads(out)["seq"] == 3
    code, out, _ = run("list", "--box", "ct-01", "--json", "--config", toml)
    listed = json.loads(out)["commands"]
    assert [(c["seq"], c["kind"], c["state"]) for c in listed] == [(3, "config", "pending"), (2, "config", "pending"),
                                                                  (1, "echo", "pending")]
    assert listed[0]["args"] == {"version": 2}
    code, out, _ = run("config-diff", "--box", "ct-01", "--from", "1", "--to", "2", "--config", toml)
    assert code == 0 and '-ae_title = "CT1"\n+ae_title = "CT2"' in out
    code, out, _ = run("show", listed[2]["id"], "--config", toml)
    assert code == 0 and "pending" in out and "+08:00" in out and not _chinese(out), out  # the fleet's time zone
    code, out, _ = run("show", listed[2]["id"], "--config", toml, lang="zh")
    assert code == 0 and "状态         等待中" in out and "下发时间" in out and "pending" not in out, out
    code, out, _ = run("list", "--box", "ct-01", "--config", toml, lang="zh")
    assert code == 0 and out.startswith("ct-01：配置版本 0\n") and out.count("等待中") == 3, out
    as_json = [json.loads(run("list", "--box", "ct-01", "--json", "--config", toml, lang=lang)[1])
               for lang in ("zh", "en")]
    for doc in as_json:
        doc.pop("now")  # the clock, between the two runs
    assert as_json[0] == as_json[1]  # --json never changes with the language
    store = SqliteFleetStore(tmp_path / "state" / "fleet.db")
    try:
        issued = [r for r in store.auth.audit(limit=100) if r.action == "command.issue"]
    finally:
        store.close()
    assert len(issued) == 3 and all(r.actor.startswith("cli:") and r.target == "ct-01" for r in issued)


@pytest.mark.parametrize("args,reason", [
    (("issue", "--box", "CT_01", "--kind", "echo"), "not a box id"),
    (("issue", "--box", "ct-01", "--kind", "reboot"), "--kind must be one of"),
    (("issue", "--box", "ct-01", "--kind", "bundle", "--arg", "log_lines=0"), "'log_lines' must be"),
    (("issue", "--box", "ct-01", "--kind", "restart", "--arg", "service=sshd"), "'service' must be"),
    (("issue", "--box", "ct-01", "--kind", "echo", "--arg", "oops"), "key=value"),
    (("show", "nothex"), "32 hexadecimal"),
    (("bundle-download", "0" * 32, "--out", "x"), "no bundle"),
    (("rollout", "--kind", "echo", "--box", "ct-01"), "config or an update"),
    (("rollout", "--kind", "config", "--site", "s", "--box", "ct-01"), "--site or --box"),
])
def test_cli_refuses_with_the_reason_when_an_argument_is_wrong(toml: str, args: tuple[str, ...], reason: str) -> None:
    code, _, err = run(*args, "--config", toml)
    assert code == 2 and err.startswith("mgw: error: ") and reason in err and not _chinese(err), err


@pytest.mark.parametrize("args,reason", [
    (("issue", "--box", "CT_01", "--kind", "echo"), "不是有效的设备编号"),
    (("issue", "--box", "ct-01", "--kind", "bundle", "--arg", "log_lines=0"), "命令被拒绝：'log_lines' must be"),
    (("show", "nothex"), "命令编号应为 32 位十六进制数字"),
    (("rollout", "--kind", "config", "--site", "s", "--box", "ct-01"), "请指定 --site 或 --box"),
])
def test_cli_refuses_in_chinese_when_zh_is_chosen(toml: str, args: tuple[str, ...], reason: str) -> None:
    code, _, err = run(*args, "--config", toml, lang="zh")
    assert code == 2 and err.startswith("mgw：错误：") and reason in err, err


def test_bundle_is_written_0600_and_audited_when_it_arrived(toml: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SqliteFleetStore(state / "fleet.db")
    try:
        envelope = keystore.load_or_create_x25519(state / "keys" / "envelope.key")
        queue = CommandQueue(store.commands, ack_keys.load_signer(state / "keys" / "command.key"), envelope, "mgw/v1")
        row = queue.issue("ct-01", command_wire.Kind.BUNDLE, {}, "ada")
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        public = X25519PrivateKey.from_private_bytes(envelope).public_key().public_bytes_raw()
        sealed = command_wire.seal_blob(public, "ct-01", row.id, b"diagnostics", data_key=os.urandom(32),
                                        eph_private=os.urandom(32), nonce=os.urandom(12))
        store.commands.add_blob(row.id, "ct-01", sealed, "0" * 64, 1.0)
    finally:
        store.close()
    out_file = tmp_path / "bundle.bin"
    code, out, _ = run("bundle-download", row.id, "--out", str(out_file), "--config", toml)
    assert code == 0 and out_file.read_bytes() == b"diagnostics" and out_file.stat().st_mode & 0o777 == 0o600
    assert "bundle of ct-01 written to" in out and not _chinese(out), out
    code, out, _ = run("bundle-download", row.id, "--out", str(out_file), "--config", toml, lang="zh")
    assert code == 0 and "ct-01 的诊断包已写入" in out and "（11 字节）" in out, out
    code, out, _ = run("rollout", "--kind", "update", "--box", "ct-01", "--box", "ct-02", "--arg",
                       "url=https://u.example/b", "--arg", f"sha256={'c' * 64}", "--arg", "version=2", "--config", toml)
    assert code == 0 and "canary 1" in out
    code, out, _ = run("rollout-show", "1", "--json", "--config", toml)
    shown = json.loads(out)[0]
    assert shown["state"] == "running" and [b["box_id"] for b in shown["boxes"]] == ["ct-01", "ct-02"]
    code, out, _ = run("rollout-show", "1", "--config", toml, lang="zh")
    assert code == 0 and "执行中" in out and "先行" in out and "第 1 批" in out and "已下发/总数" in out, out
    code, out, _ = run("rollout-show", "1", "--config", toml)
    assert code == 0 and "running" in out and "canary" in out and "wave 1" in out and not _chinese(out), out


def test_box_result_text_is_shown_on_one_line_when_it_holds_control_characters(toml: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = SqliteFleetStore(state / "fleet.db")
    try:
        queue = CommandQueue(store.commands, ack_keys.load_signer(state / "keys" / "command.key"),
                             keystore.load_or_create_x25519(state / "keys" / "envelope.key"), "mgw/v1")
        row = queue.issue("ct-01", command_wire.Kind.ECHO, {}, "ada")
        # what the box's result schema lets through: a tab and a newline in a detail value
        assert store.commands.record_result(row.id, "ct-01", row.seq, "failed", "", "",
                                            json.dumps({"note": "one\nFAKE ROW\tx"}), 2.0) is not None
    finally:
        store.close()
    code, out, _ = run("list", "--box", "ct-01", "--config", toml, lang="zh")
    assert code == 0 and "失败" in out and "note=one\\x0aFAKE ROW\\x09x" in out, out
    assert len(out.splitlines()) == 3, out  # the version line, the header, the command's one row


def test_command_key_rotates_stage_then_promote_and_the_ack_key_stays_when_run_from_the_cli(
        toml: str, tmp_path: Path) -> None:
    """`mgw cloud command-key`: the next key is staged beside the current one (what enrolment and
    renewal hand out, so boxes trust it first), then promoted; the ack key is a different key and
    is left alone."""
    def key(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "gateway", "cloud", "command-key", *args, "--json",
                               "--config", toml], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    created = key("create")["keys"]
    assert [k["role"] for k in created] == ["current"]
    command_file = tmp_path / "state" / "keys" / "command.key"
    assert command_file.stat().st_mode & 0o777 == 0o600
    staged = key("stage")["keys"]
    assert [k["role"] for k in staged] == ["current", "next"] and staged[0]["key_id"] == created[0]["key_id"]
    assert ack_keys.keyring_of(command_file).key_ids == tuple(bytes.fromhex(k["key_id"]) for k in staged)
    promoted = key("promote")["keys"]
    assert [(k["role"], k["key_id"]) for k in promoted] == [("current", staged[1]["key_id"])]
    assert not (tmp_path / "state" / "keys" / "ack.key").exists()  # the ack key is not this key


def test_resend_by_accession_queues_the_box_studies_or_is_refused_when_issued_from_the_cli(
        tmp_path: Path, backend: Backend) -> None:
    """Both index backends: real images archived by a real ingest worker with the fleet's envelope key."""
    from gateway.cloud import backends
    from gateway.cloud.ingest.pipeline import Ingest
    from gateway.config import IngestSettings, load_cloud
    from gateway.core import accession, envelope
    from gateway.paths import Paths
    from tests.cloud.test_ingest import ACCESSION, ACK_SIGNER, KeyPair, archive_real

    path = tmp_path / "cloud.toml"
    index = f'[index]\nbackend = "postgres"\ndsn = "{backend.dsn}"\n' if backend.cluster is not None else ""
    path.write_text(f'[cloud]\nstate_dir = "{tmp_path / "state"}"\n{index}')
    settings = load_cloud([path])
    paths = Paths.from_env(settings.cloud.state_dir, base=tmp_path)
    private = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
    archive = backends.open_archive(settings, paths)
    ingest = Ingest(IngestSettings(), private, ACK_SIGNER, archive, backend.staging(tmp_path))
    try:
        keys = KeyPair(private, envelope.public_key_of(private))
        archive_real(ingest, keys, "ct-01", "1.2.3.801", ACCESSION, 1)
        archive_real(ingest, keys, "ct-02", "1.2.3.802", ACCESSION, 2)
    finally:
        ingest.close()
        archive.close()
    code, out, _ = run("issue", "--box", "ct-01", "--kind", "resend", "--accession", ACCESSION, "--config", str(path))
    assert code == 0 and "1 study(ies) archived from ct-01" in out and "seq 1" in out and not _chinese(out), out
    code, out, _ = run("issue", "--box", "ct-01", "--kind", "resend", "--accession", ACCESSION, "--json",
                       "--config", str(path))
    assert code == 0 and [(c["seq"], c["kind"]) for c in json.loads(out)] == [(2, "resend")]
    code, _, err = run("issue", "--box", "ct-01", "--kind", "resend", "--accession", "ACC-UNKNOWN", "--config",
                       str(path))
    assert code == 2 and "no study archived from ct-01 has this accession number" in err, err
    code, _, err = run("issue", "--box", "ct-01", "--kind", "resend", "--accession", "ACC-UNKNOWN", "--config",
                       str(path), lang="zh")
    assert code == 2 and "命令被拒绝：从 ct-01 归档的检查中没有此检查号" in err, err
    store = backend.fleet_store(tmp_path / "state")
    try:
        queue = CommandQueue(store.commands, ack_keys.load_signer(paths.key_file(settings.fleet.command_key_file)),
                             private, "mgw/v1")
        rows = store.commands.commands(box_id="ct-01")
        assert [queue.args_of(r) for r in rows] == [{"study_instance_uid": "1.2.3.801"}] * 2
        audit = [r for r in store.auth.audit(limit=100) if r.action == "command.issue"]
    finally:
        store.close()
    key = accession.index_key(private)
    assert sorted((r.outcome, json.loads(r.detail)["accession"]) for r in audit) == sorted(
        [("ok", accession.digest(key, "ct-01", ACCESSION))] * 2
        + [("refused", accession.digest(key, "ct-01", "ACC-UNKNOWN"))] * 2)
    assert not any(ACCESSION in r.detail or "ACC-UNKNOWN" in r.detail for r in audit)
