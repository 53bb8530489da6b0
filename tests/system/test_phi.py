"""No PHI in logs, topics, broker traffic or the edge cache after an end-to-end run with real images.

Real images carry patient names, IDs and DICOM UIDs. After DCMTK storescu sends
them through a real deployment and the cloud acknowledges every one, none of
those values may appear in any service log, the broker's log, any MQTT topic,
any MQTT payload seen by a subscriber to '#', or any file of the edge's spool
(blobs sealed at rest, outbox sealed to the cloud key).
"""

from __future__ import annotations

import queue
import re
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from pydicom import dcmread

from gateway.adapters.dicom_scu import storescu
from gateway.loopback import EDGE_AE, LoopbackDeployment
from tests.peers import dcmtk, real_images, wait_for
from tests.system.reconcile import acknowledged_count

Deploy = Callable[..., LoopbackDeployment]
FIELD_NAME = re.compile(r"\b[A-Z][A-Z0-9_]*=")  # ``KEY=`` of the terminal log format (gateway/logs.py)
KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyInstanceUID",
            "SeriesInstanceUID", "SOPInstanceUID", "StudyID")


def _phi(files: list[Path]) -> set[str]:
    values: set[str] = set()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        for keyword in KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            for part in {value, *value.split("^")}:
                if len(part.strip()) >= 4:
                    values.add(part.strip())
    return values


def _wiretap(port: int) -> tuple[paho.Client, queue.Queue[tuple[str, bytes]]]:
    seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="wiretap", protocol=paho.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(True)
    client.on_message = lambda c, u, m: seen.put((m.topic, bytes(m.payload)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    subscribed.get(timeout=10)
    return client, seen


def test_no_patient_data_appears_in_logs_topics_traffic_or_cache_when_real_images_flow_end_to_end(
        deploy: Deploy) -> None:
    d = deploy()
    files = real_images()
    phi = _phi(files)
    assert len(phi) >= 10  # the corpus does carry names, IDs and UIDs
    tap, seen = _wiretap(d.broker.port)
    try:
        dcmtk("storescu")
        result = storescu("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", files)
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: acknowledged_count(d) >= len(files), 120, "every instance acknowledged")
    finally:
        tap.loop_stop()
        tap.disconnect()
    traffic = []
    while not seen.empty():
        traffic.append(seen.get())
    assert len(traffic) >= 2 * len(files)  # chunks and acks were seen
    # A log line's field names (``FILE=``, ``NAMES=``) are ours, fixed in the code: only what follows
    # them, the values, can carry what a modality sent (one real image's patient name is "NAME").
    logs = {p: FIELD_NAME.sub("=", p.read_text(errors="replace"))
            for p in [*d.root.glob("*.log"), *d.root.glob("broker/*.log")]}
    assert any("instance stored" in text for text in logs.values())
    cache = [p for p in (d.edge_dir / "spool").rglob("*") if p.is_file()]
    assert cache, "the edge keeps originals until retention expires"
    leaks = [f"{name}: {value!r}" for value in phi for name, text in logs.items() if value in text]
    leaks += [f"topic {topic}: {value!r}" for value in phi for topic, _ in traffic if value in topic]
    leaks += [f"payload on {topic}: {value!r}" for value in phi for topic, payload in traffic
              if len(value) >= 8 and value.encode() in payload]
    leaks += [f"cache {path.name}: {value!r}" for path in cache for value in phi
              if len(value) >= 8 and value.encode() in path.read_bytes()]
    assert leaks == []
