"""`mgw cloud archive versions` against a real archive index (SQLite file or PostgreSQL) and fleet store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway import cli
from gateway.cloud.archive import versions
from gateway.cloud.archive.store import Archive
from gateway.core.errors import RequestError
from gateway.core.fleet import BoxState
from gateway.core.instance import InstanceIdentity
from gateway.core.utilisation import FixedOffset
from tests.backends import Backend

SOP, OTHER, STUDY = "1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2", "1.2.826.0.1.3680043.2.1125.9"
T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def _identity(data: bytes, sop: str) -> InstanceIdentity:
    return InstanceIdentity(size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.7", sop_instance_uid=sop,
                            study_instance_uid=STUDY, series_instance_uid=STUDY + ".1",
                            transfer_syntax_uid="1.2.840.10008.1.2.1")


def _site_with_versions(tmp_path: Path, backend: Backend) -> Path:
    """A cloud configuration whose archive holds two versions of SOP (box-sh, a site in Asia/Shanghai;
    the second current) and one of OTHER (box-x, a box the fleet has never seen: the fleet's zone)."""
    state = tmp_path / "state"
    index = f'[index]\nbackend = "postgres"\ndsn = "{backend.dsn}"\n' if backend.cluster else ""
    toml = tmp_path / "cloud.toml"
    toml.write_text(f'[cloud]\nstate_dir = "{state}"\n{index}[fleet]\nutc_offset_minutes = 60\n'
                    '[fleet.sites.shanghai]\ntime_zone = "Asia/Shanghai"\n')
    archive = Archive(state / "archive", state / "archive.db") if backend.cluster is None else backend.archive(state)
    try:
        for n, (data, sop, box) in enumerate(((b"first", SOP, "box-sh"), (b"corrected", SOP, "box-sh"),
                                              (b"other", OTHER, "box-x"))):
            archive.store(_identity(data, sop), archive.receive([data]), box, bytes([n]) * 16, 2, T0 + n,
                          edge_item_id=10 + n)
    finally:
        archive.close()
    store = backend.fleet_store(state)  # fleet.db beside archive.db, or the same PostgreSQL database
    try:
        store.save_boxes([BoxState("box-sh", True, 1, T0, T0, T0, site="shanghai")])
    finally:
        store.close()
    return toml


def test_versions_say_which_one_is_current_in_the_sites_zone_when_an_instance_was_resent_changed(
        tmp_path: Path, backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _site_with_versions(tmp_path, backend)
    assert cli.main(["cloud", "archive", "versions", "--config", str(toml), "--sop-instance-uid", SOP, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["versions"]
    assert [(v["box_id"], v["size"], v["current"]) for v in doc] == [("box-sh", 5, False), ("box-sh", 9, True)]
    assert doc[0]["sha256"] == hashlib.sha256(b"first").hexdigest() and doc[0]["superseded_at"] is not None
    assert doc[1]["stored_local"] == "2026-05-29 04:26:41 +08:00"  # the site's zone (Asia/Shanghai)

    assert cli.main(["cloud", "archive", "versions", "--config", str(toml), "--study-instance-uid", STUDY]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert f"SOP Instance UID {SOP}" in lines and f"SOP Instance UID {OTHER}" in lines
    assert "archived / 归档时间" in text
    mine = [line for line in lines if "box-sh" in line]
    assert len(mine) == 2 and "superseded / 已被取代" in mine[0] and "current / 当前版本" in mine[1]
    assert hashlib.sha256(b"corrected").hexdigest()[:12] in mine[1]
    (other,) = [line for line in lines if "box-x" in line]
    assert "2026-05-28 21:26:42 +01:00" in other and "current / 当前版本" in other  # unknown box: the fleet's zone


def test_listing_says_none_when_the_archive_does_not_hold_the_instance(
        tmp_path: Path, backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _site_with_versions(tmp_path, backend)
    assert cli.main(["cloud", "archive", "versions", "--config", str(toml), "--sop-instance-uid", "1.2.3"]) == 0
    assert "no archived instance / 归档中没有该实例" in capsys.readouterr().out


def test_uid_is_refused_without_echo_when_it_is_not_a_dicom_uid(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "cloud.toml"
    toml.write_text(f'[cloud]\nstate_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["cloud", "archive", "versions", "--config", str(toml), "--sop-instance-uid", "Smith^John"]) == 1
    err = capsys.readouterr().err
    assert "--sop-instance-uid must be a DICOM UID" in err and "Smith" not in err
    for bad in ("", "1..2", "01.2", "1.2.", "1" * 65, "1.2\n3"):
        with pytest.raises(RequestError):
            versions.parse_uid(bad, "uid")
    assert versions.parse_uid("1.2.840.10008.0", "uid") == "1.2.840.10008.0"


def test_local_time_follows_the_zone_when_formatted() -> None:
    assert versions.local_time(0.0, FixedOffset(-5 * 3600 - 1800)) == "1969-12-31 18:30:00 -05:30"
    assert versions.local_time(T0, FixedOffset(0)) == "2026-05-28 20:26:40 +00:00"
