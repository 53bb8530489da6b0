"""Cloud ingest throughput with 1, 2 and 4 workers on one MQTT 5 shared subscription.

    .venv/bin/python bench/ingest_workers.py [--workers 1 2 4] [--objects 120] [--index sqlite postgres]

For each worker count and index backend: a fresh mosquitto, N real `mgw cloud run` processes
(SQLite index + shared staging directory, or one PostgreSQL database for index and staging),
then one publisher sends pre-sealed objects (real images of pydicom-data, each sealed as a
distinct instance with 128 KiB frames, as a box would) as fast as the broker takes them. The
clock runs from the first publish until every object is a committed row in the archive index;
reported: objects/s, MB/s of original DICOM bytes archived, and chunks/s. Everything runs on
this machine (broker, publisher, workers, PostgreSQL), so with 2 cores the workers share them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.backends: PostgreSQL on a free port

from gateway.adapters.postgres_index import PostgresIndex  # noqa: E402
from gateway.core import topics  # noqa: E402
from gateway.core.codec import Codec  # noqa: E402
from gateway.core.instance import InstanceIdentity  # noqa: E402
from gateway.core.transfer import Manifest, ObjectKeys, seal_object  # noqa: E402
from gateway.loopback import BOX_ID, LoopbackDeployment  # noqa: E402


def corpus() -> list[bytes]:
    import data_store

    root = Path(data_store.__file__).parent / "data"
    names = ["693_UNCI.dcm", "MR2_UNCI.dcm", "US1_UNCI.dcm", "CT_small.dcm", "MR_small.dcm", "JPEG-LL.dcm"]
    return [(root / n).read_bytes() for n in names if (root / n).is_file()]


def seal_all(cloud_public: bytes, objects: int) -> tuple[list[tuple[str, list[bytes]]], int]:
    """``objects`` sealed transfers ``(transfer hex, frames)`` and their original bytes in total."""
    files = corpus()
    out, total = [], 0
    for n in range(objects):
        data = files[n % len(files)]
        keys = ObjectKeys.draw(cloud_public, os.urandom)
        uid = f"2.25.{uuid.uuid4().int}"
        identity = InstanceIdentity(size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                    sop_class_uid="1.2.840.10008.5.1.4.1.1.7", sop_instance_uid=uid,
                                    study_instance_uid="2.25.1", series_instance_uid="2.25.2",
                                    transfer_syntax_uid="1.2.840.10008.1.2.1")
        manifest = Manifest(identity, Codec.ZSTD)
        out.append((keys.transfer_id.hex(), list(seal_object(BOX_ID, keys, manifest, [data]))))
        total += len(data)
    return out, total


def archived(d: LoopbackDeployment, dsn: str) -> int:
    if dsn:
        index = PostgresIndex(dsn)
        try:
            return index.count_instances()
        finally:
            index.close()
    db = d.cloud_dir / "archive.db"
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def run_one(workers: int, index: str, objects: int, cluster: object | None) -> tuple[float, int, int]:
    root = Path(tempfile.mkdtemp(prefix="mgw-bench-ingest-"))
    dsn = cluster.create_database(f"bench_{workers}_{uuid.uuid4().hex[:8]}") if cluster else ""  # type: ignore[attr-defined]
    overrides: dict[str, dict[str, object]] = {"index": {"backend": "postgres", "dsn": dsn}} if dsn else {}
    d = LoopbackDeployment(root, cloud_workers=workers, cloud_overrides=overrides)
    sealed, total_bytes = seal_all(base64.b64decode(d.cloud_pub), objects)
    chunks = sum(len(f) for _, f in sealed)
    d.broker.start()
    d.write_configs()
    d.start_cloud()
    d.wait_cloud_subscribed()  # shared subscriptions drop messages with no member
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(64)
    pub.connect("127.0.0.1", d.broker.port)
    pub.loop_start()
    try:
        start = time.monotonic()
        for tid, frames in sealed:
            topic = topics.chunk_topic("mgw/v1", BOX_ID, tid)
            for frame in frames:
                pub.publish(topic, frame, qos=1)
        deadline = start + 600
        while archived(d, dsn) < objects:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {archived(d, dsn)} of {objects} archived after 600 s; see {root}")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
    finally:
        pub.loop_stop()
        pub.disconnect()
        d.stop()
    return elapsed, total_bytes, chunks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--objects", type=int, default=120)
    parser.add_argument("--index", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    cluster = None
    if "postgres" in args.index:
        from tests.backends import start_cluster

        cluster = start_cluster()
    try:
        print(f"{'index':9} {'workers':>7} {'objects':>8} {'MB':>7} {'chunks':>7} {'seconds':>8} "
              f"{'obj/s':>7} {'MB/s':>7} {'chunks/s':>9}")
        for index in args.index:
            for workers in args.workers:
                elapsed, total, chunks = run_one(workers, index, args.objects,
                                                 cluster if index == "postgres" else None)
                print(f"{index:9} {workers:>7} {args.objects:>8} {total / 1e6:>7.1f} {chunks:>7} {elapsed:>8.2f} "
                      f"{args.objects / elapsed:>7.1f} {total / 1e6 / elapsed:>7.1f} {chunks / elapsed:>9.0f}",
                      flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
