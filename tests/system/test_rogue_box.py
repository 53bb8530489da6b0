"""One box cannot hurt the fleet: a rogue box among honest ones, all real processes.

A real deployment (mutual-TLS mosquitto with the guard plugin, enrolment endpoint, one ingest
worker, the fleet service) serves two honest boxes that deliver studies from DCMTK storescu.
Then a third box is enrolled the real way and turns hostile: holding its certificate, its key
and the cloud's public envelope key, it runs every attack class of the issue "One box cannot
hurt the fleet" and fuzzes chunk frames and telemetry with generated values while the honest
boxes deliver a second study of the same size.

Asserted: every honest instance arrives byte-exact, in less than twice the time the same
delivery took with no rogue box; every bad message that reached a cloud service is
dead-lettered (counted in /metrics) and the rogue box has a dead_letters alert, the honest
boxes none; no cloud process exits; and revoking the rogue box drops its open connection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core import envelope, schema, topics
from gateway.core.errors import FrameError
from gateway.core.framing import ChunkFrame, chunk_aad
from gateway.core.instance import InstanceIdentity
from gateway.core.transfer import Manifest, ObjectKeys, seal_object
from gateway.loopback import BOX_ID, LoopbackDeployment
from tests.console_auth import bearer, deployment_token
from tests.peers import wait_for
from tests.system.reconcile import acknowledged_count, reconcile
from tests.system.test_concurrency import (
    Box,
    extra_boxes,  # noqa: F401 - a fixture, used by name
    modality_files,
    send_at_once,
    wait_all_connected,
)
from tests.tls_peers import Client, box_identity

Deploy = Callable[..., LoopbackDeployment]
PREFIX = "mgw/v1"
ROGUE = "rogue-1"
HONEST = "box-2"
PER_BOX = 20
OPEN_TRANSFERS = 64  # the cloud's default budget: 2x an honest edge's uplink.transfers_in_flight (32)
FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _get(url: str, context: ssl.SSLContext | None = None, token: str = "") -> Any:
    request = urllib.request.Request(url, headers=bearer(token) if token else {})  # the console needs a token
    with urllib.request.urlopen(request, timeout=10, context=context) as rsp:  # noqa: S310 - loopback
        body = rsp.read().decode()
    return body if url.endswith("/metrics") else json.loads(body)


def _metric_sum(port: int, name: str, context: ssl.SSLContext | None = None, token: str = "", **labels: str) -> float:
    total = 0.0
    scheme = "http" if context is None else "https"
    for line in _get(f"{scheme}://127.0.0.1:{port}/metrics", context, token).splitlines():
        found = re.match(rf"^{name}\{{([^}}]*)\}} (\S+)$", line)
        if found and all(f'{k}="{v}"' in found.group(1) for k, v in labels.items()):
            total += float(found.group(2))
    return total


class Rogue:
    """The hostile box: its own certificate and key, the cloud's public key, a raw MQTT client."""

    def __init__(self, d: LoopbackDeployment, cert: Path, key: Path) -> None:
        assert d.broker.tls is not None
        self.d, self.cert, self.key, self.ca = d, cert, key, d.broker.tls.ca_file
        self.cloud_public = base64.b64decode(d.cloud_pub)  # every box is told it at enrolment
        self.chunks_bad = 0  # chunk messages that must be dead-lettered at the ingest
        self.telemetry_bad = 0  # telemetry messages that must be dead-lettered at the fleet
        self.client = self.connect(ROGUE)
        assert self.client is not None

    def connect(self, client_id: str) -> Client | None:
        client = Client(self.d.broker.port, self.ca, self.cert, self.key, client_id=client_id)
        outcome = client.connect()
        if outcome == "ok":
            return client
        client.close()
        return None

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload)

    # -- broker: identities, subscriptions, sizes ---------------------------------------------------
    def identity_attacks(self) -> None:
        for stolen in ("cloud.ingest.1", "cloud.fleet.1", BOX_ID, HONEST, f"{HONEST}:telemetry"):
            assert self.connect(stolen) is None, f"the rogue connected as {stolen}"
        for pattern in (f"$share/ingest/{PREFIX}/+/up/+", f"{PREFIX}/+/up/+", f"{PREFIX}/#", "#",
                        f"{PREFIX}/{HONEST}/ack", f"{PREFIX}/{BOX_ID}/util/ack"):
            assert all(code >= 0x80 for code in self.client.subscribe(pattern)), pattern
        # Forged acknowledgements for an honest box: the broker refuses the topic, and an ack
        # not signed by the cloud's key would be refused by the box anyway.
        self.publish(topics.ack_topic(PREFIX, HONEST), b"MGWA" + os.urandom(200))

    # -- the cloud: poison chunks, budgets, fuzz --------------------------------------------------------
    def _keys(self) -> ObjectKeys:
        return ObjectKeys.create(self.cloud_public, os.urandom(16), os.urandom(32), os.urandom(32))

    def _chunk(self, keys: ObjectKeys, seq: int, final: bool, plaintext: bytes) -> bytes:
        header = ChunkFrame(keys.transfer_id, seq, final, keys.eph_public, keys.wrapped_key, b"").header()
        return header + envelope.seal_chunk(keys.data_key, seq, plaintext, chunk_aad(ROGUE, header))

    def send_chunk(self, keys: ObjectKeys, frame: bytes, bad: bool = True) -> None:
        self.publish(topics.chunk_topic(PREFIX, ROGUE, keys.transfer_id.hex()), frame)
        self.chunks_bad += int(bad)

    def poison_chunks(self) -> None:
        keys = self._keys()  # validly sealed, with the chunk number at the top of its range
        self.send_chunk(keys, self._chunk(keys, 2**32 - 1, True, b"x" * 64))
        for _ in range(OPEN_TRANSFERS + 8):  # transfers opened and never finished: the budget
            keys = self._keys()
            data = os.urandom(2048)
            identity = InstanceIdentity(
                size=len(data), sha256=hashlib.sha256(data).hexdigest(), sop_class_uid="1.2.3",
                sop_instance_uid="1.2.3.4", study_instance_uid="1.2", series_instance_uid="1.2.3",
                transfer_syntax_uid="1.2.840.10008.1.2.1")
            manifest = Manifest(identity, codec=0)
            first = next(iter(seal_object(ROGUE, keys, manifest, [data])))
            self.send_chunk(keys, first, bad=False)
        self.chunks_bad += 8  # beyond OPEN_TRANSFERS: over budget
        old = bytearray(first)  # a downgrade to wire v1, whose acks were HMACs the box could forge
        old[4] = 1
        self.send_chunk(keys, bytes(old))

    def fuzz_chunks(self) -> None:
        @FUZZ
        @given(st.binary(max_size=4096), st.integers(0, 2**32 - 1), st.booleans())
        def one(ciphertext: bytes, seq: int, final: bool) -> None:
            keys = self._keys()
            frame = ChunkFrame(keys.transfer_id, seq, final, keys.eph_public, os.urandom(48), ciphertext)
            self.send_chunk(keys, frame.encode())

        one()

    def fuzz_telemetry(self) -> None:
        leaf_types = {"health": schema.Heartbeat, "state": None, "util": schema.ExamRecord}
        values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                          inner, max_size=3),
                              max_leaves=8)

        @FUZZ
        @given(st.sampled_from(sorted(leaf_types)), st.dictionaries(
            st.sampled_from(["v", "kind", "box_id", "bd_seq", "backlog", "disk", "at", "site", "study_key",
                             "revision", "images", "last_study"]), values, max_size=6))
        def one(leaf: str, doc: dict[str, Any]) -> None:
            doc.setdefault("box_id", ROGUE)
            payload = json.dumps(doc).encode()
            if leaf != "state":  # a retained state is only re-sent; keep the flood to the rest
                self.publish(topics.telemetry_topic(PREFIX, ROGUE, leaf), payload)
                self.telemetry_bad += int(not _parses(leaf, payload))

        one()
        self.publish(topics.telemetry_topic(PREFIX, ROGUE, "health"), json.dumps(
            {"v": 1, "kind": "heartbeat", "box_id": ROGUE, "bd_seq": 1, "backlog": [1], "disk": "x"}).encode())
        self.telemetry_bad += 1

    def oversize(self) -> None:
        """60 MiB is what users sent; 1 MiB is already eight times the broker's limit."""
        self.client.publish(topics.chunk_topic(PREFIX, ROGUE, os.urandom(16).hex()), os.urandom(1 << 20))
        wait_for(self.client.disconnected.is_set, 30, "the broker to drop the rogue for an oversize packet")
        self.client.close()
        client = self.connect(ROGUE)
        assert client is not None
        self.client = client


def _parses(leaf: str, payload: bytes) -> bool:
    try:
        if leaf == "health":
            schema.parse(schema.Heartbeat, payload, leaf)
        else:
            record = schema.parse(schema.ExamRecord, payload, leaf)
            return record.box_id == ROGUE
    except FrameError:
        return False
    return json.loads(payload).get("box_id") == ROGUE


def _deliver(d: LoopbackDeployment, boxes: list[tuple[int, Path]], out: Path) -> tuple[float, list[list[Path]]]:
    """One study per honest box, sent at once; seconds until every instance is acknowledged."""
    studies = [modality_files(out / str(n), m, PER_BOX) for n, m in enumerate(("CT", "MR"))]
    before = [acknowledged_count(d, edge_dir) for _, edge_dir in boxes]
    started = time.monotonic()
    send_at_once([(port, files, "MODALITY") for (port, _), files in zip(boxes, studies, strict=True)])
    wait_for(lambda: all(acknowledged_count(d, e) >= b + PER_BOX for (_, e), b in zip(boxes, before, strict=True)),
             300, "every honest instance acknowledged")
    return time.monotonic() - started, studies


def _enrol_flood(d: LoopbackDeployment) -> list[int]:
    ctx = ssl.create_default_context(cafile=str(d.broker.tls.ca_file))  # the fleet CA signs the endpoint
    codes = []
    for _ in range(30):
        body = json.dumps({"token": "mgw1-deadbeef.guess", "csr": "x"}).encode()
        request = urllib.request.Request(d.enrol_url + "/.well-known/est/simpleenroll", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10, context=ctx) as rsp:  # noqa: S310 - loopback
                codes.append(rsp.status)
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
    return codes


def test_honest_boxes_deliver_byte_exact_and_no_cloud_process_exits_when_a_rogue_box_attacks(
        deploy: Deploy, extra_boxes: Callable[[LoopbackDeployment, str], Box],  # noqa: F811
        tmp_path: Path) -> None:
    d = deploy(secure=True, cloud_overrides={"budgets": {"max_open_transfers": OPEN_TRANSFERS}})
    ingest_metrics = d.ingest_metrics_port()
    honest = extra_boxes(d, HONEST)
    boxes = [(d.dicom_port, d.edge_dir), (honest.dicom_port, honest.state_dir)]
    wait_all_connected(d, [BOX_ID, HONEST])
    calm_s, calm = _deliver(d, boxes, tmp_path / "calm")

    cert, key = box_identity(d.authority, ROGUE, tmp_path / "rogue")
    rogue = Rogue(d, cert, key)
    rogue.identity_attacks()
    attacking = threading.Thread(target=lambda: (rogue.poison_chunks(), rogue.fuzz_chunks(),
                                                 rogue.fuzz_telemetry()), daemon=True)
    attacking.start()
    storm_s, storm = _deliver(d, boxes, tmp_path / "storm")
    attacking.join(300)
    assert not attacking.is_alive()
    rogue.oversize()
    codes = _enrol_flood(d)

    for studies in (calm, storm):
        for files, (_, edge_dir) in zip(studies, boxes, strict=True):
            result = reconcile(d, files, edge_dir)
            assert result.clean, result
    assert storm_s < 2 * max(calm_s, 5.0), f"honest delivery took {storm_s:.1f} s under attack, {calm_s:.1f} s calm"

    wait_for(lambda: _metric_sum(ingest_metrics, "mgw_ingest_dead_letters_total") >= rogue.chunks_bad, 120,
             f"{rogue.chunks_bad} rogue chunks dead-lettered at the ingest")
    console = d.console_context()  # the fleet console is HTTPS, its certificate from the fleet CA
    token = deployment_token(d.fleet_toml)  # and it answers an authenticated principal only
    wait_for(lambda: _metric_sum(d.fleet_port, "mgw_fleet_dead_letters_total", console, token)
             >= rogue.telemetry_bad, 120,
             f"{rogue.telemetry_bad} rogue telemetry messages dead-lettered at the fleet")
    assert _metric_sum(ingest_metrics, "mgw_ingest_dead_letters_total", reason="budget") >= 8
    fleet_api = f"https://127.0.0.1:{d.fleet_port}/api/v1"
    def letters() -> list[dict[str, Any]]:
        return list(_get(f"{fleet_api}/dead-letters?limit=5000", console, token)["dead_letters"])

    seen: Counter[str] = Counter()

    def reasons() -> bool:
        seen.clear()
        seen.update(x["reason"] for x in letters())
        return {"malformed", "budget", "version"} <= set(seen)

    try:
        wait_for(reasons, 120, "the ingest's dead letters (budget, version) at the fleet beside the telemetry's")
    except BaseException:
        print("dead letters at the fleet, by reason:", dict(seen))
        raise
    assert {x["box_id"] for x in letters()} == {ROGUE}  # nothing of an honest box was set aside
    alerts = _get(f"{fleet_api}/alerts", console, token)["alerts"]
    wait_for(lambda: any(a["box_id"] == ROGUE and a["kind"] == "dead_letters"
                         for a in _get(f"{fleet_api}/alerts", console, token)["alerts"]), 30,
             "the rogue box's dead_letters alert")
    assert not any(a["kind"] == "dead_letters" and a["box_id"] != ROGUE for a in alerts)
    assert 429 in codes or 403 in codes, codes  # the enrolment endpoint limited the flood and still answers
    enrol_metrics = d.reported_port("enrolment", "metrics")  # its /metrics counted what it answered
    for status in (403, 429):
        assert _metric_sum(enrol_metrics, "mgw_enrolment_requests_total", endpoint="simpleenroll",
                           status=str(status)) == codes.count(status)
    assert _metric_sum(enrol_metrics, "mgw_enrolment_refusals_total", reason="rate_limited") == codes.count(429)
    throttled = _metric_sum(ingest_metrics, "mgw_ingest_chunks_throttled_total", limit="open_transfers")
    assert throttled >= _metric_sum(ingest_metrics, "mgw_ingest_dead_letters_total", reason="budget") >= 8
    assert _metric_sum(ingest_metrics, "mgw_ingest_chunks_refused_total") > 0

    subprocess.run([sys.executable, "-m", "gateway", "cloud", "revoke", ROGUE, "--config", str(d.cloud_toml)],
                   check=True, capture_output=True, timeout=60)
    wait_for(rogue.client.disconnected.is_set, 30, "the revoked rogue's open connection dropped")
    assert rogue.connect(ROGUE) is None
    for proc in (*d.clouds, d.fleet, d.enrolment):
        assert proc is not None and proc.poll() is None, "a cloud process exited"
    rogue.client.close()
