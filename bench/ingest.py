"""C-STORE ingest on loopback: DCMTK storescu -> DCMTK storescp beside storescu -> our edge.

    .venv/bin/python bench/ingest.py [--mb 300] [--image 693_UNCI.dcm] [--associations 1] [--keep DIR]

Builds a study of real images from pydicom-data with fresh UIDs (one study, one series, a new
SOP Instance UID per instance), then times DCMTK storescu (TCP_NODELAY=1, 128 KiB PDUs) sending
it on one association (or ``--associations N``: N storescu at once, each a share of the
instances, timed from the first start to the last end) to (a) DCMTK storescp writing every
file to disk (bit-preserving, no fsync; one association at a time, it does not fork), (b) a
bare pynetdicom SCP that streams each dataset to a temporary file and deletes it (the floor of
the library we build on), the same with an fsync of each file before its answer (the floor of
any durable receiver on this disk: it shows what the disk costs), and (c) `mgw edge run` with
full durability (fsync of file and index before 0x0000) and encryption at rest, its packer
running alongside as in production. Checks that every instance is in the edge's spool index.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.peers: the DCMTK helpers

from gateway.loopback import EDGE_AE, LoopbackDeployment  # noqa: E402
from tests.peers import data_store_dir, dcmtk, dcmtk_env, dcmtk_storescp  # noqa: E402

PDU_BYTES = 131072  # the largest DCMTK negotiates
BARE_SCP = r"""
import os, sys
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
_config.STORE_RECV_CHUNKED_DATASET = True
ae = AE(ae_title="BARE")
ae.maximum_pdu_size = 0
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
def accepted(event):
    event.assoc.dul._run_loop_delay = 0.0002  # as the edge sets it
FSYNC = sys.argv[1:] == ["fsync"]
def store(event):
    if FSYNC:  # the durable floor: the one fsync any durable receiver needs, before the answer
        fd = os.open(event.dataset_path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    os.unlink(event.dataset_path)  # the pynetdicom floor: stream to a temp file, keep nothing
    return 0
server = ae.start_server(("127.0.0.1", 0), block=False,  # any free port, told on stdout
                         evt_handlers=[(evt.EVT_C_STORE, store), (evt.EVT_ACCEPTED, accepted)])
print(server.server_address[1], flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
server.shutdown()
"""


def make_study(out: Path, image: str, target_mb: float, shares: int = 1) -> tuple[int, int]:
    """Copies of ``image`` with fresh UIDs until ``target_mb``, dealt round-robin into ``shares``
    directories (``out/0``, ``out/1``, ...); returns (instances, bytes)."""
    for n in range(shares):
        (out / str(n)).mkdir(parents=True, exist_ok=True)
    ds = dcmread(data_store_dir() / image)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    count, total = 0, 0
    while total < target_mb * 1e6:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = count + 1
        path = out / str(count % shares) / f"{count:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
        count += 1
    return count, total


def storescu(port: int, called: str, study: Path) -> float:
    """One storescu per share directory of ``study``, all at once; seconds until the last ends."""
    shares = sorted(p for p in study.iterdir() if p.is_dir())
    t0 = time.perf_counter()
    procs = [subprocess.Popen([dcmtk("storescu"), "-aet", f"MODALITY{n}", "-aec", called, "--max-pdu", str(PDU_BYTES),
                               "+sd", "127.0.0.1", str(port), str(share)], env=dcmtk_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n, share in enumerate(shares)]
    outcomes = [(proc, proc.communicate(timeout=3600)) for proc in procs]
    elapsed = time.perf_counter() - t0
    for proc, (_, err) in outcomes:
        if proc.returncode != 0:
            raise SystemExit(f"storescu failed ({proc.returncode}): {err[-2000:]}")
    return elapsed


def bare_scp(study: Path, fsync: bool) -> float:
    """Seconds storescu takes to send ``study`` to the bare pynetdicom SCP (in its own process)."""
    bare = subprocess.Popen([sys.executable, "-c", BARE_SCP, *(["fsync"] if fsync else [])], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert bare.stdout is not None and bare.stdin is not None
        port = int(bare.stdout.readline() or "0")  # it listens once it says its port
        if not port:
            raise SystemExit(f"the bare SCP exited with {bare.wait(10)}")
        return storescu(port, "BARE", study)
    finally:
        if bare.stdin is not None:
            bare.stdin.close()
        try:
            bare.wait(10)
        except subprocess.TimeoutExpired:
            bare.kill()
            bare.wait()


def edge_items(edge_dir: Path) -> int:
    db = next(edge_dir.rglob("spool.db"))
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=300.0, help="study size to build")
    parser.add_argument("--image", default="693_UNCI.dcm", help="pydicom-data image to copy (CT by default)")
    parser.add_argument("--associations", type=int, default=1, help="storescu processes sending at once")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    parser.add_argument("--profile", type=Path, help="py-spy the edge while it receives; collapsed stacks here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mgw-bench-ingest-"))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    count, total = make_study(root / "study", args.image, args.mb, args.associations)
    print(f"study: {count} x {args.image} with fresh UIDs, {total / 1e6:.1f} MB; storescu TCP_NODELAY=1, "
          f"--max-pdu {PDU_BYTES}, {args.associations} association(s) at once")
    try:
        with dcmtk_storescp(root / "storescp") as port:
            t_ref = storescu(port, "REFERENCE", root / "study")
        received = sum(1 for p in (root / "storescp").iterdir() if p.is_file())
        print(f"{'DCMTK storescp (disk, no fsync)':<40} {total / t_ref / 1e6:>7.1f} MB/s  {t_ref:6.1f} s  "
              f"{received} files")
        t_bare = bare_scp(root / "study", fsync=False)
        print(f"{'bare pynetdicom SCP (chunked, discards)':<40} {total / t_bare / 1e6:>7.1f} MB/s  {t_bare:6.1f} s")
        t_durable = bare_scp(root / "study", fsync=True)
        print(f"{'bare pynetdicom SCP + fsync of each file':<40} {total / t_durable / 1e6:>7.1f} MB/s  "
              f"{t_durable:6.1f} s")
        deploy = LoopbackDeployment(root / "edge-deploy", edge_overrides={"dicom": {"max_pdu_bytes": 0,
                                    "max_associations": max(8, args.associations)}})
        deploy.broker.start()
        deploy.write_configs()
        deploy.start_edge()
        spy = None
        if args.profile is not None:
            assert deploy.edge is not None
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                    "record", "-r", "250", "--format", "raw", "-o", str(args.profile),
                                    "-p", str(deploy.edge.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        try:
            t_edge = storescu(deploy.dicom_port, EDGE_AE, root / "study")
            items = edge_items(deploy.edge_dir)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            deploy.stop()
        print(f"{'mgw edge (fsync file + index)':<40} {total / t_edge / 1e6:>7.1f} MB/s  {t_edge:6.1f} s  "
              f"{items} items committed")
        if items != count:
            print(f"MISMATCH: {count} sent, {items} in the spool index")
            return 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
