"""Concurrency soak over mutual TLS: modalities and boxes sending at the same time.

Four DCMTK storescu associations into one edge, and four boxes into one cloud
ingest, all as real processes against a mutual-TLS mosquitto. Everything must
arrive byte-exact, and no MQTT connection may break on the way: no TLS or
protocol error and no disconnect in the broker's log, no uplink reconnect, no
crashed process. (Before each paho client had one owning thread, this load
corrupted the heap of the edge and of the ingest worker.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from gateway.adapters.dicom_scu import storescu
from gateway.core.errors import LocalError
from gateway.loopback import BOX_ID, EDGE_AE, MODALITY_AE, LoopbackDeployment, await_ports
from gateway.tomlwrite import render_toml
from tests.peers import dcmtk, wait_for
from tests.system.reconcile import acknowledged_count, reconcile
from tests.tls_peers import broken_streams, broker_log_offset

Deploy = Callable[..., LoopbackDeployment]
PER_ASSOCIATION = 50
# Small real images of four modalities; US is JPEG 2000 and larger than one chunk frame.
BASES = {"CT": "CT_small.dcm", "MR": "MR_small.dcm", "US": "US1_J2KR.dcm", "OT": "SC_rgb.dcm"}
TROUBLE = re.compile(r"Fatal Python error|corrupted|double free|free\(\)|malloc\(\)|Segmentation fault|"
                   r"Exception in thread|uplink lost|Traceback")


@dataclass
class Box:
    box_id: str
    state_dir: Path
    dicom_port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    log: Path


def modality_files(out: Path, modality: str, n: int) -> list[Path]:
    """``n`` instances of one study: a small real image, each with its own SOP Instance UID."""
    path = get_testdata_file(BASES[modality])
    if path is None:
        pytest.fail(f"pydicom test file {BASES[modality]} missing")
    template = dcmread(path)
    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files = []
    for i in range(n):
        uid = generate_uid()
        template.StudyInstanceUID, template.SeriesInstanceUID, template.InstanceNumber = study, series, i + 1
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = uid
        target = out / f"{modality}-{i:03d}.dcm"
        template.save_as(target, enforce_file_format=True)
        files.append(target)
    return files


def send_at_once(ports_and_files: list[tuple[int, list[Path], str]]) -> None:
    """One storescu association per entry, all started together (TCP_NODELAY=1 in their environment)."""
    dcmtk("storescu")
    with ThreadPoolExecutor(len(ports_and_files)) as pool:
        runs = [pool.submit(storescu, "127.0.0.1", port, EDGE_AE, calling, files)
                for port, files, calling in ports_and_files]
        for run in runs:
            result = run.result()
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def wait_all_connected(d: LoopbackDeployment, boxes: list[str]) -> None:
    """Every MQTT client of the deployment is in: each box's uplink and telemetry, ingest and fleet."""
    wanted = [f" as {b} " for b in boxes] + [f" as {b}:telemetry " for b in boxes]
    wanted += [" as cloud.ingest.", " as cloud.fleet."]
    log = d.broker.workdir / "mosquitto.log"
    wait_for(lambda: all(w in log.read_text() for w in wanted), 60, "every MQTT client connected")


def uplink_reconnects(metrics_port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as rsp:  # noqa: S310
        text = rsp.read().decode()
    found = re.search(r"^mgw_edge_uplink_reconnects_total(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert found, "no reconnect counter in /metrics"
    return int(float(found.group(1)))


def assert_healthy(d: LoopbackDeployment, since: int, boxes: list[Box], metrics_ports: list[int]) -> None:
    """No broken stream, no reconnect, no crash: checked before anything is stopped."""
    assert broken_streams(d.broker, since) == []
    assert [uplink_reconnects(port) for port in metrics_ports] == [0] * len(metrics_ports)
    procs = [d.edge, *d.clouds, d.fleet, *(b.proc for b in boxes)]
    assert [p.poll() for p in procs if p is not None] == [None] * sum(p is not None for p in procs)
    logs = [d.root / "edge.log", d.root / "cloud.log", d.root / "fleet.log", *(b.log for b in boxes)]
    trouble = [f"{log.name}: {line}" for log in logs for line in log.read_text(errors="replace").splitlines()
             if TROUBLE.search(line)]
    assert trouble == []


@pytest.fixture
def extra_boxes(deploy: Deploy) -> Iterator[Callable[[LoopbackDeployment, str], Box]]:
    """More provisioned boxes (real `mgw provision`, real `mgw edge run`) for a secure deployment."""
    started: list[Box] = []

    def start(d: LoopbackDeployment, box_id: str) -> Box:
        state = d.root / box_id
        args = [sys.executable, "-m", "gateway", "provision", "--url", d.enrol_url, "--ca-fingerprint",
                d.authority.ca_fingerprint, "--token", d.create_token(box_id), "--state-dir", str(state),
                "--no-self-test", *(arg for peer in d.modalities for arg in ("--modality", peer))]
        made = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        tables = tomllib.loads(d.edge_toml.read_text())
        assert tables["dicom"]["port"] == tables["health"]["metrics_port"] == 0  # any free port, reported
        config = d.root / f"{box_id}.toml"
        config.write_text(render_toml(tables))
        log = d.root / f"{box_id}.log"
        with open(log, "ab") as err:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "edge", "run", "--config", str(config),
                                     "--config", str(state / "device.toml")], stdout=subprocess.DEVNULL, stderr=err)
        box = Box(box_id, state, 0, 0, proc, log)
        started.append(box)  # stopped at the end even if it never reports its ports
        try:
            bound = await_ports(state, "edge", proc)
        except LocalError as exc:
            pytest.fail(f"{box_id}: {exc}: {log.read_text()[-2000:]}")
        box.dicom_port, box.metrics_port = bound["dicom"], bound["metrics"]
        return box

    yield start
    for box in started:
        box.proc.terminate()
        try:
            box.proc.wait(15)
        except subprocess.TimeoutExpired:
            box.proc.kill()
            box.proc.wait()


def test_all_instances_arrive_byte_exact_without_a_reconnect_when_four_modalities_send_to_one_edge_at_once(
        deploy: Deploy, tmp_path: Path) -> None:
    d = deploy(secure=True, modalities=tuple(f"{m}_SCANNER@127.0.0.1" for m in BASES))  # admitted by the box
    studies = {m: modality_files(tmp_path / "studies", m, PER_ASSOCIATION) for m in BASES}
    wait_all_connected(d, [BOX_ID])
    since = broker_log_offset(d.broker)
    send_at_once([(d.dicom_port, files, f"{m}_SCANNER") for m, files in studies.items()])
    sent = [f for files in studies.values() for f in files]
    try:
        wait_for(lambda: acknowledged_count(d) >= len(sent), 240, f"{len(sent)} cloud acknowledgements")
    except BaseException:
        print(d.log_tail())
        raise
    assert_healthy(d, since, [], [d.edge_metrics_port])
    result = reconcile(d, sent)
    assert result.clean and result.archived_rows == len(sent), result


def test_all_instances_arrive_byte_exact_without_a_reconnect_when_four_boxes_send_to_one_ingest_at_once(
        deploy: Deploy, extra_boxes: Callable[[LoopbackDeployment, str], Box], tmp_path: Path) -> None:
    d = deploy(secure=True)
    boxes = [extra_boxes(d, f"box-{n}") for n in (2, 3, 4)]
    modalities = list(BASES)
    studies = [modality_files(tmp_path / f"studies-{n}", modalities[n], PER_ASSOCIATION) for n in range(4)]
    wait_all_connected(d, [BOX_ID, *(b.box_id for b in boxes)])
    since = broker_log_offset(d.broker)
    ports = [d.dicom_port, *(b.dicom_port for b in boxes)]
    send_at_once([(port, files, MODALITY_AE) for port, files in zip(ports, studies, strict=True)])
    edge_dirs = [d.edge_dir, *(b.state_dir for b in boxes)]
    try:
        wait_for(lambda: all(acknowledged_count(d, e) >= PER_ASSOCIATION for e in edge_dirs), 240,
                 "every box's instances acknowledged")
    except BaseException:
        print(d.log_tail(), *(b.log.read_text()[-3000:] for b in boxes))
        raise
    assert_healthy(d, since, boxes, [d.edge_metrics_port, *(b.metrics_port for b in boxes)])
    results = [reconcile(d, files, edge_dir) for files, edge_dir in zip(studies, edge_dirs, strict=True)]
    assert all(r.clean for r in results), results
    assert results[0].archived_rows == 4 * PER_ASSOCIATION
