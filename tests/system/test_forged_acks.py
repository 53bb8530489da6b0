"""One box cannot hurt the fleet, nor be made to hurt itself: an attacker who has read EVERYTHING
the edge holds (its spool database and its keys directory) and may publish on its ack topic still
cannot make it delete an instance the cloud has not stored. Real broker, real edge process."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable

from gateway.adapters.mqtt_link import MqttLink
from gateway.config import MqttSettings
from gateway.core import topics
from gateway.core.acksig import AckSigner, sign_util_ack
from gateway.core.framing import AckFrame, AckKind, ack_signed_input
from gateway.edge import ack_keyring
from gateway.loopback import BOX_ID, LoopbackDeployment
from tests.peers import real_images, wait_for
from tests.system.reconcile import acknowledged_count, reconcile
from tests.system.test_end_to_end import _send

Deploy = Callable[..., LoopbackDeployment]
PREFIX = "mgw/v1"


def _items(d: LoopbackDeployment) -> list[tuple[str, str | None, str, bytes | None]]:
    with sqlite3.connect(f"file:{d.edge_dir / 'spool.db'}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT state, transfer_id, sha256, ack_key FROM items ORDER BY id").fetchall()


def _box_secrets(d: LoopbackDeployment) -> list[bytes]:
    """Every 32-byte window an attacker could try as a signing key: each key file, each blob
    column of the spool database, and the database file itself, in 32-byte steps."""
    raw = [p.read_bytes() for p in (d.edge_dir / "keys").iterdir() if p.is_file()]
    raw += [ack for *_, ack in _items(d) if ack]
    raw.append((d.edge_dir / "spool.db").read_bytes()[:8 * 1024])
    return list({blob[i:i + 32] for blob in raw for i in range(0, max(1, len(blob) - 31), 32)
                 if len(blob[i:i + 32]) == 32})


def _forgeries(d: LoopbackDeployment, secrets: list[bytes]) -> list[bytes]:
    """STORED acks for every pending transfer, each signed with a box secret, under the signer's
    own key id and under the key id the box trusts (read from its keyring file)."""
    trusted = ack_keyring.load(ack_keyring.keyring_path(d.edge_dir)).key_ids[0]
    out = []
    for _, tid, sha, _ in _items(d):
        if tid is None:
            continue
        ack = AckFrame(AckKind.STORED, bytes.fromhex(tid), sha256=bytes.fromhex(sha))
        for secret in secrets:
            signer = AckSigner(secret)
            out.append(ack.encode(BOX_ID, signer))
            body = out[-1][:24] + trusted + out[-1][32:-64]
            out.append(body + signer.sign(ack_signed_input(BOX_ID, body)))
    return out


def test_forged_acks_are_refused_when_made_with_everything_the_box_holds(deploy: Deploy) -> None:
    d = deploy()
    d.kill_cloud()  # nothing may be acknowledged genuinely while the attack runs
    files = real_images()[:3]
    _send(d, files)
    wait_for(lambda: len(_items(d)) == len(files) and all(s in ("packed", "sending") for s, *_ in _items(d)),
             120, "every instance packed and waiting for the cloud")
    assert all(ack is None for *_, ack in _items(d)), "the spool must hold no per-transfer ack secret"
    forged = _forgeries(d, _box_secrets(d))
    util = [json.dumps(sign_util_ack(AckSigner(s), BOX_ID, "ab" * 16, 1)).encode() for s in _box_secrets(d)[:20]]
    up = threading.Event()
    attacker = MqttLink(MqttSettings(host="127.0.0.1", port=d.broker.port), "attacker", subscriptions=[],
                        on_message=lambda m: None, on_state=lambda ok: up.set() if ok else None)
    attacker.start()
    try:
        wait_for(up.is_set, 30, "the attacker connected")
        for payload in forged:
            assert attacker.publish(topics.ack_topic(PREFIX, BOX_ID), payload, qos=1)
        for payload in util:
            assert attacker.publish(topics.util_ack_topic(PREFIX, BOX_ID), payload, qos=1)
        edge_log = d.root / "edge.log"
        wait_for(lambda: edge_log.read_text(errors="replace").count("ack failed verification") >= len(forged),
                 120, "the edge to refuse every forged ack")
        wait_for(lambda: edge_log.read_text(errors="replace").count("exam-record ack ignored") >= len(util),
                 60, "the edge to refuse every forged exam-record ack")
    finally:
        attacker.stop()
    assert all(s in ("packed", "sending") for s, *_ in _items(d)) and acknowledged_count(d) == 0
    blobs = [p for p in (d.edge_dir / "spool" / "blobs").iterdir() if p.stat().st_size]  # (and empty ones made ahead)
    assert len(blobs) == len(files), "no original may be deleted on a forged ack"
    log = (d.root / "edge.log").read_text(errors="replace")
    assert "does not trust" in log and "signature does not verify" in log
    d.start_cloud_worker(0)  # the genuine cloud: everything is delivered and acknowledged
    wait_for(lambda: acknowledged_count(d) == len(files), 180, "the genuine acknowledgements")
    assert reconcile(d, files).clean
    assert "Traceback" not in log
