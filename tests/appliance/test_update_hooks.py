"""The update hooks (firmware_hooks/ shims -> `mgw update-hook`) against a real edge on loopback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.adapters import store as store_module
from gateway.appliance import update
from gateway.appliance.status import read_edge_status
from gateway.config import load_edge
from gateway.loopback import EDGE_AE, LoopbackDeployment
from gateway.paths import Paths
from tests.peers import real_images, require_root, wait_for

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "firmware_hooks"
MGW = str(Path(sys.executable).parent / "mgw")
ROOMY = {"appliance": {"update_min_free_bytes": 1024}}


def run_hook(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MGW=MGW, MGW_HOOK_ARGS=" ".join(args))
    return subprocess.run([str(HOOKS / name)], env=env, capture_output=True, text=True, timeout=180)


def layer(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$RUNTIME_DIRECTORY for the edge process and the hooks, as systemd would set it."""
    path = tmp_path / "run"
    path.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(path))
    return path


def test_hook_files_are_named_for_mender_and_executable_when_listed() -> None:
    names = sorted(p.name for p in HOOKS.iterdir() if not p.name.endswith(".md"))
    assert names == ["ArtifactCommit_Enter_10_health_gate", "ArtifactInstall_Enter_10_quiesce",
                     "ArtifactReboot_Enter_10_quiesce", "ArtifactReboot_Leave_10_migrate",
                     "ArtifactRollback_Leave_10_record"]
    assert all(os.access(HOOKS / n, os.X_OK) for n in names)


def test_pre_install_retries_later_when_an_association_is_open(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    from pynetdicom import AE

    d = deploy(edge_overrides=ROOMY)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE)
    assert assoc.is_established
    try:
        busy = run_hook("ArtifactInstall_Enter_10_quiesce", "--config", str(d.edge_toml))
    finally:
        assoc.release()
    assert busy.returncode == 21, busy.stderr
    assert "association is active" in busy.stderr
    wait_for(lambda: update.established_connections(d.dicom_port) == 0, 60, "the association to close")
    idle = run_hook("ArtifactInstall_Enter_10_quiesce", "--config", str(d.edge_toml))
    assert idle.returncode == 0, idle.stderr


def test_pre_install_retries_later_when_a_study_arrived_recently(
        deploy: Callable[..., LoopbackDeployment], runtime: Path, tmp_path: Path) -> None:
    from gateway.adapters.dicom_scu import send_study

    d = deploy(edge_overrides=ROOMY)
    send_study("127.0.0.1", d.dicom_port, EDGE_AE, "MODALITY", real_images()[:1])
    recent = run_hook("ArtifactInstall_Enter_10_quiesce", "--config", str(d.edge_toml))
    assert recent.returncode == 21 and "study arrived recently" in recent.stderr
    quiet = layer(tmp_path, "quiet.toml", "[appliance]\nupdate_quiet_s = 0.0\n")
    wait_for(lambda: update.established_connections(d.dicom_port) == 0, 60, "the association to close")
    assert run_hook("ArtifactInstall_Enter_10_quiesce", "--config", str(d.edge_toml), "--config", quiet).returncode == 0
    full = layer(tmp_path, "full.toml", "[appliance]\nupdate_quiet_s = 0.0\nupdate_min_free_bytes = 1000000000000000\n")
    short = run_hook("ArtifactInstall_Enter_10_quiesce", "--config", str(d.edge_toml), "--config", full)
    assert short.returncode == 21 and "free space" in short.stderr


def test_pre_install_and_pre_reboot_retry_later_when_an_mpps_step_is_in_progress(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    from pydicom.uid import generate_uid

    from tests.adapters.test_mpps_scp import mpps

    d = deploy(edge_overrides=ROOMY)
    step, study = generate_uid(), generate_uid()
    start = {"PerformedProcedureStepStatus": "IN PROGRESS", "Modality": "CT",
             "PerformedProcedureStepStartDate": "20261203", "PerformedProcedureStepStartTime": "083000"}
    assert mpps(d.dicom_port, [{"op": "create", "uid": step, "study": study, "attrs": start}]) == [0]
    wait_for(lambda: update.established_connections(d.dicom_port) == 0, 60, "the MPPS association to close")
    for hook in ("ArtifactInstall_Enter_10_quiesce", "ArtifactReboot_Enter_10_quiesce"):
        busy = run_hook(hook, "--config", str(d.edge_toml))
        assert busy.returncode == 21, busy.stderr[-2000:]
        assert "MPPS step is in progress" in busy.stderr and "MPPS_IN_PROGRESS=1" in busy.stderr
    done = {"PerformedProcedureStepStatus": "COMPLETED", "PerformedProcedureStepEndDate": "20261203",
            "PerformedProcedureStepEndTime": "084500"}
    assert mpps(d.dicom_port, [{"op": "set", "uid": step, "attrs": done}]) == [0]
    wait_for(lambda: update.established_connections(d.dicom_port) == 0, 60, "the MPPS association to close")
    for hook in ("ArtifactInstall_Enter_10_quiesce", "ArtifactReboot_Enter_10_quiesce"):
        idle = run_hook(hook, "--config", str(d.edge_toml))
        assert idle.returncode == 0, idle.stderr[-2000:]


def test_pre_reboot_retries_later_when_an_association_opened_after_the_install_check(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    from pynetdicom import AE

    d = deploy(edge_overrides=ROOMY)
    assert run_hook("ArtifactInstall_Enter_10_quiesce", "--config", str(d.edge_toml)).returncode == 0
    ae = AE(ae_title="MODALITY")  # an exam begins while the slot is written
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", d.dicom_port, ae_title=EDGE_AE)
    assert assoc.is_established
    try:
        busy = run_hook("ArtifactReboot_Enter_10_quiesce", "--config", str(d.edge_toml))
    finally:
        assoc.release()
    assert busy.returncode == 21 and "association is active" in busy.stderr


def test_pre_install_ignores_an_mpps_step_when_it_went_stale(tmp_path: Path) -> None:
    from gateway.adapters.exam_store import ExamStore, mpps_in_progress
    from gateway.core.exam import ExamStatus

    store = ExamStore(tmp_path / "utilisation.db", tmp_path / "spool.db")
    try:
        store.mpps_put("1.2.3", "1.2.4", "key", ExamStatus.IN_PROGRESS, now=1000.0)
        store.mpps_put("1.2.5", "1.2.6", "key2", ExamStatus.IN_PROGRESS, now=5000.0)
        store.mpps_put("1.2.7", "1.2.8", "key3", ExamStatus.COMPLETED, now=5000.0)
    finally:
        store.close()
    assert mpps_in_progress(tmp_path / "utilisation.db", updated_after=0.0) == 2
    assert mpps_in_progress(tmp_path / "utilisation.db", updated_after=2000.0) == 1  # the old one went stale
    assert mpps_in_progress(tmp_path / "absent.db", updated_after=0.0) == 0


def test_pre_install_counts_associations_when_proc_root_is_given(tmp_path: Path) -> None:
    net = tmp_path / "proc" / "net"
    net.mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    rows = ["   0: 0100007F:2B68 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1",
            "   1: 00000000:2B68 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2",
            "   2: 0100007F:0050 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 3"]
    (net / "tcp").write_text(header + "\n".join(rows) + "\n")
    assert update.established_connections(11112, tmp_path / "proc") == 1  # 0x2B68; LISTEN and port 80 not
    assert update.established_connections(104, tmp_path / "proc") == 0


def older_spool(path: Path, version: int) -> None:
    """A real spool database as an older version left it: its first ``version`` migrations, one item."""
    from gateway.adapters.sqlite_db import SqliteDatabase

    db = SqliteDatabase(path, "old spool")
    try:
        db.migrate(store_module.MIGRATIONS[:version])
        db.rows("INSERT INTO items (state, sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid, "
                "transfer_syntax_uid, calling_ae, size, sha256, blob_name, received_at, updated_at) VALUES "
                "('purged', '1.2', '1.2.3', '1.2.4', '1.2.5', '1.2.840.10008.1.2.1', 'CT', 1, 'x', 'b', 1, 1)")
    finally:
        db.close()


def user_version(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_edge_backs_up_then_migrates_when_it_starts_on_an_older_spool_database(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    d = deploy()
    d.kill_edge()  # the new slot boots on a data partition an older version wrote
    paths = Paths.from_env(str(d.edge_dir))
    for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
        (paths.state_dir / name).unlink(missing_ok=True)
    older_spool(paths.spool_db, 2)
    assert run_hook("ArtifactReboot_Leave_10_migrate", "--config", str(d.edge_toml)).returncode == 0
    assert user_version(paths.spool_db) == 2  # the hook only checks: the service owns the migration
    d.start_edge()
    backup = store_module.backup_path(paths.spool_db, 2)
    assert user_version(backup) == 2  # the older schema, copied before the first step
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT sop_instance_uid FROM items").fetchall() == [("1.2.3",)]
    assert user_version(paths.spool_db) == len(store_module.MIGRATIONS)
    log = (d.root / "edge.log").read_text()
    assert log.count("spool database backed up and migrated") == 1 and "SCHEMA_FROM=2" in log


def test_spool_is_backed_up_once_when_two_openers_migrate_it_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gateway.adapters.commitment_store import CommitmentStore

    db = tmp_path / "spool.db"
    older_spool(db, len(store_module.MIGRATIONS))
    newer = [*store_module.MIGRATIONS, "ALTER TABLE items ADD COLUMN probe_note TEXT"]
    monkeypatch.setattr(store_module, "MIGRATIONS", newer)
    openers = [store_module.SpoolStore, CommitmentStore] * 4  # the service's two owners of the file, racing
    with ThreadPoolExecutor(len(openers)) as pool:
        for opened in pool.map(lambda make: make(db), openers):
            opened.close()
    backups = list((tmp_path / store_module.BACKUP_DIR).iterdir())
    assert [b.name for b in backups] == [f"spool-schema{len(newer) - 1}.db"]
    assert user_version(backups[0]) == len(newer) - 1 and user_version(db) == len(newer)
    with sqlite3.connect(db) as conn:
        assert "probe_note" in [r[1] for r in conn.execute("PRAGMA table_info(items)")]


def test_spool_is_left_unmigrated_when_its_backup_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.core.errors import StorageError

    db = tmp_path / "spool.db"
    older_spool(db, 2)
    (tmp_path / store_module.BACKUP_DIR).write_text("a file where the backup folder goes")
    with pytest.raises(StorageError):
        store_module.SpoolStore(db)
    assert user_version(db) == 2  # no backup, no migration


def test_migrate_hook_leaves_files_to_the_service_user_when_run_as_root(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    require_root("to own files as another user")
    d = deploy()
    d.stop()
    paths = Paths.from_env(str(d.edge_dir))
    for root, dirs, files in os.walk(paths.state_dir):
        for name in [*dirs, *files, "."]:
            os.lchown(os.path.join(root, name), 4242, 4242)
    (paths.state_dir / "written-by-root").write_text("x")  # as provisioning from a stick would
    assert update.migrate([d.edge_toml], paths) is update.HookResult.CONTINUE
    owners = {p.stat().st_uid for p in paths.state_dir.rglob("*")}
    assert owners == {4242}, owners


def test_migrate_rolls_back_when_the_new_version_rejects_the_configuration(
        deploy: Callable[..., LoopbackDeployment], runtime: Path, tmp_path: Path) -> None:
    d = deploy()
    d.stop()
    bad = layer(tmp_path, "bad.toml", "[spool]\nretention_hourz = 1\n")
    out = run_hook("ArtifactReboot_Leave_10_migrate", "--config", str(d.edge_toml), "--config", bad)
    assert out.returncode == 1 and "retention_hourz" in out.stderr


def test_commit_gate_passes_when_the_edge_serves_and_the_cloud_acknowledges(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    d = deploy()
    out = run_hook("ArtifactCommit_Enter_10_health_gate", "--config", str(d.edge_toml), "--timeout-s", "90",
                   "--settle-s", "3")
    assert out.returncode == 0, out.stderr[-3000:] + d.log_tail()
    for check in update.GateCheck:
        assert f"CHECK={check.value}" in out.stderr
    assert "commit gate settling" in out.stderr and "SETTLE_S=3.0" in out.stderr


def test_commit_gate_rolls_back_when_the_edge_dies_after_passing_its_checks(
        deploy: Callable[..., LoopbackDeployment], runtime: Path, tmp_path: Path) -> None:
    d = deploy()
    err = tmp_path / "gate.err"
    env = dict(os.environ, MGW=MGW, MGW_HOOK_ARGS=f"--config {d.edge_toml} --timeout-s 90 --settle-s 600")
    with open(err, "wb") as fh:
        gate = subprocess.Popen([str(HOOKS / "ArtifactCommit_Enter_10_health_gate")], env=env, stderr=fh,
                                stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: gate.poll() is not None or "commit gate settling" in err.read_text(), 120,
                 "the gate to pass every check once")
        assert gate.poll() is None, err.read_text()[-3000:]  # it holds: no commit on a first pass
        d.kill_edge()  # acknowledged its probe, answered C-ECHO, then died
        gate.wait(120)  # far less than the 600 s window: the first failed check ends it
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()
    text = err.read_text()
    assert gate.returncode == 1, text[-3000:]
    assert "commit gate check failed while settling" in text and "update committed" not in text
    assert "CHECK=service-ready" in text or "CHECK=c-echo" in text


def test_commit_gate_rolls_back_when_systemd_restarted_the_unit_while_settling(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    from gateway.adapters.systemd_unit import UnitState

    d = deploy()
    settings = load_edge([d.edge_toml])
    paths = Paths.from_env(str(d.edge_dir))
    seen: list[UnitState] = []

    def unit() -> UnitState:  # what `systemctl show` reports: running, then running again after a restart
        status = read_edge_status(paths.runtime_dir)  # the same main process: only the count moves
        seen.append(UnitState("active", "running", 0 if len(seen) < 3 else 1, int(status["pid"]) if status else 0))
        return seen[-1]

    probe = update.default_probe(settings, paths)
    probe.unit, probe.settle_poll_s = unit, 0.2
    assert update.commit_gate(settings, paths, probe, timeout_s=90, settle_s=600) is update.HookResult.ROLLBACK
    assert len(seen) == 4  # failed at the first check that saw the restart, not at the window's end


def test_commit_gate_rolls_back_when_the_cloud_never_acknowledges(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    d = deploy()
    d.kill_cloud()
    out = run_hook("ArtifactCommit_Enter_10_health_gate", "--config", str(d.edge_toml), "--timeout-s", "6")
    assert out.returncode == 1
    assert "commit gate timed out" in out.stderr and "CHECK=cloud-ack" in out.stderr


def test_commit_gate_rolls_back_when_no_edge_of_this_version_is_ready(
        deploy: Callable[..., LoopbackDeployment], runtime: Path) -> None:
    d = deploy()
    d.kill_edge()
    out = run_hook("ArtifactCommit_Enter_10_health_gate", "--config", str(d.edge_toml), "--timeout-s", "2")
    assert out.returncode == 1 and "CHECK=service-ready" in out.stderr


def test_rollback_hook_records_and_goes_on_when_run() -> None:
    out = run_hook("ArtifactRollback_Leave_10_record")
    assert out.returncode == 0 and "update rolled back" in out.stderr
