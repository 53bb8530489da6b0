"""`mgw cloud archive versions` against a real archive index (SQLite file or PostgreSQL) and fleet store."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.adapters.mosquitto import MosquittoBroker
from gateway.cloud.archive import versions
from gateway.cloud.archive.store import Archive
from gateway.cloud.fleet.service import FleetService
from gateway.config import SiteSettings
from gateway.core.access import Role
from gateway.core.errors import RequestError
from gateway.core.fleet import BoxState
from gateway.core.instance import InstanceIdentity
from gateway.core.utilisation import FixedOffset
from gateway.paths import Paths
from tests.backends import Backend
from tests.cloud.test_console_auth import Browser, audit_rows, call, two_sites
from tests.cloud.test_fleet import Box
from tests.cloud.test_fleet import settings as fleet_settings
from tests.console_auth import account, bearer, token

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
    assert "archived" in text
    mine = [line for line in lines if "box-sh" in line]
    assert len(mine) == 2 and "superseded" in mine[0] and mine[1].endswith("current")
    assert hashlib.sha256(b"corrected").hexdigest()[:12] in mine[1]
    (other,) = [line for line in lines if "box-x" in line]
    assert "2026-05-28 21:26:42 +01:00" in other and other.endswith("current")  # unknown box: the fleet's zone


def test_listing_says_none_when_the_archive_does_not_hold_the_instance(
        tmp_path: Path, backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    toml = _site_with_versions(tmp_path, backend)
    assert cli.main(["cloud", "archive", "versions", "--config", str(toml), "--sop-instance-uid", "1.2.3"]) == 0
    assert "no archived instance" in capsys.readouterr().out


def test_listing_says_none_and_creates_no_index_when_nothing_was_archived_on_the_node(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "cloud.toml"
    toml.write_text(f'[cloud]\nstate_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["cloud", "archive", "versions", "--config", str(toml), "--study-instance-uid", STUDY]) == 0
    assert "no archived instance" in capsys.readouterr().out
    assert not (tmp_path / "state" / "archive.db").exists() and not (tmp_path / "state" / "fleet.db").exists()


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


# -- the console's API: GET /api/v1/archive/versions -------------------------------------------------------------
@pytest.fixture
def console(broker: MosquittoBroker, tmp_path: Path, backend: Backend) -> Iterator[FleetService]:
    """A fleet service (store and archive index on ``backend``) whose archive holds two versions of SOP
    from box-a (clinic-a, Asia/Shanghai) and one version of OTHER from box-b (clinic-b)."""
    fleet_keys: dict[str, Any] = {"offline_after_s": 60.0, "utc_offset_minutes": 60,
                                  "sites": {"clinic-a": SiteSettings(time_zone="Asia/Shanghai")}}
    svc = FleetService(fleet_settings(broker, backend, **fleet_keys), Paths(tmp_path, tmp_path / "cloud", tmp_path))
    svc.start()
    index = backend.index_settings()
    archive = Archive(tmp_path / "cloud" / "archive", tmp_path / "cloud" / "archive.db") if index.backend == "sqlite" \
        else backend.archive(tmp_path / "cloud")
    try:
        for n, (data, sop, box) in enumerate(((b"first", SOP, "box-a"), (b"corrected", SOP, "box-a"),
                                              (b"other", OTHER, "box-b"))):
            archive.store(_identity(data, sop), archive.receive([data]), box, bytes([n]) * 16, 2, T0 + n,
                          edge_item_id=10 + n)
    finally:
        archive.close()
    try:
        assert svc.link.wait_connected(60)
        yield svc
    finally:
        svc.stop()
        while Box.made:
            Box.made.pop().link.stop()


def test_operator_sees_their_sites_versions_and_which_is_current_and_the_read_is_audited_without_the_uid(
        console: FleetService, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    two_sites(console, broker)
    account(console.store, "ana", Role.OPERATOR, frozenset({"clinic-a"}))
    account(console.store, "victor", Role.VIEWER)
    ana, victor = Browser(console, "ana"), Browser(console, "victor")
    status, doc = ana.get(f"/api/v1/archive/versions?sop_instance_uid={SOP}")
    assert status == 200, doc
    got = [(v["box_id"], v["site"], v["size"], v["current"]) for v in doc["versions"]]
    assert got == [("box-a", "clinic-a", 5, False), ("box-a", "clinic-a", 9, True)]
    assert doc["versions"][1]["time_zone"] == "Asia/Shanghai"
    assert doc["versions"][1]["stored_local"] == "2026-05-29 04:26:41 +08:00"
    assert doc["versions"][0]["superseded_at"] is not None and doc["versions"][1]["superseded_at"] is None
    assert ana.get(f"/api/v1/archive/versions?sop_instance_uid={OTHER}") == (200, {"versions": []})  # clinic-b's
    admin = bearer(token(console.store, "root"))
    status, _, everyone = call(console, "GET", f"/api/v1/archive/versions?sop_instance_uid={OTHER}", headers=admin)
    assert status == 200 and [(v["box_id"], v["current"]) for v in everyone["versions"]] == [("box-b", True)]
    assert victor.get(f"/api/v1/archive/versions?sop_instance_uid={SOP}")[0] == 403  # a viewer's role is too low
    status, refused = ana.get("/api/v1/archive/versions?sop_instance_uid=Smith%5EJohn")
    assert status == 400 and "Smith" not in refused["error"]
    assert ana.get("/api/v1/archive/versions")[0] == 400  # the UID is required
    for hostile in ("1.2.3%0A", "1.2.3&sop_instance_uid=1.2.4", "1." + "2" * 63, "1.2.3*", "%2E%2E"):
        assert ana.get(f"/api/v1/archive/versions?sop_instance_uid={hostile}")[0] == 400, hostile
    reads = audit_rows(console, "archive.versions")
    assert sorted((r["actor"].split(":")[0], r["outcome"]) for r in reads) == [
        ("ana", "ok"), ("ana", "ok"), ("token", "ok")]  # the admin's API token
    refusals = [r for r in console.store.auth.audit(actor="victor", limit=10) if r.outcome == "refused"]
    assert refusals and refusals[0].action == "/api/v1/archive/versions"
    everything = json.dumps([r.as_dict() for r in console.store.auth.audit(limit=1000)])
    assert SOP not in everything and OTHER not in everything  # the audit log names no UID
    assert not any(SOP in r.getMessage() or OTHER in r.getMessage() or SOP in str(r.__dict__)
                   for r in caplog.records)  # nor does any log line
