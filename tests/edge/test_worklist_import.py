"""``mgw edge worklist import`` as a subprocess against real files, then the registered worklist
service (edge/dicom_services.py) answering DCMTK ``findscu -W`` from what it imported."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.dicom_scp import DicomListener
from gateway.adapters.keystore import FileKeyStore
from gateway.config import load_edge
from gateway.edge import cache
from gateway.edge.dicom_services import REGISTRY, ServiceNeeds, build_dicom_services
from gateway.paths import Paths
from tests.peers import dcmtk, dcmtk_env, dimse_statuses, require_root

NAME = "Kowalczyk^Teodor"


def _entry(step: str, station: str = "CT1") -> dict[str, Any]:
    return {"accession_number": f"ACC-{step}", "patient_name": NAME, "patient_id": "PID-77",
            "step": {"step_id": step, "modality": "CT", "station_ae_title": station, "start_date": "20261203",
                     "start_time": "0930"}}


def _update(seq: int, *ops: dict[str, Any], box_id: str = "box-1") -> dict[str, Any]:
    return {"v": 1, "box_id": box_id, "seq": seq, "ops": list(ops)}


@pytest.fixture
def edge_toml(tmp_path: Path) -> Path:
    key = base64.b64encode(os.urandom(32)).decode()
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[box]\nid = "box-1"\ncloud_public_key = "{key}"\nstate_dir = "{tmp_path / "state"}"\n'
                    '[dicom]\nae_title = "MGW"\nbind_host = "127.0.0.1"\nport = 0\n')
    return toml


def mgw_import(toml: Path, body: Any, tmp_path: Path, raw: bytes | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"update{len(list(tmp_path.glob('update*')))}.json"
    path.write_bytes(raw if raw is not None else json.dumps(body).encode())
    return subprocess.run([sys.executable, "-m", "gateway", "edge", "worklist", "import", "--config", str(toml),
                           "--json", str(path)], capture_output=True, text=True, timeout=120)


def test_import_applies_in_order_and_refuses_bad_files_with_a_reason_when_run(edge_toml: Path, tmp_path: Path) -> None:
    first = mgw_import(edge_toml, _update(5, {"op": "upsert", "entry": _entry("S1")},
                                          {"op": "upsert", "entry": _entry("S2")}), tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"applied": True, "seq": 5, "last_seq": 5, "upserted": 2, "cancelled": 0,
                                        "items": 2}
    replay = mgw_import(edge_toml, _update(4, {"op": "cancel", "step_id": "S1", "accession_number": "ACC-S1"}),
                        tmp_path)
    assert replay.returncode == 0 and json.loads(replay.stdout)["applied"] is False
    bad = [
        (_update(6, {"op": "upsert", "entry": {**_entry("S3"), "birth_date": "1970-01-01"}}), "birth_date"),
        (_update(6, {"op": "upsert", "entry": {**_entry("S3"), "colour": "red"}}), "colour"),
        (_update(6, box_id="box-2"), "box-2"),
        ({"v": 2, "box_id": "box-1", "seq": 6, "ops": []}, "v"),
    ]
    for body, reason in bad:
        refused = mgw_import(edge_toml, body, tmp_path)
        assert refused.returncode == 1 and reason in refused.stderr, refused.stderr
    huge = mgw_import(edge_toml, None, tmp_path, raw=b" " * (8 * 1024 * 1024 + 1))
    assert huge.returncode == 1 and "limit" in huge.stderr
    log_and_output = first.stdout + first.stderr + replay.stdout + replay.stderr
    assert "worklist update applied" in log_and_output  # the log line, with counts ...
    assert NAME not in log_and_output and "PID-77" not in log_and_output  # ... and no patient
    cancel = mgw_import(edge_toml, _update(7, {"op": "cancel", "step_id": "S1", "accession_number": "ACC-S1"}),
                        tmp_path)
    assert json.loads(cancel.stdout)["items"] == 1


def test_import_is_refused_when_run_by_another_user_than_the_state_directorys_owner(
        edge_toml: Path, tmp_path: Path) -> None:
    require_root("to give the state directory to another user")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    refused = mgw_import(edge_toml, _update(1, {"op": "upsert", "entry": _entry("S1")}), tmp_path)
    assert refused.returncode == 2 and "sudo -u mgw" in refused.stderr
    assert list(state.iterdir()) == []  # no key, no cache made


@pytest.fixture
def listener(edge_toml: Path, tmp_path: Path) -> Iterator[int]:
    settings = load_edge([edge_toml])
    paths = Paths(tmp_path / "etc", Path(settings.box.state_dir), tmp_path / "run")
    assert mgw_import(edge_toml, _update(1, {"op": "upsert", "entry": _entry("S1")},
                                         {"op": "upsert", "entry": _entry("S2", station="CT2")}),
                      tmp_path).returncode == 0
    key = FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME)  # the key the import sealed with
    worklist_only = tuple((name, build) for name, build in REGISTRY if name == "Modality Worklist")
    services = build_dicom_services(ServiceNeeds(settings, paths, None, None, key, lambda: 1796342400.0),  # type: ignore[arg-type]
                                    worklist_only)
    dicom = DicomListener(settings.dicom, services.all)
    dicom.start()
    yield dicom.port
    dicom.stop()


def test_registered_worklist_answers_findscu_from_the_imported_cache_when_the_edge_builds_it(
        listener: int, tmp_path: Path) -> None:
    out = subprocess.run([dcmtk("findscu"), "-d", "-W", "-aet", "CT1", "-aec", "MGW", "-k", "PatientName=kowal*",
                          "-k", "(0040,0100)[0].ScheduledProcedureStepID", "127.0.0.1", str(listener)],
                         env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert dimse_statuses(out.stdout + out.stderr) == [0xFF00, 0x0000]  # S2 is CT2's
    assert NAME in out.stdout + out.stderr  # findscu prints the answer it got
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.name.startswith("worklist.db"))
    assert NAME.encode() not in raw
