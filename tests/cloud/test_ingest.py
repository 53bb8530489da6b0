"""Cloud ingest (gateway.cloud.ingest.pipeline) against a real SQLite index and real files.

Objects are sealed by ``gateway.core.transfer.seal_object`` with a real X25519
key pair, cut into small frames so a few KiB make many chunks. Only time is faked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cloud.archive.store import Archive, TransferState
from gateway.cloud.ingest import pipeline as ingest_module
from gateway.cloud.ingest.pipeline import Ingest, Outgoing
from gateway.config import IngestSettings
from gateway.core import envelope
from gateway.core.acksig import AckKeyring, AckSigner
from gateway.core.codec import Codec
from gateway.core.errors import StorageError
from gateway.core.framing import (
    CHUNK_HEADER_BYTES,
    MIN_FRAME_BYTES,
    AckFrame,
    AckKind,
    ChunkFrame,
    RejectReason,
    chunk_aad,
    parse_ack,
    to_ranges,
)
from gateway.core.instance import InstanceIdentity
from gateway.core.transfer import Manifest, ObjectKeys, seal_object
from gateway.logs import MSG
from tests.backends import Backend

BOX = "box-1"
FRAME_BYTES = MIN_FRAME_BYTES  # 1 KiB of payload per chunk
ACK_SIGNER = AckSigner(bytes(range(32)))  # fixed: worker processes spawned by a test sign alike
ACK_KEYRING = AckKeyring((ACK_SIGNER.public,))
HYPOTHESIS = settings(max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class KeyPair:
    private: bytes
    public: bytes


@dataclass(frozen=True)
class Sealed:
    data: bytes
    manifest: Manifest
    keys: ObjectKeys
    frames: list[bytes]

    @property
    def ack_keyring(self) -> AckKeyring:
        return ACK_KEYRING


def make_keys() -> KeyPair:
    private = os.urandom(32)
    return KeyPair(private, envelope.public_key_of(private))


def make_data(size: int, seed: int) -> bytes:
    """Half incompressible, half zeros: zstd keeps it many chunks long."""
    return random.Random(seed).randbytes(size // 2) + bytes(size - size // 2)


def manifest_for(data: bytes, n: int = 1, **changes: Any) -> Manifest:
    """The manifest of ``data``; ``changes`` are to its identity."""
    identity = InstanceIdentity(
        size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.2.826.0.1.3680043.10.543.{n}",
        study_instance_uid="1.2.826.0.1.3680043.10.543.100",
        series_instance_uid="1.2.826.0.1.3680043.10.543.200",
        transfer_syntax_uid="1.2.840.10008.1.2.1")
    return Manifest(dataclasses.replace(identity, **changes), codec=int(Codec.ZSTD))


def seal(keys: KeyPair, data: bytes, manifest: Manifest | None = None, box: str = BOX) -> Sealed:
    object_keys = ObjectKeys.create(keys.public, os.urandom(16), os.urandom(32), os.urandom(32))
    manifest = manifest or manifest_for(data)
    frames = list(seal_object(box, object_keys, manifest, [data], FRAME_BYTES))
    return Sealed(data, manifest, object_keys, frames)


def raw_frame(sealed: Sealed, seq: int, final: bool, plaintext: bytes, box: str = BOX) -> bytes:
    """A correctly sealed frame with any plaintext, to build objects seal_object would refuse."""
    keys = sealed.keys
    header = ChunkFrame(keys.transfer_id, seq, final, keys.eph_public, keys.wrapped_key, b"").header()
    return header + envelope.seal_chunk(keys.data_key, seq, plaintext, chunk_aad(box, header))


class Cloud:
    """One ingest worker: its own index connection, sharing ``root`` with any other."""

    def __init__(self, root: Path, keys: KeyPair, ingest_settings: IngestSettings | None = None,
                 clock: Callable[[], float] = time.time, backend: Backend | None = None) -> None:
        self.root = root
        self.backend = backend or Backend("sqlite")
        self.archive = self.backend.archive(root)
        self.ingest = Ingest(ingest_settings or IngestSettings(), keys.private, ACK_SIGNER, self.archive,
                             self.backend.staging(root), clock)

    def send(self, frame: bytes, box: str = BOX) -> list[Outgoing]:
        return self.ingest.handle_chunk(box, frame)

    def send_all(self, frames: list[bytes], box: str = BOX) -> list[Outgoing]:
        return [ack for frame in frames for ack in self.send(frame, box)]

    def staged_files(self) -> list[str]:
        return self.backend.staged_names(self.root)

    def close(self) -> None:
        self.ingest.close()
        self.archive.close()

    def scratch_files(self) -> list[Path]:
        return sorted((self.root / "archive" / ".incoming").iterdir())


def ack_of(out: Outgoing, sealed: Sealed) -> AckFrame:
    assert out.box_id == BOX
    ack = parse_ack(out.payload, out.box_id, sealed.ack_keyring)
    assert ack.transfer_id == sealed.keys.transfer_id
    return ack


@contextmanager
def fresh_cloud(keys: KeyPair) -> Iterator[Cloud]:
    with tempfile.TemporaryDirectory() as root:
        cloud = Cloud(Path(root), keys)
        try:
            yield cloud
        finally:
            cloud.archive.close()


@pytest.fixture(scope="module")
def keys() -> KeyPair:
    return make_keys()


@pytest.fixture(scope="module")
def sealed(keys: KeyPair) -> Sealed:
    return seal(keys, make_data(16_000, seed=1))


@pytest.fixture
def cloud(tmp_path: Path, keys: KeyPair, backend: Backend) -> Iterator[Cloud]:
    c = Cloud(tmp_path, keys, backend=backend)
    yield c
    c.close()


def test_object_is_archived_byte_identical_when_all_chunks_arrive(cloud: Cloud, sealed: Sealed) -> None:
    assert len(sealed.frames) >= 8
    progress = [ack_of(out, sealed) for frame in sealed.frames[:-1] for out in cloud.send(frame)]
    final = [ack_of(out, sealed) for out in cloud.send(sealed.frames[-1])]

    assert [a.kind for a in progress] == [AckKind.PROGRESS] * (len(sealed.frames) - 1)
    assert progress[-1].ranges == ((0, len(sealed.frames) - 1),)
    assert [(a.kind, a.sha256) for a in final] == [(AckKind.STORED, hashlib.sha256(sealed.data).digest())]
    [record] = cloud.archive.instances()
    assert b"".join(cloud.archive.open(record)) == sealed.data
    assert sealed.data[:64] not in record.path.read_bytes()  # sealed at rest
    m = sealed.manifest.identity
    assert record.identity == m
    assert record.path == (cloud.root / "archive" / m.study_instance_uid / m.series_instance_uid
                           / f"{m.sop_instance_uid}_{m.sha256[:12]}.mgwc")
    assert (record.box_id, record.transfer_id, record.identity.size) == (
        BOX, sealed.keys.transfer_id.hex(), len(sealed.data))
    assert cloud.staged_files() == [] and cloud.scratch_files() == []
    transfer = cloud.archive.lookup_transfer(BOX, sealed.keys.transfer_id)
    assert transfer is not None and transfer.state is TransferState.STORED
    assert transfer.chunks == len(sealed.frames)
    assert cloud.ingest.counters()["objects_stored"] == 1


@HYPOTHESIS
@given(data=st.data())
def test_object_is_archived_once_when_chunks_arrive_shuffled_and_duplicated(
        keys: KeyPair, sealed: Sealed, data: st.DataObject) -> None:
    n = len(sealed.frames)
    order = list(data.draw(st.permutations(range(n))))
    for seq, pos in data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n)), max_size=2 * n)):
        order.insert(pos, seq)
    with fresh_cloud(keys) as cloud:
        seen: set[int] = set()
        for seq in order:
            complete_before = len(seen) == n
            seen.add(seq)
            [ack] = [ack_of(out, sealed) for out in cloud.send(sealed.frames[seq])]
            if len(seen) == n:
                assert ack.kind is AckKind.STORED, (complete_before, order)
            else:
                assert (ack.kind, ack.ranges) == (AckKind.PROGRESS, to_ranges(seen))
        assert [b"".join(cloud.archive.open(r)) for r in cloud.archive.instances()] == [sealed.data]
        counters = cloud.ingest.counters()
        assert (counters["objects_stored"], counters["objects_duplicate"]) == (1, 0)


def test_stored_ack_is_repeated_when_chunks_are_resent_after_storing(cloud: Cloud, sealed: Sealed) -> None:
    cloud.send_all(sealed.frames)
    again = [ack_of(out, sealed) for out in cloud.send_all(sealed.frames)]

    assert [a.kind for a in again] == [AckKind.STORED] * len(sealed.frames)
    assert {a.sha256 for a in again} == {bytes.fromhex(sealed.manifest.identity.sha256)}
    assert cloud.archive.count() == 1
    assert cloud.ingest.counters()["objects_stored"] == 1
    assert cloud.staged_files() == []


@HYPOTHESIS
@given(data=st.data())
def test_chunk_is_rejected_when_one_bit_is_flipped(keys: KeyPair, sealed: Sealed, data: st.DataObject) -> None:
    seq = data.draw(st.integers(0, len(sealed.frames) - 1), label="seq")
    bit = data.draw(st.integers(0, len(sealed.frames[seq]) * 8 - 1), label="bit")
    flipped = bytearray(sealed.frames[seq])
    flipped[bit // 8] ^= 1 << (bit % 8)
    with fresh_cloud(keys) as cloud:
        assert cloud.send(bytes(flipped)) == []
        counters = cloud.ingest.counters()
        assert counters["chunks_rejected"] == 1
        assert sum(counters[f"chunks_rejected_{r.value}"] for r in ingest_module.ChunkRejection) == 1
        assert cloud.archive.count() == 0 and cloud.staged_files() == []

        acks = cloud.send_all(sealed.frames)
        assert ack_of(acks[-1], sealed).kind is AckKind.STORED
        assert [b"".join(cloud.archive.open(r)) for r in cloud.archive.instances()] == [sealed.data]


def test_chunk_is_rejected_when_replayed_into_another_transfer(cloud: Cloud, keys: KeyPair, sealed: Sealed) -> None:
    other = seal(keys, make_data(6_000, seed=2), manifest_for(make_data(6_000, seed=2), n=2))
    cloud.send(other.frames[0])  # the other transfer's key is now cached
    for target in (other.keys.transfer_id, os.urandom(16)):
        replayed = bytearray(sealed.frames[1])
        replayed[8:24] = target
        assert cloud.send(bytes(replayed)) == []

    assert cloud.ingest.counters()["chunks_rejected_key"] == 2
    assert cloud.staged_files() == ["0.chunk"]
    assert ack_of(cloud.send_all(other.frames)[-1], other).kind is AckKind.STORED
    assert [b"".join(cloud.archive.open(r)) for r in cloud.archive.instances()] == [other.data]


def test_chunk_is_rejected_when_transfer_is_unknown_and_key_material_random(cloud: Cloud) -> None:
    for eph in (os.urandom(32), bytes(32)):  # bytes(32) is a low-order point
        frame = ChunkFrame(os.urandom(16), 0, False, eph, os.urandom(48), os.urandom(600))
        assert cloud.send(frame.encode()) == []

    assert cloud.ingest.counters()["chunks_rejected_key"] == 2
    assert cloud.staged_files() == [] and cloud.archive.count() == 0


def test_chunk_is_rejected_when_published_under_another_box_id(cloud: Cloud, sealed: Sealed) -> None:
    assert cloud.send(sealed.frames[0], box="box-2") == []

    assert cloud.ingest.counters()["chunks_rejected_auth"] == 1
    assert not (cloud.root / "staging" / "box-2").exists()
    assert cloud.archive.lookup_transfer("box-2", sealed.keys.transfer_id) is None
    assert ack_of(cloud.send_all(sealed.frames)[-1], sealed).kind is AckKind.STORED


@pytest.mark.parametrize("box", ["../escape", "", "Box-1", "a/b", "x" * 64])
def test_chunk_is_rejected_when_box_id_is_not_valid(cloud: Cloud, sealed: Sealed, box: str) -> None:
    assert cloud.send(sealed.frames[0], box=box) == []

    assert cloud.ingest.counters()["chunks_rejected_malformed"] == 1
    assert not (cloud.root / "staging").exists() and cloud.staged_files() == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=400),
    st.binary(min_size=CHUNK_HEADER_BYTES, max_size=400).map(lambda b: b"MGWC\x01\x00\x00\x00" + b)))
def test_chunk_is_rejected_without_ack_when_payload_is_arbitrary_bytes(cloud: Cloud, payload: bytes) -> None:
    before = cloud.ingest.counters()["chunks_rejected"]
    assert cloud.send(payload) == []
    assert cloud.ingest.counters()["chunks_rejected"] == before + 1


def test_transfer_is_rejected_with_integrity_when_manifest_hash_does_not_match(cloud: Cloud, keys: KeyPair) -> None:
    data = make_data(8_000, seed=3)
    wrong = seal(keys, data, manifest_for(data, sha256=hashlib.sha256(b"something else").hexdigest()))

    acks = [ack_of(out, wrong) for out in cloud.send_all(wrong.frames)]
    assert [a.kind for a in acks[:-1]] == [AckKind.PROGRESS] * (len(wrong.frames) - 1)
    assert (acks[-1].kind, acks[-1].reason) == (AckKind.REJECTED, RejectReason.INTEGRITY)
    assert cloud.archive.count() == 0
    assert cloud.staged_files() == [] and cloud.scratch_files() == []
    assert list((cloud.root / "archive").iterdir()) == [cloud.root / "archive" / ".incoming"]
    record = cloud.archive.lookup_transfer(BOX, wrong.keys.transfer_id)
    assert record is not None and (record.state, record.reason) == (TransferState.REJECTED, RejectReason.INTEGRITY)

    again = ack_of(cloud.send(wrong.frames[2])[0], wrong)
    assert (again.kind, again.reason) == (AckKind.REJECTED, RejectReason.INTEGRITY)
    assert cloud.ingest.counters()["objects_rejected"] == 1


def test_transfer_is_rejected_too_large_when_manifest_declares_more_than_the_limit(
        tmp_path: Path, keys: KeyPair, backend: Backend, sealed: Sealed) -> None:
    cloud = Cloud(tmp_path, keys, backend=backend,
                  ingest_settings=IngestSettings(max_object_bytes=len(sealed.data) - 1))
    [out] = cloud.send(sealed.frames[0])

    ack = ack_of(out, sealed)
    assert (ack.kind, ack.reason) == (AckKind.REJECTED, RejectReason.TOO_LARGE)
    assert ack_of(cloud.send(sealed.frames[-1])[0], sealed).kind is AckKind.REJECTED
    assert cloud.staged_files() == [] and cloud.archive.count() == 0


@pytest.mark.parametrize(("manifest_plaintext", "reason"), [
    (b"not json at all", RejectReason.MANIFEST),
    (b'{"v": 1}', RejectReason.MANIFEST),
    (dataclasses.replace(manifest_for(b""), codec=9).encode(), RejectReason.CODEC),
])
def test_transfer_is_rejected_when_manifest_is_unusable(
        cloud: Cloud, sealed: Sealed, manifest_plaintext: bytes, reason: RejectReason) -> None:
    [out] = cloud.send(raw_frame(sealed, 0, False, manifest_plaintext))

    ack = ack_of(out, sealed)
    assert (ack.kind, ack.reason) == (AckKind.REJECTED, reason)
    assert cloud.staged_files() == []


def test_transfer_is_rejected_with_codec_when_compressed_stream_is_corrupt(cloud: Cloud, sealed: Sealed) -> None:
    frames = [raw_frame(sealed, 0, False, sealed.manifest.encode()), raw_frame(sealed, 1, True, bytes(2000))]

    acks = [ack_of(out, sealed) for out in cloud.send_all(frames)]
    assert (acks[-1].kind, acks[-1].reason) == (AckKind.REJECTED, RejectReason.CODEC)
    assert cloud.archive.count() == 0 and cloud.scratch_files() == []


def test_same_object_is_archived_once_when_sent_as_two_transfers(cloud: Cloud, keys: KeyPair, sealed: Sealed) -> None:
    resealed = seal(keys, sealed.data, sealed.manifest)
    first = ack_of(cloud.send_all(sealed.frames)[-1], sealed)
    second = ack_of(cloud.send_all(resealed.frames)[-1], resealed)

    assert first.kind is second.kind is AckKind.STORED and first.sha256 == second.sha256
    assert cloud.archive.count() == 1
    counters = cloud.ingest.counters()
    assert (counters["objects_stored"], counters["objects_duplicate"]) == (1, 1)
    assert len(list((cloud.root / "archive").rglob("*.mgwc"))) == 1


def test_object_is_archived_once_when_two_workers_each_receive_half_the_chunks(
        tmp_path: Path, keys: KeyPair, backend: Backend, sealed: Sealed) -> None:
    workers = [Cloud(tmp_path, keys, backend=backend), Cloud(tmp_path, keys, backend=backend)]
    acks = [ack_of(out, sealed) for seq, frame in enumerate(sealed.frames) for out in workers[seq % 2].send(frame)]

    assert [a.kind for a in acks].count(AckKind.STORED) == 1 and acks[-1].kind is AckKind.STORED
    assert workers[0].archive.count() == workers[1].archive.count() == 1
    assert [b"".join(workers[1].archive.open(r)) for r in workers[1].archive.instances()] == [sealed.data]
    assert ack_of(workers[0].send(sealed.frames[-1])[0], sealed).kind is AckKind.STORED
    assert workers[0].staged_files() == []


def test_object_is_archived_once_when_two_worker_threads_race_on_all_chunks(
        tmp_path: Path, keys: KeyPair, backend: Backend, sealed: Sealed) -> None:
    workers = [Cloud(tmp_path, keys, backend=backend), Cloud(tmp_path, keys, backend=backend)]
    barrier = threading.Barrier(2)
    last: list[AckFrame] = []

    def run(worker: Cloud, seed: int) -> None:
        frames = random.Random(seed).sample(sealed.frames, len(sealed.frames))
        barrier.wait()
        last.append(ack_of(worker.send_all(frames)[-1], sealed))

    threads = [threading.Thread(target=run, args=(w, i)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert [a.kind for a in last] == [AckKind.STORED, AckKind.STORED]
    assert workers[0].archive.count() == 1
    stored = sum(w.ingest.counters()["objects_stored"] for w in workers)
    duplicate = sum(w.ingest.counters()["objects_duplicate"] for w in workers)
    assert (stored, duplicate) == (1, 0)
    assert [b"".join(workers[0].archive.open(r)) for r in workers[0].archive.instances()] == [sealed.data]


def _process_worker(root: str, private: bytes, frames: list[bytes], seed: int,
                    start: Any, results: Any) -> None:
    keys = KeyPair(private, envelope.public_key_of(private))
    worker = Cloud(Path(root), keys)
    order = random.Random(seed).sample(frames, len(frames))
    start.wait()
    outs = worker.send_all(order)
    counters = worker.ingest.counters()
    results.put((outs[-1].payload, counters["objects_stored"], counters["objects_duplicate"]))


def test_object_is_archived_once_when_two_worker_processes_race_on_all_chunks(
        tmp_path: Path, keys: KeyPair, sealed: Sealed) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(str(tmp_path), keys.private, sealed.frames, i, start, results))
             for i in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)

    assert [p.exitcode for p in procs] == [0, 0]
    assert [parse_ack(payload, BOX, sealed.ack_keyring).kind for payload, _, _ in outcomes] == [AckKind.STORED] * 2
    assert (sum(o[1] for o in outcomes), sum(o[2] for o in outcomes)) == (1, 0)
    archive = Archive(tmp_path / "archive", tmp_path / "index.db")
    assert [b"".join(archive.open(r)) for r in archive.instances()] == [sealed.data]
    archive.close()


def test_assembly_resumes_when_a_resent_chunk_arrives_after_a_failed_store(
        tmp_path: Path, keys: KeyPair, backend: Backend, sealed: Sealed) -> None:
    blocker = tmp_path / "archive" / sealed.manifest.identity.study_instance_uid
    first = Cloud(tmp_path, keys, backend=backend)
    blocker.write_bytes(b"a file where the study folder must go")
    first.send_all(sealed.frames[:-1])

    with pytest.raises(StorageError):
        first.send(sealed.frames[-1])
    assert first.archive.count() == 0 and first.scratch_files() == []
    assert len(first.staged_files()) == len(sealed.frames)
    first.archive.close()

    blocker.unlink()
    restarted = Cloud(tmp_path, keys, backend=backend)  # a new worker process after the failure
    assert ack_of(restarted.send(sealed.frames[0])[0], sealed).kind is AckKind.STORED
    assert [b"".join(restarted.archive.open(r)) for r in restarted.archive.instances()] == [sealed.data]
    assert restarted.staged_files() == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_staged_chunk_is_dropped_and_refilled_when_assembly_finds_it(
        cloud: Cloud, sealed: Sealed, damage: str) -> None:
    cloud.send_all(sealed.frames[:-1])
    cloud.backend.damage_staged(cloud.root, BOX, sealed.keys.transfer_id.hex(), 2, damage)

    [out] = cloud.send(sealed.frames[-1])
    ack = ack_of(out, sealed)
    assert (ack.kind, ack.ranges) == (AckKind.PROGRESS, ((0, 2), (3, len(sealed.frames))))
    assert cloud.archive.count() == 0 and "2.chunk" not in cloud.staged_files() and cloud.scratch_files() == []
    assert cloud.ingest.counters()["chunks_corrupt_staged"] == 1

    assert ack_of(cloud.send(sealed.frames[2])[0], sealed).kind is AckKind.STORED
    assert [b"".join(cloud.archive.open(r)) for r in cloud.archive.instances()] == [sealed.data]


def test_staged_transfer_is_dropped_when_idle_longer_than_ttl(
        tmp_path: Path, keys: KeyPair, backend: Backend, sealed: Sealed) -> None:
    now = [1_000_000.0]
    cloud = Cloud(tmp_path, keys, backend=backend, ingest_settings=IngestSettings(staging_ttl_hours=1.0),
                  clock=lambda: now[0])
    cloud.send_all(sealed.frames[:3])
    now[0] += 3599
    assert cloud.ingest.expire_staging() == 0
    assert len(cloud.staged_files()) == 3

    now[0] += 2
    assert cloud.ingest.expire_staging() == 1
    assert cloud.staged_files() == []
    assert not cloud.ingest._staging.present(BOX, sealed.keys.transfer_id.hex())
    assert cloud.archive.lookup_transfer(BOX, sealed.keys.transfer_id) is None
    assert cloud.ingest.counters()["transfers_expired"] == 1
    assert ack_of(cloud.send_all(sealed.frames)[-1], sealed).kind is AckKind.STORED


def test_progress_ack_lists_at_most_the_cap_when_staged_seqs_are_fragmented(
        cloud: Cloud, sealed: Sealed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "MAX_PROGRESS_RANGES", 2)
    acks = [ack_of(out, sealed) for out in cloud.send_all([sealed.frames[s] for s in (0, 2, 4)])]

    assert acks[-1].ranges == ((0, 1), (2, 3))


def test_transfers_complete_when_the_key_cache_evicts_their_keys(
        cloud: Cloud, keys: KeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "KEY_CACHE_ENTRIES", 1)
    objects = [seal(keys, make_data(4_000, seed=10 + n), manifest_for(make_data(4_000, seed=10 + n), n=n))
               for n in range(3)]
    longest = max(len(o.frames) for o in objects)
    for seq in range(longest):
        for o in objects:
            if seq < len(o.frames):
                cloud.send(o.frames[seq])

    assert sorted(b"".join(cloud.archive.open(r)) for r in cloud.archive.instances()) == sorted(o.data for o in objects)


def test_logs_carry_no_uids_when_objects_are_archived_or_rejected(
        cloud: Cloud, keys: KeyPair, sealed: Sealed, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data = make_data(3_000, seed=4)
    wrong = seal(keys, data, manifest_for(data, n=7, sha256="0" * 64))
    cloud.send_all(sealed.frames + wrong.frames)
    cloud.send(sealed.frames[0], box="box-2")

    uid_fields = ("sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid")
    uids = {getattr(m.identity, f) for m in (sealed.manifest, wrong.manifest) for f in uid_fields}
    ids = {r.__dict__.get("MESSAGE_ID") for r in caplog.records}
    assert {MSG.OBJECT_ARCHIVED.value, MSG.OBJECT_REJECTED.value,
            MSG.CHUNK_REJECTED.value} <= ids
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert not any(uid in text for uid in uids), text


# -- accession numbers: kept as a keyed digest beside the instance (core.accession) -----------------------
ACCESSION = "ACC-7Q2X9"  # distinctive: searched for in the database files
REAL_STUDY = "1.2.826.0.1.3680043.10.543.7001"


def real_dicom(study_uid: str, accession_number: str, n: int) -> tuple[bytes, Manifest]:
    """pydicom's real CT image as a new instance of ``study_uid`` with this Accession Number, and its manifest."""
    import io

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.AccessionNumber = study_uid, accession_number
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.543.8{n}"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = out.getvalue()
    return raw, manifest_for(raw, sop_instance_uid=str(ds.SOPInstanceUID), study_instance_uid=study_uid,
                             series_instance_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                             transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID))


def archive_real(ingest: Ingest, keys: KeyPair, box: str, study_uid: str, accession_number: str, n: int) -> None:
    """Seal a real image for ``box`` and hand every chunk to ``ingest``; it must be archived."""
    raw, manifest = real_dicom(study_uid, accession_number, n)
    sealed = seal(keys, raw, manifest, box)
    acks = [ack for frame in sealed.frames for ack in ingest.handle_chunk(box, frame)]
    assert parse_ack(acks[-1].payload, box, ACK_KEYRING).kind is AckKind.STORED


def _database_files(root: Path, backend: Backend) -> list[Path]:
    where = root if backend.cluster is None else backend.cluster.data
    names = ("index.db", "index.db-wal") if backend.cluster is None else ()
    return [p for p in where.rglob("*") if p.is_file() and (not names or p.name in names)]


def test_accession_number_is_indexed_as_its_digest_only_when_real_dicom_is_archived(
        cloud: Cloud, keys: KeyPair, backend: Backend, tmp_path: Path) -> None:
    from gateway.core import accession

    archive_real(cloud.ingest, keys, BOX, REAL_STUDY, ACCESSION, 1)
    archive_real(cloud.ingest, keys, BOX, "1.2.826.0.1.3680043.10.543.7002", "OTHER-1", 2)
    archive_real(cloud.ingest, keys, "box-2", "1.2.826.0.1.3680043.10.543.7003", ACCESSION, 3)
    key = accession.index_key(keys.private)
    index = cloud.archive.index
    assert index.studies_by_accession(BOX, accession.digest(key, BOX, ACCESSION), 10) == [REAL_STUDY]
    assert index.studies_by_accession(BOX, accession.digest(key, BOX, f" {ACCESSION}\0"), 10) == [REAL_STUDY]
    assert index.studies_by_accession(BOX, accession.digest(key, "box-2", ACCESSION), 10) == []  # bound to its box
    assert index.studies_by_accession(BOX, accession.digest(key, BOX, "ACC-UNKNOWN"), 10) == []
    assert index.studies_by_accession(BOX, accession.digest(os.urandom(32), BOX, ACCESSION), 10) == []
    rows = {r["study_instance_uid"]: r["accession_hmac"] for r in index.list_instances()}
    assert rows[REAL_STUDY] == accession.digest(key, BOX, ACCESSION) and len(rows[REAL_STUDY]) == 64
    files = _database_files(tmp_path, backend)
    assert any(REAL_STUDY.encode() in f.read_bytes() for f in files)  # the search does read the rows
    assert not [f for f in files if ACCESSION.encode() in f.read_bytes() or b"OTHER-1" in f.read_bytes()]


def test_no_accession_digest_is_kept_when_the_object_is_not_dicom(cloud: Cloud, sealed: Sealed) -> None:
    cloud.send_all(sealed.frames)
    [row] = cloud.archive.index.list_instances()
    assert row["accession_hmac"] == ""
