"""DicomListener against real peers: DCMTK echoscu/storescu/storescp, a pynetdicom SCU in
another process, and a sink that commits rows to a real SQLite file."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import _config

from gateway.adapters.dicom_receive import InstanceSink, ReceivedInstance, StorageScp
from gateway.adapters.dicom_scp import DicomListener, DicomService, VerificationScp
from gateway.config import DicomSettings
from gateway.core import atrest
from gateway.core.errors import SpoolFullError
from gateway.edge import cache
from gateway.logs import MSG, KeyValueFormatter
from tests.peers import (
    data_store_dir,
    dataset_bytes,
    dataset_offset,
    dcmtk,
    dcmtk_env,
    dcmtk_storescp,
    dimse_statuses,
    echo,
    part10_file,
    real_images,
    send_verbatim,
    storescu_profile_args,
    wait_for,
)

AE_TITLE = "MGW"
KEY = os.urandom(32)  # the cache key every received byte is sealed with
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def store_listener(dicom: DicomSettings, incoming: Path, sink: InstanceSink, key: bytes = KEY,
                   services: tuple[DicomService, ...] = (), provisioned: bool = False) -> DicomListener:
    """A listener with C-ECHO and C-STORE into ``incoming`` (quarantine beside it), plus ``services``."""
    storage = StorageScp(incoming, incoming.parent / "quarantine", sink, cache_key=key)
    return DicomListener(dicom, [VerificationScp(), storage, *services], provisioned=provisioned)


@dataclass
class SqliteSink:
    """Commits one row per instance to a real SQLite file; can be told to fail or to wait."""

    db: Path
    fail_with: Exception | None = None
    before_commit: Callable[[], object] = lambda: None
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        with closing(sqlite3.connect(self.db)) as con, con:
            con.execute(
                "CREATE TABLE instance (path TEXT, size INT, sha256 TEXT, sop_class TEXT, sop_instance TEXT,"
                " study TEXT, series TEXT, ts TEXT, calling_ae TEXT, peer TEXT)"
            )

    def accept(self, instance: ReceivedInstance) -> None:
        with self._lock:
            self.calls += 1
        self.before_commit()
        if self.fail_with is not None:
            raise self.fail_with
        i = instance.identity
        with closing(sqlite3.connect(self.db, timeout=10)) as con, con:
            con.execute(
                "INSERT INTO instance VALUES (?,?,?,?,?,?,?,?,?,?)",
                (str(instance.path), i.size, i.sha256, i.sop_class_uid, i.sop_instance_uid, i.study_instance_uid,
                 i.series_instance_uid, i.transfer_syntax_uid, instance.calling_ae, instance.peer_address),
            )

    def rows(self) -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.db)) as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM instance")]


@dataclass
class Gateway:
    listener: DicomListener
    sink: SqliteSink
    incoming: Path
    quarantine: Path

    def leftovers(self) -> list[Path]:
        """Files in ``incoming`` but the empty ones the listener made ahead for datasets to come."""
        storage = next(s for s in self.listener._services if isinstance(s, StorageScp))
        spares = storage.spares()
        assert all(p.stat().st_size == 0 for p in spares)
        return sorted(p for p in self.incoming.iterdir() if p not in spares)

    def storescu(self, files: list[Path], *extra: str, calling_ae: str = "MODALITY",
                 called_ae: str = AE_TITLE) -> subprocess.CompletedProcess[str]:
        args = [dcmtk("storescu"), *extra, "-aet", calling_ae, "-aec", called_ae,
                "127.0.0.1", str(self.listener.port), *map(str, files)]
        return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[DicomListener] = []

    def start(incoming: Path | None = None, **settings: Any) -> Gateway:
        incoming = incoming or tmp_path / "spool" / "incoming"
        sink = SqliteSink(tmp_path / f"index-{len(started)}.sqlite")
        dicom = DicomSettings(ae_title=AE_TITLE, bind_host="127.0.0.1", port=0, **settings)
        listener = store_listener(dicom, incoming, sink)
        listener.start()
        started.append(listener)
        return Gateway(listener, sink, incoming, incoming.parent / "quarantine")

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway()


def _plain(path: Path) -> bytes:
    """The original bytes of a received (sealed) file, opened in memory."""
    assert path.name.endswith(atrest.SUFFIX)
    return b"".join(cache.read_blob(path, KEY))


def _dataset(path: Path) -> bytes:
    raw = _plain(path)
    return raw[dataset_offset(raw):]


def test_echo_succeeds_when_echoscu_calls_our_ae_title(gateway: Gateway) -> None:
    out = echo(gateway.listener.port, AE_TITLE)
    assert out.returncode == 0, out.stderr
    assert gateway.listener.port > 0


def test_stored_bytes_equal_dcmtk_bit_preserving_copy_when_storescu_sends_real_images(
    gateway: Gateway, tmp_path: Path
) -> None:
    files = real_images()
    profile = storescu_profile_args(files, tmp_path / "storescu.cfg")
    with dcmtk_storescp(tmp_path / "reference") as ref_port:
        ref = subprocess.run(
            [dcmtk("storescu"), *profile, "-aet", "MODALITY", "-aec", "REFERENCE", "127.0.0.1", str(ref_port),
             *map(str, files)], env=dcmtk_env(), capture_output=True, text=True, timeout=60)
        assert ref.returncode == 0, ref.stderr
    out = gateway.storescu(files, *profile)
    assert out.returncode == 0, out.stderr

    # A modality may send one instance in two encodings: (SOP Instance UID, transfer syntax) is the key.
    rows = {(r["sop_instance"], r["ts"]): r for r in gateway.sink.rows()}
    assert len(rows) == len(files)
    reference = {}
    for path in (tmp_path / "reference").iterdir():
        meta = dcmread(path, stop_before_pixels=True).file_meta
        reference[(meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID)] = path
    assert len(reference) == len(files)
    for source in files:
        src = dcmread(source, stop_before_pixels=True)
        key = (src.SOPInstanceUID, src.file_meta.TransferSyntaxUID)
        row = rows[key]  # the transfer syntax is kept: no transcoding on the way
        stored = Path(row["path"])
        assert (row["sop_class"], row["study"], row["series"]) == (
            src.SOPClassUID, src.StudyInstanceUID, src.SeriesInstanceUID), source.name
        assert (row["calling_ae"], row["peer"]) == ("MODALITY", "127.0.0.1")
        assert _dataset(stored) == dataset_bytes(reference[key]), source.name
        assert row["size"] == len(_plain(stored))
        assert row["sha256"] == hashlib.sha256(_plain(stored)).hexdigest()
        assert dcmread(io.BytesIO(_plain(stored)), stop_before_pixels=True).file_meta.TransferSyntaxUID == row["ts"]


def test_stored_dataset_is_the_source_bytes_when_sender_streams_files_verbatim(gateway: Gateway) -> None:
    files = real_images()
    statuses = send_verbatim(gateway.listener.port, files, AE_TITLE)
    assert statuses == [0x0000] * len(files)
    rows = {(r["sop_instance"], r["ts"]): r for r in gateway.sink.rows()}
    for source in files:
        meta = dcmread(source, stop_before_pixels=True).file_meta
        row = rows[(meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID)]
        assert _dataset(Path(row["path"])) == dataset_bytes(source), source.name


def test_bytes_are_kept_when_chunked_receive_is_switched_off_by_someone_else(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)  # a library switch, not a fake
    source = real_images()[4]
    assert send_verbatim(gateway.listener.port, [source], AE_TITLE) == [0x0000]
    (row,) = gateway.sink.rows()
    assert _dataset(Path(row["path"])) == dataset_bytes(source)
    assert row["sha256"] == hashlib.sha256(_plain(Path(row["path"]))).hexdigest()
    assert dataset_bytes(source)[-4096:] not in Path(row["path"]).read_bytes()  # sealed from memory too


def test_file_lands_sealed_when_incoming_dir_is_on_another_filesystem(
    start_gateway: Callable[..., Gateway],
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("no second filesystem next to the temporary directory")
    root = shm / f"mgw-test-{uuid.uuid4().hex}"
    try:
        gw = start_gateway(incoming=root / "incoming")
        source = real_images()[0]
        assert send_verbatim(gw.listener.port, [source], AE_TITLE) == [0x0000]
        (row,) = gw.sink.rows()
        stored = Path(row["path"])
        assert stored.parent == root / "incoming"
        assert _dataset(stored) == dataset_bytes(source)
        assert row["sha256"] == hashlib.sha256(_plain(stored)).hexdigest()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_uncompressed_syntax_is_chosen_when_modality_also_offers_lossy_jpeg(gateway: Gateway) -> None:
    source = next(p for p in real_images() if p.name == "SC_rgb.dcm")  # 8-bit: JPEG baseline possible
    out = gateway.storescu([source], "-xy", "+C")  # one context per class: JPEG lossy + uncompressed
    assert out.returncode == 0, out.stderr
    (row,) = gateway.sink.rows()
    assert row["ts"] == EXPLICIT_LE  # never push the modality into lossy compression


def test_association_is_rejected_when_called_ae_title_is_wrong(gateway: Gateway) -> None:
    echo_out = echo(gateway.listener.port, "NOT-MGW")
    store_out = gateway.storescu(real_images()[:1], called_ae="NOT-MGW")
    assert echo_out.returncode != 0 and store_out.returncode != 0
    assert "Called AE Title Not Recognized" in echo_out.stderr
    assert "Rejected Permanent" in store_out.stderr
    assert gateway.sink.rows() == [] and gateway.sink.calls == 0
    assert gateway.leftovers() == []


def test_association_is_rejected_when_calling_ae_title_is_not_allowed(
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = start_gateway(allowed_calling_aets=("MODALITY",))
    refused = gw.storescu(real_images()[:1], calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert gw.sink.rows() == []
    assert echo(gw.listener.port, AE_TITLE, calling_ae="MODALITY").returncode == 0


def test_store_answers_out_of_resources_when_sink_reports_spool_full(gateway: Gateway) -> None:
    gateway.sink.fail_with = SpoolFullError("above high-water mark")
    out = gateway.storescu(real_images()[:1], "-d")
    assert out.returncode != 0
    assert 0xA700 in dimse_statuses(out.stderr)
    assert gateway.leftovers() == []  # nothing left behind
    gateway.sink.fail_with = None
    again = gateway.storescu(real_images()[:1])
    assert again.returncode == 0, again.stderr
    assert len(gateway.sink.rows()) == 1


def test_store_answers_c211_and_logs_when_sink_raises_unexpectedly(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.sink.fail_with = RuntimeError("database went away")
    out = gateway.storescu(real_images()[:1], "-d")
    assert 0xC211 in dimse_statuses(out.stderr)
    assert gateway.leftovers() == []
    failed = [r for r in caplog.records if getattr(r, "MESSAGE_ID", None) == MSG.STORE_FAILED.value]
    assert failed and failed[0].exc_info is not None
    gateway.sink.fail_with = None
    assert gateway.storescu(real_images()[:1]).returncode == 0
    assert len(gateway.sink.rows()) == 1


def _truncated_real_file(tmp_path: Path) -> Path:
    return data_store_dir() / "emri_small_jpeg_2k_lossless_too_short.dcm"  # a real, cut-short file


def _garbage_file(tmp_path: Path) -> Path:
    noise = hashlib.sha256(b"seed").digest() * 64  # 2 KiB that are not a dataset
    return part10_file(tmp_path / "garbage.dcm", CT_IMAGE_STORAGE, "1.2.3.4.5.6.7", EXPLICIT_LE, noise)


@pytest.mark.parametrize("make_file", [_truncated_real_file, _garbage_file], ids=["truncated", "garbage"])
def test_dataset_is_quarantined_with_failure_status_when_it_cannot_be_parsed(
    gateway: Gateway, tmp_path: Path, make_file: Callable[[Path], Path], caplog: pytest.LogCaptureFixture
) -> None:
    bad = make_file(tmp_path)
    statuses = send_verbatim(gateway.listener.port, [bad], AE_TITLE)
    assert statuses == [0xC210]
    (kept,) = gateway.quarantine.iterdir()
    assert _dataset(kept) == dataset_bytes(bad)  # kept sealed, opened in memory
    assert dataset_bytes(bad)[-1024:] not in kept.read_bytes()
    assert gateway.leftovers() == [] and gateway.sink.calls == 0
    assert any(getattr(r, "MESSAGE_ID", None) == MSG.STORE_FAILED.value for r in caplog.records)
    assert send_verbatim(gateway.listener.port, real_images()[:1], AE_TITLE) == [0x0000]  # still serving


def _without_instance_uid(tmp_path: Path) -> Path:
    ds = dcmread(real_images()[0])
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return part10_file(tmp_path / "no-uid.dcm", ds.SOPClassUID, uid, ds.file_meta.TransferSyntaxUID,
                       out.getvalue()[dataset_offset(out.getvalue()):])


def _other_instance_uid(tmp_path: Path) -> Path:  # the command names one instance, the dataset is another
    raw, ds = real_images()[0].read_bytes(), dcmread(real_images()[0], stop_before_pixels=True)
    return part10_file(tmp_path / "other-uid.dcm", ds.SOPClassUID, "1.2.3.4.5.6.7.8",
                       ds.file_meta.TransferSyntaxUID, raw[dataset_offset(raw):])


def _other_sop_class(tmp_path: Path) -> Path:  # a CT dataset sent as an MR image
    raw, ds = real_images()[0].read_bytes(), dcmread(real_images()[0], stop_before_pixels=True)
    assert ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.4"
    return part10_file(tmp_path / "other-class.dcm", "1.2.840.10008.5.1.4.1.1.4", ds.SOPInstanceUID,
                       ds.file_meta.TransferSyntaxUID, raw[dataset_offset(raw):])


@pytest.mark.parametrize(("make_file", "status"), [
    (_without_instance_uid, 0x0117), (_other_instance_uid, 0x0117), (_other_sop_class, 0xA900)],
    ids=["no-sop-instance-uid", "other-sop-instance-uid", "other-sop-class"])
def test_dataset_is_refused_and_kept_when_it_is_not_the_instance_its_command_names(
    gateway: Gateway, tmp_path: Path, make_file: Callable[[Path], Path], status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = make_file(tmp_path)
    assert send_verbatim(gateway.listener.port, [bad], AE_TITLE) == [status]
    (kept,) = gateway.quarantine.iterdir()
    assert _dataset(kept) == dataset_bytes(bad)  # refused, never lost: kept sealed for the engineer
    assert gateway.sink.calls == 0 and gateway.leftovers() == []
    refusal = [r for r in caplog.records if getattr(r, "MESSAGE_ID", None) == MSG.STORE_FAILED.value]
    assert refusal and "(0008,001" in str(getattr(refusal[-1], "REASON", ""))
    assert send_verbatim(gateway.listener.port, real_images()[:1], AE_TITLE) == [0x0000]  # still serving


def test_both_succeed_when_two_storescu_associations_run_at_once(gateway: Gateway) -> None:
    both_inside = threading.Barrier(2, timeout=15)  # passes only if two stores are in the sink together
    gateway.sink.before_commit = both_inside.wait
    files = real_images()
    procs = [
        subprocess.Popen([dcmtk("storescu"), "-aet", f"MODALITY{i}", "-aec", AE_TITLE, "127.0.0.1",
                          str(gateway.listener.port), str(files[i])],
                         env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sorted(r["calling_ae"] for r in gateway.sink.rows()) == ["MODALITY0", "MODALITY1"]


def test_association_is_refused_when_max_associations_are_busy(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(max_associations=1)
    release = threading.Event()
    gw.sink.before_commit = lambda: release.wait(15)
    first = subprocess.Popen([dcmtk("storescu"), "-aet", "MODALITY", "-aec", AE_TITLE, "127.0.0.1",
                              str(gw.listener.port), str(real_images()[0])],
                             env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: gw.sink.calls == 1, 60, "the first store to reach the sink")
        assert first.poll() is None  # no answer yet: success comes only after the sink returns
        assert gw.listener.active_associations() == 1
        second = echo(gw.listener.port, AE_TITLE)
        assert second.returncode != 0 and "Local Limit Exceeded" in second.stderr
    finally:
        release.set()
        first.communicate(timeout=60)
    assert first.returncode == 0
    wait_for(lambda: gw.listener.active_associations() == 0, 60, "the association to end")


def test_log_lines_carry_message_ids_and_no_patient_data_when_images_are_stored(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    files = real_images()
    assert gateway.storescu(files, *storescu_profile_args(files, gateway.incoming.parent / "p.cfg")).returncode == 0
    stored = [r for r in caplog.records if getattr(r, "MESSAGE_ID", None) == MSG.INSTANCE_STORED.value]
    assert len(stored) == len(files)
    assert any(getattr(r, "MESSAGE_ID", None) == MSG.ASSOCIATION_ACCEPTED.value for r in caplog.records)
    assert all(r.levelno >= logging.WARNING for r in caplog.records if r.name.startswith("pynetdicom"))
    text = "\n".join(KeyValueFormatter().format(r) for r in caplog.records)
    assert "CT Image Storage" in text and "BYTES=" in text
    for source in files:
        ds = dcmread(source, stop_before_pixels=True)
        for secret in (str(ds.get("PatientName", "")), str(ds.get("PatientID", "")), ds.SOPInstanceUID,
                       ds.StudyInstanceUID):
            if len(secret) > 3:
                assert secret not in text, f"{source.name}: PHI or UID in the log"


def test_stop_closes_the_port_and_is_idempotent_when_called_twice(gateway: Gateway) -> None:
    port = gateway.listener.port
    assert echo(port, AE_TITLE).returncode == 0
    gateway.listener.stop()
    gateway.listener.stop()
    assert echo(port, AE_TITLE).returncode != 0
    assert gateway.listener.active_associations() == 0


_ABORT_MID_STORE = r"""
import io, sys
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
port, called = int(sys.argv[1]), sys.argv[2]
ae = AE(ae_title="MODALITY")
ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
assoc = ae.associate("127.0.0.1", port, ae_title=called)
assert assoc.is_established
req = C_STORE()
req.MessageID, req.Priority = 1, 2
req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
req.DataSet = io.BytesIO(b"\x00" * 200_000)
msg = C_STORE_RQ()
msg.primitive_to_message(req)
fragments = list(msg.encode_msg(assoc.accepted_contexts[0].context_id, 16384))
for fragment in fragments[:-1]:  # everything but the last fragment of the dataset
    assoc.dul.send_pdu(fragment)
print("SENT", flush=True)
sys.stdin.readline()
assoc.abort()
"""


def test_partial_dataset_file_is_removed_when_sender_aborts_mid_store(gateway: Gateway) -> None:
    def partial_files() -> set[Path]:  # the chunked receive writes a sealed file in incoming_dir
        return {p for p in gateway.leftovers() if p.stat().st_size}

    started = time.time()
    before = partial_files()
    with subprocess.Popen([sys.executable, "-c", _ABORT_MID_STORE, str(gateway.listener.port), AE_TITLE],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as sender:
        try:
            assert sender.stdout is not None and sender.stdin is not None
            assert sender.stdout.readline().strip() == "SENT"
            partial = wait_for(lambda: partial_files() - before, 60, "pynetdicom to spool the partial dataset")
            sender.stdin.write("abort\n")
            sender.stdin.flush()
            assert sender.wait(timeout=30) == 0
        finally:
            if sender.poll() is None:
                sender.kill()
    wait_for(lambda: not any(p.exists() for p in partial), 60, "the partial dataset file to be removed")
    assert gateway.sink.calls == 0 and gateway.leftovers() == []
    assert not {p for p in Path(tempfile.gettempdir()).glob("tmp*.dcm") if p.stat().st_mtime >= started - 1}
    assert echo(gateway.listener.port, AE_TITLE).returncode == 0


def test_no_plaintext_is_on_disk_when_the_sink_commits_a_received_image(gateway: Gateway) -> None:
    source = real_images()[0]  # a real CT
    ds = dcmread(source)
    secrets = [s for s in (bytes(ds.PixelData[1000:1064]), str(ds.get("PatientName", "")).encode(),
                           str(ds.get("PatientID", "")).encode()) if len(s) > 3]
    started, seen = time.time(), []

    def scan() -> None:  # inside the sink: the file is complete, not yet acknowledged
        tmp = [p for p in Path(tempfile.gettempdir()).iterdir() if p.is_file() and p.stat().st_mtime >= started - 1]
        for path in [*gateway.incoming.iterdir(), *tmp]:
            seen.append(path)
            raw = path.read_bytes()
            assert not any(secret in raw for secret in secrets), path

    gateway.sink.before_commit = scan
    assert send_verbatim(gateway.listener.port, [source], AE_TITLE) == [0x0000]
    assert any(p.parent == gateway.incoming for p in seen)  # the scan saw the received file
    (row,) = gateway.sink.rows()
    assert all(secret in _plain(Path(row["path"])) for secret in secrets)  # the secrets were in what we scanned
