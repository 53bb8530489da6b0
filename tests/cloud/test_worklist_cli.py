"""`mgw cloud worklist route|status`, run as a subprocess, on a real fleet store (SQLite file): typed arguments, clear
refusals in English and Chinese, and a status with no patient data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cloud.worklist.store import WorklistStore


@pytest.fixture
def toml(tmp_path: Path) -> str:
    path = tmp_path / "cloud.toml"
    path.write_text(f'[cloud]\nstate_dir = "{tmp_path / "state"}"\n[fleet]\ntime_zone = "Asia/Shanghai"\n'
                    "[fleet.worklist]\nenabled = true\n")
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``mgw cloud worklist ARGS`` as a subprocess (``capsys`` kept for the tests' signatures)."""
    done = subprocess.run([sys.executable, "-m", "gateway", "cloud", "worklist", *args], capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_route_is_added_listed_and_removed_when_its_arguments_are_well_formed(toml: str, capsys) -> None:
    code, out, _ = run(capsys, "route", "add", "--box", "ct-01", "--modality", "CT", "--station-ae", "CT1",
                       "--station-name", "ROOM 1", "--config", toml)
    assert code == 0 and "route added" in out and "has not seen box ct-01 yet" in out
    code, out, _ = run(capsys, "route", "list", "--json", "--config", toml)
    assert [(r["box_id"], r["modality"], r["station_ae_title"], r["station_name"]) for r in json.loads(out)] == [
        ("ct-01", "CT", "CT1", "ROOM 1")]
    code, out, err = run(capsys, "route", "add", "--box", "ct-01", "--modality", "CT", "--station-ae", "CT1",
                         "--config", toml)
    assert code == 2 and "already serves" in err
    code, out, _ = run(capsys, "status", "--config", toml)
    assert code == 0 and "CT@CT1 (ROOM 1)" in out and "no worklist key" in out and "Boxes" in out
    code, out, _ = run(capsys, "route", "remove", "--box", "ct-01", "--modality", "CT", "--station-ae", "CT1",
                       "--config", toml)
    assert code == 0 and "route removed" in out
    code, _, err = run(capsys, "route", "remove", "--box", "ct-01", "--modality", "CT", "--station-ae", "CT1",
                       "--config", toml)
    assert code == 2 and "no route" in err


@pytest.mark.parametrize("args,reason", [
    (("--box", "CT_01", "--modality", "CT", "--station-ae", "CT1"), "not a box id"),
    (("--box", "ct-01", "--modality", "ct", "--station-ae", "CT1"), "not a DICOM modality code"),
    (("--box", "ct-01", "--modality", "CT", "--station-ae", "A\\B"), "not an AE title"),
    (("--box", "ct-01", "--modality", "CT", "--station-ae", "X" * 17), "not an AE title"),
    (("--box", "ct-01", "--modality", "CT", "--station-ae", "CT1", "--station-name", "R" * 17), "at most 16"),
])
def test_route_is_refused_with_the_reason_when_an_argument_is_malformed(toml: str, capsys, args: tuple[str, ...],
                                                                        reason: str, tmp_path: Path) -> None:
    code, _, err = run(capsys, "route", "add", *args, "--config", toml)
    assert code == 2 and reason in err


def test_status_shows_the_published_time_in_the_fleets_time_zone_when_a_box_was_fed(toml: str, capsys,
                                                                                    tmp_path: Path) -> None:
    from gateway.adapters.sqlite_fleet_store import SqliteFleetStore

    run(capsys, "route", "list", "--config", toml)  # creates the store
    db = next((tmp_path / "state").rglob("fleet*.db"))
    store = SqliteFleetStore(db)
    try:
        w: WorklistStore = store.worklist
        w.note_key("ct-01", "ab" * 32)
        assert w.published("ct-01", 1, "d" * 64, "ab" * 32, 3, 0, 1796342400.0)  # 2026-12-04 00:00 UTC
    finally:
        store.close()
    code, out, _ = run(capsys, "status", "--config", toml)
    assert code == 0 and "2026-12-04 08:00:00 +08:00" in out and "entries: 3" in out
