"""Real peers for tests: DCMTK binaries, closed ports, bounded polling, real DICOM files.

Tests use the genuine DCMTK tools, never pynetdicom's look-alike console scripts
(``storescu``/``echoscu`` installed by pip shadow DCMTK on PATH). A missing tool
skips the test with a reason locally and fails it under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from gateway.adapters import ports
from gateway.adapters.dicom_scu import find_dcmtk
from gateway.adapters.dicom_scu import storescu_profile as storescu_profile_args  # noqa: F401 - re-exported for tests
from gateway.core.part10 import dataset_offset

T = TypeVar("T")
PEER_START_S = 60.0  # a third-party peer's start on a loaded machine

REAL_IMAGE_NAMES = (
    "693_UNCI.dcm",  # CT, explicit VR little endian
    "MR2_UNCI.dcm",  # MR
    "RG1_UNCI.dcm",  # CR, 7 MB
    "US1_UNCI.dcm",  # US
    "693_J2KR.dcm",  # CT, JPEG 2000 lossless
    "MR2_J2KI.dcm",  # MR, JPEG 2000 lossy
    "emri_small_jpeg_ls_lossless.dcm",  # enhanced MR, JPEG-LS lossless
    "JPEG-LL.dcm",  # SC, JPEG lossless SV1
    "OBXXXX1A_rle.dcm",  # US, RLE lossless
    "SC_rgb.dcm",  # SC, SpecificCharacterSet ISO_IR 192
    "gdcm-US-ALOKA-16.dcm",  # US, implicit VR little endian
    "emri_small_big_endian.dcm",  # enhanced MR, explicit VR big endian
    "liver.dcm",  # Segmentation
)


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_root(why: str) -> None:
    """Skip when not root (a developer's laptop); under CI=true, where we run as root, fail."""
    if os.geteuid() != 0:
        _missing(f"needs root {why}")


@cache
def _find_dcmtk(name: str) -> str | None:
    return find_dcmtk(name)


def dcmtk(name: str) -> str:
    """Absolute path of the real DCMTK tool ``name`` (skip, or fail under CI, if absent)."""
    path = _find_dcmtk(name)
    if path is None:
        _missing(f"DCMTK '{name}' not installed (apt-get install dcmtk)")
    return path


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: TCP_NODELAY=1, or they crawl on loopback (Nagle)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on while the block runs: bound here, never listening, so a
    connection to it is refused (a port merely free now could be anyone's by the time it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def data_store_dir() -> Path:
    """``data_store/data`` of the installed pydicom-data wheel (never downloaded)."""
    try:
        root = resources.files("data_store")
    except ModuleNotFoundError:
        _missing("pydicom-data (module data_store) not installed")
    path = Path(str(root)) / "data"
    if not path.is_dir():
        _missing(f"pydicom-data has no data directory at {path}")
    return path


def real_images() -> list[Path]:
    """Real DICOM files: CT, MR, CR, US, SC, SEG; uncompressed and compressed transfer syntaxes."""
    base = data_store_dir()
    paths = [base / name for name in REAL_IMAGE_NAMES]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        _missing(f"pydicom-data lacks {', '.join(absent)}")
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its file meta group: the dataset as encoded."""
    raw = path.read_bytes()
    return raw[dataset_offset(raw):]

def dimse_statuses(dcmtk_debug_output: str) -> list[int]:
    """Statuses of the DIMSE responses a DCMTK tool printed with ``-d``."""
    return [int(code, 16) for code in re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", dcmtk_debug_output)]


def echo(port: int, called_ae: str, calling_ae: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    """One C-ECHO with DCMTK echoscu against 127.0.0.1:port."""
    args = [dcmtk("echoscu"), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)


@contextmanager
def dcmtk_storescp(out_dir: Path, ae_title: str = "REFERENCE") -> Iterator[int]:
    """A DCMTK storescp, bit-preserving (datasets written exactly as received), unique file names; yields its port.

    storescp cannot bind port 0 and tell: it gets a port picked free, and another one if that was
    taken before it bound it (``ports.on_free_port``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir.parent / f"{out_dir.name}.storescp.log"
    binary = dcmtk("storescp")

    with _listening_peer("storescp", log, lambda port: [binary, "+B", "+xa", "+uf", "-aet", ae_title, "-od",
                                                        str(out_dir), str(port)], env=dcmtk_env()) as port:
        yield port


def _prometheus_tool(names: tuple[str, ...], package: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    _missing(f"{names[0]} not installed (apt-get install {package})")


@contextmanager
def _listening_peer(what: str, log: Path, args: Callable[[int], list[str]],
                    env: dict[str, str] | None = None) -> Iterator[int]:
    """A peer that takes its port on the command line: started on a port picked free, again on
    another if that was taken before it bound it (``ports.on_free_port``); yields its port."""

    def start(port: int) -> tuple[int, subprocess.Popen[bytes]]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(args(port), env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            ports.wait_listening(proc, [port], what, lambda: log.read_text(errors="replace"), PEER_START_S)
        except BaseException:
            _end(proc)
            raise
        return port, proc

    port, proc = ports.on_free_port(start)
    try:
        yield port
    finally:
        _end(proc)


@contextmanager
def alertmanager(config: Path, workdir: Path) -> Iterator[int]:
    """Debian's Alertmanager on loopback with ``config``, clustering off; yields its port."""
    binary = _prometheus_tool(("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    with _listening_peer("alertmanager", workdir / "alertmanager.log", lambda port: [
            binary, f"--config.file={config}", f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]) as port:
        yield port


@contextmanager
def prometheus(config: Path, workdir: Path) -> Iterator[int]:
    """Debian's Prometheus on loopback with ``config``, alerts re-sent every second; yields its port."""
    binary = _prometheus_tool(("prometheus",), "prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    with _listening_peer("prometheus", workdir / "prometheus.log", lambda port: [
            binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--rules.alert.resend-delay=1s"]) as port:
        yield port


def _end(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_RAW_SENDER = r"""
import json, sys
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
_config.STORE_SEND_CHUNKED_DATASET = True  # send each file's dataset bytes verbatim
host, port, calling, called, *files = sys.argv[1:]
ae = AE(ae_title=calling)
pairs = {}
for f in files:
    meta = read_file_meta_info(f)
    pairs[(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)] = None
for sop_class, ts in pairs:
    ae.add_requested_context(sop_class, ts)
assoc = ae.associate(host, int(port), ae_title=called)
if not assoc.is_established:
    sys.exit(3)
statuses = []
for f in files:
    rsp = assoc.send_c_store(f)
    statuses.append(int(rsp.Status) if "Status" in rsp else None)
assoc.release()
print(json.dumps(statuses))
"""


def send_verbatim(port: int, files: list[Path], called_ae: str, calling_ae: str = "MODALITY") -> list[int | None]:
    """C-STORE each file's dataset bytes exactly as on disk (pynetdicom SCU in a separate process).

    Unlike DCMTK storescu, which re-encodes datasets, this sends malformed data
    untouched. Returns the DIMSE status of each store (None: no response).
    """
    args = [sys.executable, "-c", _RAW_SENDER, "127.0.0.1", str(port), calling_ae, called_ae, *map(str, files)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"raw sender failed ({out.returncode}): {out.stderr[-2000:]}"
    statuses: list[int | None] = json.loads(out.stdout.strip().splitlines()[-1])
    return statuses


def part10_file(path: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                dataset: bytes) -> Path:
    """Write a Part-10 file with a valid file meta group around arbitrary ``dataset`` bytes."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + dataset)
    return path
