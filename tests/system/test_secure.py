"""Zero-touch path with real peers: fleet CA, enrolment, `mgw provision`, mutual TLS broker, a real study."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.dicom_scu import storescu
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.peers import dcmtk, real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile

Deploy = Callable[..., LoopbackDeployment]


def test_fresh_token_provisions_a_box_that_delivers_a_study_when_the_broker_requires_mutual_tls(
        deploy: Deploy) -> None:
    d = deploy(secure=True)
    device = (d.edge_dir / "device.toml").read_text()
    assert "cert_file" in device and "BEGIN" not in device  # paths to the identity, never key material
    files = [p for p in real_images() if p.name in ("693_UNCI.dcm", "MR2_UNCI.dcm", "SC_rgb.dcm")]
    dcmtk("storescu")
    result = storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        wait_for(lambda: acknowledged_count(d) >= len(files), 120, "cloud acknowledgements over mutual TLS")
    except BaseException:
        print(d.log_tail())
        raise
    assert reconcile(d, files).clean


def test_provision_refused_with_clear_message_when_the_token_is_reused(deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    token = d.create_token("box-two")
    first = _provision(d, token, tmp_path / "two")
    assert first.returncode == 0, first.stderr
    again = _provision(d, token, tmp_path / "three")
    assert again.returncode == 1
    assert "token already used" in again.stderr
    assert not (tmp_path / "three" / "device.toml").exists()


def _provision(d: LoopbackDeployment, token: str, state: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "gateway", "provision", "--url", d.enrol_url, "--ca-fingerprint",
            d.authority.ca_fingerprint, "--token", token, "--state-dir", str(state), "--no-self-test"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _mgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120)


def test_signed_bundle_provisions_a_box_and_a_tampered_one_is_refused_when_applied_from_a_stick(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True)
    signers, stick = tmp_path / "signers", tmp_path / "stick"
    signers.mkdir()
    stick.mkdir()
    made = _mgw("cloud", "bundle-key", "--out", str(tmp_path / "signing.key"))
    assert made.returncode == 0, made.stderr
    (signers / "ops.pub").write_text(made.stdout.strip())
    (tmp_path / "site.toml").write_text('[dicom]\nae_title = "CT_ROOM_2"\nallowed_peers = ["CT_SCANNER@127.0.0.1"]\n')
    bundle_path = stick / "MGW-PROVISION.bundle"
    made = _mgw("cloud", "bundle", "--config", str(d.cloud_toml), "--signing-key", str(tmp_path / "signing.key"),
                "--box", "ct-room-2", "--site", "clinic-7", "--modality", "CT", "--site-config",
                str(tmp_path / "site.toml"), "--url", d.enrol_url, "--out", str(bundle_path))
    assert made.returncode == 0, made.stderr

    tampered = stick / "tampered.bundle"
    tampered.write_bytes(bundle_path.read_bytes().replace(b'"payload": "', b'"payload": "A'))
    refused = _mgw("provision", "--bundle", str(tampered), "--signers", str(signers),
                   "--state-dir", str(tmp_path / "box-x"))
    assert refused.returncode == 1
    assert "provisioning bundle refused" in refused.stderr  # logged (journald: MESSAGE_ID BUNDLE_REFUSED)
    assert not (tmp_path / "box-x" / "device.toml").exists()

    applied = _mgw("provision", "--bundle", str(bundle_path), "--signers", str(signers),
                   "--state-dir", str(tmp_path / "box"), "--json")
    assert applied.returncode == 0, applied.stderr
    assert '"box_id": "ct-room-2"' in applied.stdout and '"ok": true' in applied.stdout
    device = (tmp_path / "box" / "device.toml").read_text()
    assert 'ae_title = "CT_ROOM_2"' in device
    assert 'allowed_peers = ["CT_SCANNER@127.0.0.1"]' in device and 'bind_host = "127.0.0.1"' in device


def test_provisioned_box_admits_only_the_recorded_modality_and_counts_the_rest_when_strangers_call(
        deploy: Deploy) -> None:
    import urllib.request

    d = deploy(secure=True)
    device = (d.edge_dir / "device.toml").read_text()
    assert 'allowed_peers = ["MODALITY@127.0.0.1"]' in device and 'bind_host = "127.0.0.1"' in device
    files = [p for p in real_images() if p.name == "693_UNCI.dcm"]
    dcmtk("storescu")
    refused = storescu("127.0.0.1", d.dicom_port, EDGE_AE, "STORESCU", files)  # storescu's default AE title
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
    assert storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files).returncode == 0
    url = f"http://127.0.0.1:{d.edge_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - our own endpoint on loopback
        metrics = answer.read().decode()
    assert ('mgw_edge_dicom_associations_rejected_total{box_id="demo-box",reason="calling AE title not recognised"} '
            '1.0') in metrics
    wait_for(lambda: acknowledged_count(d) >= 1, 60, "the modality's instance acknowledged")


def test_decommission_crypto_erases_keys_and_cache_when_confirmed(deploy: Deploy) -> None:
    d = deploy(secure=True)
    files = [p for p in real_images() if p.name == "693_UNCI.dcm"]
    dcmtk("storescu")
    assert storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files).returncode == 0
    wait_for(lambda: acknowledged_count(d) >= 1, 60, "the instance acknowledged")
    d.kill_edge()
    sealed = [p for p in (d.edge_dir / "spool" / "blobs").iterdir() if p.is_file() and p.stat().st_size]  # not
    # the empty files the listener makes ahead for datasets to come
    assert sealed and all(p.read_bytes()[:5] == b"MGWC\x01" for p in sealed)
    assert _mgw("decommission", "--state-dir", str(d.edge_dir)).returncode == 1  # needs --yes
    assert (d.edge_dir / "keys" / "cache.secret").exists() and (d.edge_dir / "worklist.db").exists()
    worklist_key = d.edge_dir / "keys" / "worklist.secret"  # the box's X25519 worklist key (edge/worklist_feed.py)
    assert worklist_key.exists() and oct(worklist_key.stat().st_mode & 0o777) == "0o600"
    erased = _mgw("decommission", "--state-dir", str(d.edge_dir), "--yes", "--json")
    assert erased.returncode == 0, erased.stderr
    assert '"keys_erased": 4' in erased.stdout  # box.key, cache.secret, study_key.secret, worklist.secret
    assert list((d.edge_dir / "keys").iterdir()) == []
    assert not (d.edge_dir / "spool").exists() and not (d.edge_dir / "device.toml").exists()
    assert not (d.edge_dir / "worklist.db").exists()  # the worklist cache the running edge opened


def test_prepare_usb_script_writes_a_bundle_the_box_accepts_when_given_a_directory(
        deploy: Deploy, tmp_path: Path) -> None:
    import os
    import time

    from gateway import bundle

    d = deploy(secure=True)
    made = _mgw("cloud", "bundle-key", "--out", str(tmp_path / "signing.key"))
    stick = tmp_path / "stick"
    stick.mkdir()
    script = Path(__file__).parents[2] / "provisioning" / "prepare-usb.sh"
    env = dict(os.environ, MGW=str(Path(sys.executable).parent / "mgw"))
    ran = subprocess.run(["sh", str(script), "--config", str(d.cloud_toml), "--signing-key",
                          str(tmp_path / "signing.key"), "--box", "us-1", "--site", "clinic-7", "--modality", "US",
                          "--dir", str(stick)], capture_output=True, text=True, timeout=120, env=env)
    assert ran.returncode == 0, ran.stderr
    assert [p.name for p in stick.iterdir()] == ["MGW-PROVISION.bundle"]
    signers_dir = tmp_path / "signers"
    signers_dir.mkdir()
    (signers_dir / "ops.pub").write_text(made.stdout.strip())
    got = bundle.verify((stick / "MGW-PROVISION.bundle").read_bytes(), bundle.load_signers(signers_dir), time.time())
    assert got.ca_fingerprint == d.authority.ca_fingerprint and got.token.startswith("mgw1-")


def test_generated_broker_config_runs_mosquitto_that_admits_an_enrolled_box_when_started(
        deploy: Deploy, tmp_path: Path) -> None:
    from gateway.adapters import ports
    from tests.tls_peers import Client, box_identity, mosquitto_on

    d = deploy(secure=True)
    out = tmp_path / "prod-broker"

    def start(port: int) -> tuple[int, subprocess.Popen[bytes]]:
        """mosquitto on the generated configuration, for a port picked free (another if it was taken)."""
        made = _mgw("cloud", "broker-config", "--config", str(d.cloud_toml), "--out", str(out), "--host",
                    "127.0.0.1", "--port", str(port), "--bind", "127.0.0.1")
        assert made.returncode == 0, made.stderr
        return port, mosquitto_on(out / "mosquitto.conf", port, "the generated broker")

    port, proc = ports.on_free_port(start)
    try:
        conf = (out / "mosquitto.conf").read_text()
        assert "require_certificate true" in conf and "plugin_opt_crl_file" in conf and "max_packet_size" in conf
        assert {p.name for p in (out / "identities").iterdir()} >= {"ingest-1.pem", "ingest-1.key", "fleet-1.pem"}
        emqx_out = tmp_path / "prod-emqx"
        made_emqx = _mgw("cloud", "broker-config", "--config", str(d.cloud_toml), "--out", str(emqx_out), "--host",
                         "127.0.0.1", "--port", str(port), "--profile", "emqx")
        assert made_emqx.returncode == 0, made_emqx.stderr
        assert "peer_cert_as_username = cn" in (emqx_out / "emqx.conf").read_text()
        box = Client(port, d.authority.ca_cert_path, *box_identity(d.authority, "ct-9", tmp_path / "box"),
                     client_id="ct-9")
        assert box.connect() == "ok"
        box.close()
        ingest = Client(port, d.authority.ca_cert_path, out / "identities" / "ingest-1.pem",
                        out / "identities" / "ingest-1.key", client_id="cloud.ingest.1")
        assert ingest.connect() == "ok"
        ingest.close()
        stranger = Client(port, d.authority.ca_cert_path, client_id="anon")
        assert stranger.connect() != "ok"
        stranger.close()
    finally:
        proc.terminate()
        proc.wait(10)

