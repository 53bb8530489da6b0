"""The receive path's durability promise, proved against real peers: no C-STORE is answered
before the fsync of its own sealed file, of its directory and of its spool row (traced with
strace on a real listener and a real spool database), concurrent associations all succeed
byte-exact through the real EdgeService, and rows added together share one commit."""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.adapters.blobs import FilePool
from gateway.adapters.dicom_landing import StreamCheck, check_dataset
from gateway.adapters.store import GroupCommit
from gateway.core.spool import ItemState
from gateway.edge import ack_keyring, cache
from gateway.edge.service import EdgeService
from tests.edge.conftest import Box
from tests.peers import _missing, closed_port, dataset_bytes, dcmtk, dcmtk_env, real_images, send_verbatim, wait_for

MakeBox = Callable[..., Box]

_LISTENER = r"""
import sys
from pathlib import Path
from gateway.adapters.dicom_receive import StorageScp
from gateway.adapters.dicom_scp import DicomListener, VerificationScp
from gateway.adapters.store import SpoolStore
from gateway.config import DicomSettings
root = Path(sys.argv[1])
store = SpoolStore(root / "spool.db")
class Sink:  # what EdgeService.accept commits: the row and its study, one commit
    def accept(self, instance):
        return store.add_received_in_study(instance.identity, instance.calling_ae, instance.path.name, 0.0)
(root / "blobs").mkdir()
storage = StorageScp(root / "blobs", root / "quarantine", Sink(), cache_key=bytes(32))
listener = DicomListener(DicomSettings(ae_title="MGW", bind_host="127.0.0.1", port=0), [VerificationScp(), storage])
listener.start()
print(listener.port, flush=True)
sys.stdin.read()
listener.stop()
store.close()
"""
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>.*= (-?\d+)")
_FD_PATH = re.compile(r"^\d+<(.*?)>")  # strace -y: a descriptor with its path
_OPENED = re.compile(r'^(?:AT_FDCWD(?:<.*?>)?|\d+<.*?>), "(.*?)"')  # openat's path argument


def _events(trace: str, root: Path) -> list[tuple[str, str]]:
    """In trace order, ``(kind, path)``: "created" (a file made in the blob directory), "file"
    (a received file's fsync done), "dir" (the blob directory's fsync done), "row" (the spool
    WAL's), "response" (a P-DATA PDU, the C-STORE response, starts to go out)."""
    blobs = str(root / "blobs")

    def kind(path: str) -> str | None:
        if path.startswith(blobs + "/"):
            return "file"
        return "dir" if path == blobs else "row" if path == str(root / "spool.db-wal") else None

    found: list[tuple[str, str]] = []
    pending: dict[str, str] = {}  # pid -> path of an fsync strace showed unfinished
    for line in trace.splitlines():
        if resumed := _RESUMED.match(line):
            pid, call, ret = resumed.groups()
            path = pending.pop(pid, "")
            if call in ("fsync", "fdatasync") and ret == "0" and (k := kind(path)):
                found.append((k, path))
            continue
        if not (call_match := _CALL.match(line)):
            continue
        pid, call, rest = call_match.groups()
        path = m.group(1) if (m := (_OPENED if call == "openat" else _FD_PATH).match(rest)) else ""
        if call in ("fsync", "fdatasync"):
            if "<unfinished" in rest:
                pending[pid] = path
            elif rest.rstrip().endswith("= 0") and (k := kind(path)):
                found.append((k, path))
        elif call == "openat" and "O_CREAT" in rest and path.startswith(blobs + "/"):
            found.append(("created", path))
        elif call == "sendto" and path.startswith(("TCP", "socket:")) and re.search(r'>, "\\4\\0', rest):
            found.append(("response", ""))
    return found


def test_each_response_goes_out_only_after_its_file_directory_and_row_are_fsynced_when_traced(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        _missing("strace not installed (apt-get install strace)")
    images = [p for p in real_images() if dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
              == "1.2.840.10008.1.2.1"][:4]
    trace = tmp_path / "trace.txt"
    args = [strace, "-f", "-qq", "-y", "-s", "512", "-e", "trace=fsync,fdatasync,sendto,openat", "-o", str(trace),
            sys.executable, "-c", _LISTENER, str(tmp_path)]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as listener:
        try:
            assert listener.stdout is not None and listener.stdin is not None
            port = int(listener.stdout.readline() or "0")
            assert port, "the traced listener did not start"
            sent = subprocess.run([dcmtk("storescu"), "-aet", "MODALITY", "-aec", "MGW", "127.0.0.1", str(port),
                                   *map(str, images)], env=dcmtk_env(), capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0, sent.stderr
            listener.stdin.close()
            assert listener.wait(timeout=60) == 0
        finally:
            if listener.poll() is None:
                listener.kill()
    events = _events(trace.read_text(), tmp_path)
    kinds = [k for k, _ in events]
    assert kinds.count("response") == len(images) and kinds.count("file") == len(images), events
    # One association: instance k+1 is sent only after response k. So response k follows the
    # fsync of the k-th file, then a commit of the WAL (its row), and the file's directory entry
    # was fsynced after the file was made and before that response.
    created_at = {path: n for n, (k, path) in enumerate(events) if k == "created"}
    dir_syncs = [n for n, (k, _) in enumerate(events) if k == "dir"]
    files = [(n, path) for n, (k, path) in enumerate(events) if k == "file"]
    responses = [n for n, (k, _) in enumerate(events) if k == "response"]
    for (synced, path), answered in zip(files, responses, strict=True):
        assert synced < answered, events
        assert any(k == "row" for k, _ in events[synced:answered]), events
        assert any(created_at[path] < d < answered for d in dir_syncs), events


def _fresh_copies(out: Path, count: int) -> list[Path]:
    """``count`` copies of the real uncompressed images with fresh SOP Instance UIDs."""
    sources = [p for p in real_images() if not dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
               .is_compressed]
    out.mkdir(parents=True)
    made = []
    for n in range(count):
        ds = dcmread(sources[n % len(sources)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        made.append(out / f"{n:03d}.dcm")
        ds.save_as(made[-1], enforce_file_format=True)
    return made


def test_four_concurrent_associations_all_succeed_byte_exact_when_they_send_to_the_edge_at_once(
        make_box: MakeBox, tmp_path: Path) -> None:
    files = _fresh_copies(tmp_path / "study", 24)
    with closed_port() as no_broker:
        box = make_box(mqtt={"host": "127.0.0.1", "port": no_broker}, health={"metrics_bind": ""})
        ack_keyring.save(ack_keyring.keyring_path(box.paths.state_dir), box.keyring)
        box.store.close()
        edge = EdgeService(box.settings, box.paths, clock=box.clock)
        edge.start()
        try:
            statuses: dict[int, list[int | None]] = {}
            senders = [threading.Thread(target=lambda i=i: statuses.__setitem__(
                i, send_verbatim(edge.listener.port, files[i::4], box.settings.dicom.ae_title, f"MODALITY{i}")))
                for i in range(4)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(180)
            assert all(statuses.get(i) == [0x0000] * 6 for i in range(4)), statuses
            items = edge.store.in_state(*ItemState, limit=100)
            assert len(items) == len(files)
            by_uid = {i.identity.sop_instance_uid: i for i in items}
            for source in files:
                item = by_uid[str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)]
                stored = b"".join(cache.read_blob(box.paths.blob_dir / item.blob_name, box.cache_key))
                assert stored.endswith(dataset_bytes(source)), source.name  # the dataset exactly as sent
                assert item.identity.size == len(stored)
            assert {i.calling_ae for i in items} == {f"MODALITY{i}" for i in range(4)}
        finally:
            edge.stop()
        # nothing but the blobs the rows name (the empty files made ahead go with the listener)
        assert sorted(p.name for p in box.paths.blob_dir.iterdir()) == sorted(i.blob_name for i in items)


def test_rows_added_during_a_commit_share_the_next_one_and_each_caller_gets_its_own_id_when_four_threads_add(
        make_box: MakeBox) -> None:
    box = make_box()
    first_inside, others_queued = threading.Event(), threading.Event()
    batches: list[int] = []

    def commit_rows(rows: list[dict[str, object]]) -> list[int]:
        if not batches:  # the first commit holds the lock until the three others have queued
            first_inside.set()
            assert others_queued.wait(30)
        batches.append(len(rows))
        return box.store._commit_received(rows)  # the store's own transaction, on its real file

    group = GroupCommit(commit_rows)
    item = box.receive("CT_small.dcm")
    row = {**dataclasses.asdict(item.identity), "calling_ae": "MODALITY", "blob_name": "b", "received_at": 1.0,
           "updated_at": 1.0, "priority": 0, "state": ItemState.RECEIVED.value}
    ids: dict[int, int] = {}
    threads = [threading.Thread(target=lambda n=n: ids.__setitem__(n, group.commit({**row, "blob_name": f"b{n}"})))
               for n in range(4)]
    threads[0].start()
    assert first_inside.wait(30)
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(group._queue) == 3, 30, "the three followers to queue behind the commit")
    others_queued.set()
    for thread in threads:
        thread.join(30)
    assert batches == [1, 3] and group.commits == 2
    assert len(set(ids.values())) == 4
    names = {i.id: i.blob_name for i in box.store.in_state(ItemState.RECEIVED, limit=10)}
    assert all(names[ids[n]] == f"b{n}" for n in range(4))


def test_files_made_ahead_are_empty_distinct_and_removed_at_close_when_a_pool_hands_them_out(tmp_path: Path) -> None:
    pool = FilePool(tmp_path / "blobs", ".dcm.mgwc", batch=4)
    taken = [pool.take() for _ in range(6)]  # two batches
    assert len(set(taken)) == 6 and all(p.is_file() and p.stat().st_size == 0 for p in taken)
    assert len(pool.spares()) == 2 and not pool.spares() & set(taken)
    pool.close()
    assert sorted(tmp_path.joinpath("blobs").iterdir()) == sorted(taken)  # spares gone, handed-out ones kept


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=1 << 20), min_size=1, max_size=12), pick=st.integers(0, 99))
def test_walk_while_receiving_equals_the_walk_of_the_written_file_when_pieces_are_cut_anywhere(
        cuts: list[int], pick: int) -> None:
    images = real_images()
    source = images[pick % len(images)]
    raw = source.read_bytes()
    syntax = str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    check, pos = StreamCheck(), 0
    for cut in cuts:
        check(raw[pos:pos + cut])
        pos += cut
    check(raw[pos:])
    assert check.syntax == syntax
    assert check.finish() == check_dataset(io.BytesIO(raw), syntax)
