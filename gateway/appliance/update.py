"""Update hooks of an A/B (Mender/RAUC style) update, as steps with the hook contract.

Exit status (``HookResult``): 0 go on, 1 roll back, 21 retry later. Every step
is safe to run again after a power cut: it only reads, or does idempotent work
(a transactional schema migration, an atomically replaced backup).

* ``pre_install`` (ArtifactInstall_Enter): 21 while a modality holds an
  association open (an ESTABLISHED TCP connection on the DICOM port, read from
  ``<proc>/net/tcp*``), while an MPPS step is IN PROGRESS, while a study arrived
  in the last ``update_quiet_s``, or when the data partition lacks room; else 0.
* ``pre_reboot`` (ArtifactReboot_Enter): the same exam checks once more right
  before the reboot, since writing the slot takes minutes; 21 or 0.
* ``migrate`` (ArtifactReboot_Leave, in the new slot): the new software must
  accept the configuration and identity on the data partition, and the spool
  database must pass its integrity check (read only), else 1. It does not
  migrate: the edge service owns the migration (``store.migrate_spool`` backs
  the older schema up, then migrates, under the write lock, when the service
  opens the database), so the hook and the service never race over it.
* ``commit_gate`` (ArtifactCommit_Enter): within ``commit_gate_timeout_s`` the
  new version's edge service is ready (and its unit active and running, where
  systemd runs), C-ECHO answers 0x0000, the uplink is connected, a synthetic
  probe instance is acknowledged by the cloud (end to end), and the database
  passes its integrity check. Then it holds for ``commit_gate_settle_s``: the
  service (same pid, same restart count), C-ECHO and the uplink are checked
  again every ``settle_poll_s``, and one failure is 1; so is the timeout. On 1
  the updater rolls back.
"""

from __future__ import annotations

import enum
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway import __version__
from gateway.adapters import dicom_probe, ports, systemd_unit
from gateway.adapters.exam_store import UTILISATION_DB, mpps_in_progress
from gateway.adapters.store import BACKUP_DIR as BACKUP_DIR
from gateway.adapters.store import MIGRATIONS, SpoolStore, integrity_ok_of, schema_version_of
from gateway.adapters.systemd_unit import UnitState
from gateway.appliance.status import EDGE_STATUS_FILE, read_edge_status, read_uplink
from gateway.appliance.usb import hand_over
from gateway.config import EdgeSettings, load_edge
from gateway.core import admission
from gateway.core.errors import GatewayError, LocalError
from gateway.core.spool import ItemState
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger(__name__)
GATE_CALLING_AE = admission.GATE_AE  # admitted from the box itself (core.admission)


class HookResult(enum.IntEnum):
    CONTINUE = 0
    ROLLBACK = 1
    RETRY_LATER = 21


class GateCheck(enum.Enum):
    SERVICE_READY = "service-ready"
    ECHO = "c-echo"
    UPLINK = "uplink"
    CLOUD_ACK = "cloud-ack"
    INTEGRITY = "integrity"


# Held for the whole settle window, again and again, after every check passed once.
SETTLE_CHECKS = (GateCheck.SERVICE_READY, GateCheck.ECHO, GateCheck.UPLINK)
EDGE_UNIT = "mgw-edge.service"


def established_connections(port: int, proc_root: Path = Path("/proc")) -> int:
    """ESTABLISHED TCP connections whose local port is ``port`` (IPv4 and IPv6)."""
    return len(ports.tcp_sockets(port, ports.TCP_ESTABLISHED, proc_root))


def pre_install(settings: EdgeSettings, paths: Paths, proc_root: Path = Path("/proc"),
                now: float | None = None) -> HookResult:
    """Before the new slot is written: 21 while an exam may be under way (``_exam_activity``) or
    without room on the data partition."""
    now = time.time() if now is None else now
    busy = _exam_activity(settings, paths, proc_root, now)
    if busy is not None:
        return _refuse(busy[0], **busy[1])
    db_bytes = paths.spool_db.stat().st_size if paths.spool_db.exists() else 0
    need = max(settings.appliance.update_min_free_bytes, 2 * db_bytes)
    free = shutil.disk_usage(paths.state_dir).free if paths.state_dir.exists() else 0
    if free < need:
        return _refuse("not enough free space on the data partition", FREE_BYTES=free, NEED_BYTES=need)
    log.info("update may install", extra={"MESSAGE_ID": MSG.UPDATE_ALLOWED.value, "VERSION": __version__})
    return HookResult.CONTINUE


def pre_reboot(settings: EdgeSettings, paths: Paths, proc_root: Path = Path("/proc"),
               now: float | None = None) -> HookResult:
    """Right before the reboot into the new slot (ArtifactReboot_Enter): the same exam checks
    again, since an exam may have begun while the slot was written."""
    busy = _exam_activity(settings, paths, proc_root, time.time() if now is None else now)
    if busy is not None:
        return _refuse(busy[0], **busy[1])
    log.info("update may reboot", extra={"MESSAGE_ID": MSG.UPDATE_ALLOWED.value, "VERSION": __version__,
                                         "STEP": "pre-reboot"})
    return HookResult.CONTINUE


def _exam_activity(settings: EdgeSettings, paths: Paths, proc_root: Path,
                   now: float) -> tuple[str, dict[str, object]] | None:
    """Why an update must wait, with its fields, or None: an association open on the DICOM
    port, an MPPS step IN PROGRESS (updated within ``update_mpps_stale_s``), or an instance
    received within ``update_quiet_s``."""
    busy = established_connections(_dicom_port(settings, paths), proc_root)
    if busy:
        return "an association is active", {"ASSOCIATIONS": busy}
    steps = mpps_in_progress(paths.state_dir / UTILISATION_DB, now - settings.appliance.update_mpps_stale_s)
    if steps:
        return "an MPPS step is in progress", {"MPPS_IN_PROGRESS": steps}
    if paths.spool_db.exists():
        store = SpoolStore(paths.spool_db)
        try:
            last = store.last_received_at()
        finally:
            store.close()
        if now - last < settings.appliance.update_quiet_s:
            return "a study arrived recently", {"SECONDS_AGO": round(now - last, 1)}
    return None


def _refuse(reason: str, **fields: object) -> HookResult:
    log.warning("update deferred: %s", reason, extra={
        "MESSAGE_ID": MSG.UPDATE_DEFERRED.value, "REASON": reason, **fields})
    return HookResult.RETRY_LATER


def migrate(config_files: list[Path], paths: Paths) -> HookResult:
    """In the new slot: the new software must accept the configuration, the identity and the spool
    database (its schema read and its integrity checked, read only). The migration itself is not
    done here: the edge service does it when it opens the database (``store.migrate_spool``: a
    backup of the older schema first, under the write lock), so there is one owner whatever
    order this hook and the service start in."""
    try:
        settings = load_edge(config_files)
        for key_file in (settings.mqtt.cert_file, settings.mqtt.key_file, settings.mqtt.ca_file):
            if key_file and not paths.key_file(key_file).is_file():
                return _rollback("identity file missing", FILE=key_file)
        if not paths.spool_db.exists():
            return HookResult.CONTINUE  # never ran: nothing to carry over
        version = schema_version_of(paths.spool_db)
        ok = integrity_ok_of(paths.spool_db)
        hand_over(paths.state_dir)  # the updater runs us as root; the service user must own its files
    except GatewayError as exc:
        return _rollback(str(exc))
    if not ok:
        return _rollback("spool database fails its integrity check")
    log.info("new slot accepts the data partition", extra={
        "SCHEMA": version, "SCHEMA_OF_THIS_VERSION": len(MIGRATIONS), "BOX_ID": settings.box.id,
        "VERSION": __version__})
    return HookResult.CONTINUE


def _rollback(reason: str, **fields: object) -> HookResult:
    log.error("update must roll back: %s", reason, extra={
        "MESSAGE_ID": MSG.UPDATE_GATE_FAILED.value, "REASON": reason, **fields})
    return HookResult.ROLLBACK


def edge_unit_state() -> UnitState | None:
    return systemd_unit.unit_state(EDGE_UNIT)


@dataclass
class GateProbe:
    """How the gate reaches the edge: ``send`` is the C-STORE of the probe file; ``unit`` the edge
    unit's state from systemd (None where systemd does not run: the pid in edge.json then stands
    for it)."""

    host: str
    send: Callable[[Path], None]
    poll_s: float = 0.5
    settle_poll_s: float = 2.0
    unit: Callable[[], UnitState | None] = field(default_factory=lambda: edge_unit_state)


@dataclass
class _Baseline:
    """The edge as the gate first saw it ready: any other pid or restart count later is a restart."""

    pid: int = 0
    restarts: int | None = None


def commit_gate(settings: EdgeSettings, paths: Paths, probe: GateProbe, timeout_s: float | None = None,
                version: str = __version__, settle_s: float | None = None) -> HookResult:
    """Every check once within the timeout, then the service checks again and again for the
    settle window: one failure in it rolls back."""
    wait_s = settings.appliance.commit_gate_timeout_s if timeout_s is None else timeout_s
    window_s = settings.appliance.commit_gate_settle_s if settle_s is None else settle_s
    baseline = _Baseline()
    pending = _first_pass(settings, paths, probe, version, baseline, time.monotonic() + wait_s)
    if pending is not None:
        return _rollback("commit gate timed out", CHECK=pending.value)
    failed = _settle(settings, paths, probe, version, baseline, window_s)
    if failed is not None:
        return _rollback("commit gate check failed while settling", CHECK=failed[0].value, ERROR=failed[1])
    log.info("update committed", extra={"MESSAGE_ID": MSG.UPDATE_COMMITTED.value, "VERSION": version})
    return HookResult.CONTINUE


def _first_pass(settings: EdgeSettings, paths: Paths, probe: GateProbe, version: str, baseline: _Baseline,
                deadline: float) -> GateCheck | None:
    """Each check in order until it passes; None once all did, else the one pending at the deadline."""
    pending = list(GateCheck)
    sop_uid = ""
    while True:
        try:
            while pending and _check(pending[0], settings, paths, probe, version, sop_uid, baseline):
                log.info("commit gate check passed", extra={"CHECK": pending.pop(0).value})
            if pending and pending[0] is GateCheck.CLOUD_ACK and not sop_uid:
                sop_uid = _send_probe(probe)
                continue
        except GatewayError as exc:
            log.info("commit gate check not yet passed", extra={"CHECK": pending[0].value, "ERROR": str(exc)})
        if not pending:
            return None
        if time.monotonic() >= deadline:
            return pending[0]
        time.sleep(probe.poll_s)


def _settle(settings: EdgeSettings, paths: Paths, probe: GateProbe, version: str, baseline: _Baseline,
            window_s: float) -> tuple[GateCheck, str] | None:
    """``SETTLE_CHECKS`` every ``settle_poll_s`` for ``window_s``: the first failure, or None."""
    log.info("commit gate settling", extra={"SETTLE_S": window_s, "CHECKS": ",".join(c.value for c in SETTLE_CHECKS)})
    end = time.monotonic() + window_s
    while True:
        for check in SETTLE_CHECKS:
            try:
                if not _check(check, settings, paths, probe, version, "", baseline):
                    return check, "not healthy"
            except GatewayError as exc:
                return check, str(exc)
        left = end - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(probe.settle_poll_s, left))


def _check(check: GateCheck, settings: EdgeSettings, paths: Paths, probe: GateProbe,
           version: str, sop_uid: str, baseline: _Baseline) -> bool:
    if check is GateCheck.SERVICE_READY:
        return _service_steady(paths, probe, version, baseline)
    if check is GateCheck.ECHO:
        port = _dicom_port(settings, paths)
        if baseline.pid and not _edge_listens(baseline.pid, port, paths):
            raise LocalError(f"port {port} is not the listener of the edge service (pid {baseline.pid})")
        return dicom_probe.echo(probe.host, port, settings.dicom.ae_title, _calling(settings), source=probe.host) == 0
    if check is GateCheck.UPLINK:
        uplink = read_uplink(paths.state_dir)
        return uplink is not None and uplink.up
    if check is GateCheck.CLOUD_ACK:
        if not sop_uid:
            return False
        store = SpoolStore(paths.spool_db)
        try:
            items = store.by_sop_instance(sop_uid)
        finally:
            store.close()
        return any(i.state in (ItemState.ACKNOWLEDGED, ItemState.PURGED) for i in items)
    store = SpoolStore(paths.spool_db)
    try:
        return store.integrity_ok()
    finally:
        store.close()


def _edge_listens(pid: int, port: int, paths: Paths) -> bool:
    """The edge (``pid``) holds the listener on ``port``. The gate's own unit hides other users'
    processes (ProtectProc=invisible, no CAP_SYS_PTRACE), so where it may not list the edge's
    sockets it asks instead that the listener belongs to the user who wrote the edge's status
    file (the edge's own user: nothing else of that user listens on the box)."""
    if ports.can_inspect(pid):
        return ports.listens(pid, port)
    try:
        owner = (paths.runtime_dir / EDGE_STATUS_FILE).stat().st_uid
    except OSError:
        return False
    return owner != 0 and owner in ports.listening_uids(port)


def _service_steady(paths: Paths, probe: GateProbe, version: str, baseline: _Baseline) -> bool:
    """The edge of ``version`` runs (its pid alive), its unit is active and running, and it is the
    same process, with the same restart count, as when the gate first saw it ready."""
    status = read_edge_status(paths.runtime_dir)
    if status is None or status.get("version") != version:
        raise LocalError(f"no edge service of version {version} is running")
    unit = probe.unit()
    if unit is not None and not unit.running:
        raise LocalError(f"{EDGE_UNIT} is {unit.active}/{unit.sub}")
    pid, restarts = int(status["pid"]), None if unit is None else unit.restarts
    if unit is not None and unit.main_pid and unit.main_pid != pid:
        raise LocalError(f"the edge's status names pid {pid}, but {EDGE_UNIT}'s main process is {unit.main_pid}")
    if baseline.pid == 0:
        baseline.pid, baseline.restarts = pid, restarts
    if pid != baseline.pid or restarts != baseline.restarts:
        raise LocalError(f"the edge service restarted (pid {baseline.pid} -> {pid}, "
                         f"restarts {baseline.restarts} -> {restarts})")
    return True


def _dicom_port(settings: EdgeSettings, paths: Paths) -> int:
    """The listener's port; with ``dicom.port = 0``, the one the running edge reported (adapters/ports.py)."""
    return ports.bound_port(settings.dicom.port, paths.state_dir, "edge", "dicom")


def _calling(settings: EdgeSettings) -> str:
    """The listener admits MGW-GATE from the box's own address whatever its allow-lists say."""
    return GATE_CALLING_AE


def _send_probe(probe: GateProbe) -> str:
    with tempfile.TemporaryDirectory(prefix="mgw-gate-") as tmp:
        path = Path(tmp) / "probe.dcm"
        uid = dicom_probe.write_probe_instance(path)
        probe.send(path)
    log.info("commit gate probe sent", extra={"CHECK": GateCheck.CLOUD_ACK.value})
    return uid


def default_probe(settings: EdgeSettings, paths: Paths) -> GateProbe:
    from gateway.adapters.dicom_scu import pynetdicom_store
    from gateway.core.errors import PeerError

    host = "127.0.0.1" if settings.dicom.bind_host in ("0.0.0.0", "", "::") else settings.dicom.bind_host  # noqa: S104

    def send(path: Path) -> None:
        statuses = pynetdicom_store(host, _dicom_port(settings, paths), settings.dicom.ae_title, _calling(settings),
                                    [path], source=host)
        if statuses != [0]:
            raise PeerError(f"probe C-STORE status {statuses}")

    return GateProbe(host, send)


def rolled_back() -> HookResult:
    """ArtifactRollback: the old slot runs again on the same data partition (migrations are additive)."""
    log.warning("update rolled back", extra={"MESSAGE_ID": MSG.UPDATE_ROLLED_BACK.value, "VERSION": __version__})
    return HookResult.CONTINUE
