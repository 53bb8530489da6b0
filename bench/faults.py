"""Randomized fault injection, ending every trial with a reconciliation.

    .venv/bin/python bench/faults.py [--trials 100] [--max-minutes 60] [--seed 1]

Each trial starts a fresh loopback deployment (mosquitto, `mgw cloud run`, `mgw edge run` as
real processes; the edge reaches the broker through a LinkProxy), makes 3-8 instances with
fresh SOP Instance UIDs from the real images of pydicom-data, and sends them with DCMTK
storescu, one association per instance, as a modality: anything not answered 0x0000 is sent
again later. Meanwhile 1-4 faults hit at random moments: SIGKILL of the edge (while receiving,
packing, sending or waiting for acks, wherever it lands), SIGKILL of the cloud ingest, a broker
kill and restart, a link cut, a slow link that drops connections mid-stream, and (as root, one
trial in five) a full disk: the edge's state directory is a 64 MiB tmpfs filled past its
high-water mark. Then everything heals and the trial reconciles:

- lost: told 0x0000 but not in the archive (after the edge settles)
- corrupt: an archived file whose SHA-256 differs from the edge's record of what it received
- duplicated: more than one archived object for one SOP Instance, or orphan archive files
  (scratch files of a write cut short under archive/.incoming are counted apart, as
  scratch_leftovers: the cloud does not sweep them yet)
- false successes: told 0x0000 but the edge has no record of the instance

It prints one line per trial on stderr and one line of totals on stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.adapters.dicom_scu import dcmtk_env, find_dcmtk, storescu_profile
from gateway.cloud.archive.store import KEY_FILE, SCRATCH_DIR, original_sha256
from gateway.core.errors import LocalError
from gateway.link_proxy import LinkProxy
from gateway.loopback import EDGE_AE, LoopbackDeployment

SOURCES = ("693_UNCI.dcm", "MR2_UNCI.dcm", "US1_UNCI.dcm", "693_J2KR.dcm", "JPEG-LL.dcm", "SC_rgb.dcm",
           "OBXXXX1A_rle.dcm", "emri_small_jpeg_ls_lossless.dcm", "gdcm-US-ALOKA-16.dcm", "RG1_UNCI.dcm")
FAULTS = ("kill_edge", "kill_cloud", "broker_restart", "link_cut", "slow_lossy_link")
SETTLE_S = 180.0


@dataclass
class Tally:
    trials: int = 0
    instances: int = 0
    lost: int = 0
    corrupt: int = 0
    duplicated: int = 0
    false_successes: int = 0
    resends: int = 0
    scratch_leftovers: int = 0
    aborted: int = 0  # trials the harness could not run (e.g. a port taken), not counted as trials
    faults: Counter[str] = field(default_factory=Counter)

    def line(self, seconds: float) -> str:
        faults = ",".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        return (f"trials={self.trials} instances={self.instances} lost={self.lost} corrupt={self.corrupt} "
                f"duplicated={self.duplicated} false_successes={self.false_successes} "
                f"(aborted={self.aborted} resends={self.resends} scratch_leftovers={self.scratch_leftovers} "
                f"faults: {faults}; {seconds:.0f} s)")


def source_dir() -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data"


def make_instances(rng: random.Random, out: Path) -> list[Path]:
    """3-8 copies of real images, each with a fresh SOP Instance UID (unique bytes per trial)."""
    out.mkdir(parents=True, exist_ok=True)
    picks = rng.sample(SOURCES[:-1], rng.randint(3, 7)) + (["RG1_UNCI.dcm"] if rng.random() < 0.3 else [])
    files = []
    for n, name in enumerate(picks):
        ds = dcmread(source_dir() / name)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = out / f"{n}-{name}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def store_one(storescu: str, port: int, path: Path) -> int | None:
    """One association, one C-STORE proposing the file's own SOP class and transfer syntax."""
    profile = storescu_profile([path], path.with_suffix(".cfg"))
    args = [storescu, "-d", "-to", "20", "-ta", "20", "-td", "20", "-aet", "MODALITY", "-aec", EDGE_AE,
            *profile, "127.0.0.1", str(port), str(path)]
    try:
        out = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if "DIMSE Status" in line and "0x" in line:
            return int(line.split("0x")[1][:4], 16)
    return None


class Modality(threading.Thread):
    """Sends each instance until it is answered 0x0000; records what it was told.

    ``port`` is asked before each send: a restarted edge binds any free port and reports it."""

    def __init__(self, storescu: str, port: Callable[[], int], files: list[Path], deadline: float) -> None:
        super().__init__(daemon=True)
        self.storescu, self.port, self.files, self.deadline = storescu, port, files, deadline
        self.told_success: set[Path] = set()
        self.attempts = 0

    def run(self) -> None:
        pending = list(self.files)
        while pending and time.monotonic() < self.deadline:
            path = pending.pop(0)
            self.attempts += 1
            if store_one(self.storescu, self.port(), path) == 0x0000:
                self.told_success.add(path)
            else:
                pending.append(path)
                time.sleep(0.5)  # a modality's retry interval


class SmallDisk:
    """A tmpfs as the edge's state directory (root only), and a filler to push it past high water."""

    SIZE_MIB, HIGH, LOW = 64, 60.0, 40.0

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.SIZE_MIB}m,mode=0700", "tmpfs", str(path)],
                       check=True, capture_output=True)
        self.filler = path / "filler.bin"

    def fill(self) -> None:
        st = os.statvfs(self.path)
        want = int(st.f_blocks * st.f_frsize * (self.HIGH + 5) / 100) - (st.f_blocks - st.f_bfree) * st.f_frsize
        if want > 0:
            with open(self.filler, "wb") as fh:
                fh.write(b"\0" * min(want, st.f_bavail * st.f_frsize - (1 << 20)))

    def drain(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def inject(kind: str, rng: random.Random, d: LoopbackDeployment, proxy: LinkProxy, disk: SmallDisk | None) -> None:
    pause = rng.uniform(0.2, 2.5)
    if kind == "kill_edge":
        d.kill_edge()
        time.sleep(pause)
        d.start_edge()
    elif kind == "kill_cloud":
        d.kill_cloud()
        time.sleep(pause)
        d.start_cloud()
    elif kind == "broker_restart":
        d.broker.kill()
        time.sleep(pause)
        d.broker.start()
    elif kind == "link_cut":
        proxy.cut()
        time.sleep(pause)
        proxy.restore()
    elif kind == "slow_lossy_link":
        proxy.rate_bps = rng.choice([50_000, 200_000, 1_000_000])
        proxy.drop_after_bytes = rng.choice([0, 100_000, 400_000])
        time.sleep(pause * 2)
        proxy.rate_bps = proxy.drop_after_bytes = 0
    elif kind == "full_disk" and disk is not None:
        disk.fill()
        time.sleep(pause * 2)
        disk.drain()


def edge_items(d: LoopbackDeployment) -> list[tuple[str, str, str]]:
    db = d.edge_dir / "spool.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return list(conn.execute("SELECT sop_instance_uid, sha256, state FROM items"))


def archive_rows(d: LoopbackDeployment) -> list[tuple[str, str, str]]:
    db = d.cloud_dir / "archive.db"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return list(conn.execute("SELECT sop_instance_uid, sha256, path FROM instances"))


def settled(d: LoopbackDeployment, uids: set[str]) -> bool:
    done = {u for u, _, state in edge_items(d) if state in ("acknowledged", "purged")}
    return uids <= done


def reconcile(d: LoopbackDeployment, m: Modality) -> dict[str, int]:
    told = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in m.told_success}
    items = edge_items(d)
    rows = archive_rows(d)
    edge_shas: dict[str, set[str]] = {}
    for uid, sha, _ in items:
        edge_shas.setdefault(uid, set()).add(sha)
    archived: dict[str, list[tuple[str, str]]] = {}
    for uid, sha, rel in rows:
        archived.setdefault(uid, []).append((sha, rel))
    out = Counter[str]()
    for uid in told:
        if uid not in edge_shas:
            out["false_successes"] += 1
        if uid not in archived:
            out["lost"] += 1
    for uid, copies in archived.items():
        out["duplicated"] += len(copies) - 1
        for sha, rel in copies:
            path = d.cloud_dir / "archive" / rel
            actual = original_sha256(path, d.cloud_dir / KEY_FILE)  # sealed at rest: opened in memory
            if actual != sha or sha not in edge_shas.get(uid, set()):
                out["corrupt"] += 1
    known = {rel for _, _, rel in rows}
    archive_dir = d.cloud_dir / "archive"
    if archive_dir.is_dir():
        for p in archive_dir.rglob("*"):
            if not p.is_file() or str(p.relative_to(archive_dir)) in known:
                continue
            # a scratch file under .incoming is a write cut short by SIGKILL, not an archived object
            out["scratch_leftovers" if SCRATCH_DIR in p.relative_to(archive_dir).parts else "duplicated"] += 1
    return {k: out[k] for k in ("lost", "corrupt", "duplicated", "false_successes", "scratch_leftovers")}


def trial(n: int, rng: random.Random, workdir: Path, storescu: str, tally: Tally) -> dict[str, int]:
    root = workdir / f"trial-{n:04d}"
    proxy = LinkProxy()
    use_disk = can_mount() and rng.random() < 0.2
    overrides: dict[str, dict[str, object]] = {
        "uplink": {"max_frame_bytes": rng.choice([4096, 16384, 131072]), "window_chunks": rng.choice([4, 16, 64]),
                   "ack_timeout_s": 2.0},
        "mqtt": {"port": proxy.port},
    }
    if use_disk:
        overrides["spool"] = {"high_water_percent": SmallDisk.HIGH, "low_water_percent": SmallDisk.LOW}
    persistence = rng.random() < 0.5
    d = LoopbackDeployment(root / "run", edge_overrides=overrides, broker_persistence=persistence)
    disk = SmallDisk(d.edge_dir) if use_disk else None
    try:
        d.start()
    except LocalError:
        d.stop()
        if disk is not None:
            disk.close()
        proxy.close()
        raise
    try:
        proxy.target = ("127.0.0.1", d.broker.port)
        files = make_instances(rng, root / "modality")
        modality = Modality(storescu, lambda: d.dicom_port, files, time.monotonic() + 240)
        modality.start()
        kinds = list(FAULTS) + (["full_disk"] * 2 if disk else [])
        for _ in range(rng.randint(1, 4)):
            time.sleep(rng.uniform(0.0, 2.0))
            kind = rng.choice(kinds)
            tally.faults[kind] += 1
            inject(kind, rng, d, proxy, disk)
        modality.join(240)
        uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in modality.told_success}
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and not settled(d, uids):
            time.sleep(0.2)
        result = reconcile(d, modality)
        result["unsent"] = len(files) - len(modality.told_success)
        tally.trials += 1
        tally.instances += len(files)
        tally.resends += modality.attempts - len(files)
        for key in ("lost", "corrupt", "duplicated", "false_successes", "scratch_leftovers"):
            setattr(tally, key, getattr(tally, key) + result[key])
        tally.lost += result["unsent"]  # never accepted within the trial: the modality still has it, but count it
        return result
    finally:
        d.stop()
        proxy.close()
        if disk is not None:
            disk.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, default=60.0, help="start no new trial after this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mgw-faults"))
    parser.add_argument("--keep", action="store_true", help="keep every trial's directory (default: failed ones)")
    args = parser.parse_args()
    storescu = find_dcmtk("storescu")
    if storescu is None:
        print("DCMTK storescu is not installed (apt-get install dcmtk)", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"command: {' '.join(sys.argv)}; root: {os.geteuid() == 0}", file=sys.stderr)
    tally, started = Tally(), time.monotonic()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # the trial's finally stops its processes
    for n in range(args.trials):
        if time.monotonic() - started > args.max_minutes * 60:
            break
        try:
            result = trial(n, random.Random(args.seed * 100_003 + n), args.workdir, storescu, tally)
        except KeyboardInterrupt:
            print(f"interrupted in trial {n}", file=sys.stderr)
            break
        except Exception as exc:  # the harness, not the product: reported, never hidden  # noqa: BLE001
            tally.aborted += 1
            print(f"trial {n}: ABORTED by the harness: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        bad = any(result[k] for k in ("lost", "corrupt", "duplicated", "false_successes", "unsent"))
        print(f"trial {n}: {result}{'  <-- KEPT ' + str(args.workdir / f'trial-{n:04d}') if bad else ''}",
              file=sys.stderr, flush=True)
        if not bad and not args.keep:
            shutil.rmtree(args.workdir / f"trial-{n:04d}", ignore_errors=True)
    print(tally.line(time.monotonic() - started))
    clean = tally.lost == tally.corrupt == tally.duplicated == tally.false_successes == 0
    return 0 if clean and tally.trials else 1


if __name__ == "__main__":
    sys.exit(main())
