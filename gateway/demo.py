"""``mgw demo``: the whole product on loopback, with a real study.

A mosquitto broker with a generated config, one cloud ingest worker and one
edge box (both as real ``mgw`` processes with generated TOML), then a real
multi-modality study sent as a modality would (DCMTK storescu, or pynetdicom),
followed through the spool until the cloud archive holds every instance
byte-identical to what the modality sent.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.adapters import dicom_scu
from gateway.core.errors import GatewayError, LocalError
from gateway.core.spool import ItemState
from gateway.i18n import _
from gateway.loopback import BOX_ID, EDGE_AE, LoopbackDeployment

MODALITY_AE = "DEMO_MODALITY"
TIMEOUT_S = 180.0

# Real images from the pydicom-data wheel: CT, MR, CR, US, NM, SC; uncompressed,
# big endian, JPEG 2000, JPEG-LS, RLE and JPEG lossless; one in ISO_IR 192.
STUDY = [
    "693_UNCI.dcm", "693_J2KR.dcm", "MR2_UNCI.dcm", "emri_small_jpeg_ls_lossless.dcm",
    "RG1_UNCI.dcm", "US1_UNCI.dcm", "OBXXXX1A_rle.dcm", "OBXXXX1A_expb.dcm",
    "JPEG-LL.dcm", "SC_rgb.dcm",
]
FALLBACK = ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "US1_J2KR.dcm"]


def study_files() -> list[Path]:
    """The demo study, from installed packages only (never the network)."""
    try:
        import data_store

        root = Path(data_store.__file__).parent / "data"
        files = [root / name for name in STUDY if (root / name).exists()]
        if len(files) >= 3:
            return files
    except ImportError:
        pass
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    files = [root / name for name in FALLBACK if (root / name).exists()]
    if not files:
        raise LocalError(_("no DICOM test data installed (pip install pydicom-data)"))
    return files


@dataclass
class Summary:
    instances_sent: int = 0
    acknowledged: int = 0
    hash_matched: int = 0
    bytes_original: int = 0
    bytes_on_wire: int = 0
    seconds: float = 0.0
    sender: str = ""
    dashboard_url: str = ""
    ok: bool = False


def _console_account(deployment: LoopbackDeployment) -> tuple[str, str]:
    """An admin account of the demo's console, with a fresh random password (the demo prints it)."""
    import secrets

    from gateway import config
    from gateway.cloud import backends
    from gateway.cloud.fleet.accounts import Accounts, Actor
    from gateway.core.access import Role
    from gateway.paths import Paths

    settings = config.load_cloud([deployment.fleet_toml])
    store = backends.open_fleet_store(settings, Paths.from_env(settings.cloud.state_dir,
                                                               base=deployment.fleet_toml.parent))
    try:
        password = secrets.token_urlsafe(12)
        Accounts(store.auth, settings.fleet.auth).create("demo", password, Role.ADMIN, None,
                                                         Actor("cli:mgw-demo", "cli", ""))
    finally:
        store.close()
    return "demo", password


def _sha(pieces: Iterable[bytes]) -> str:
    """SHA-256 of an archived object opened in memory ("" if it cannot be opened or differs)."""
    digest = hashlib.sha256()
    try:
        for piece in pieces:
            digest.update(piece)
    except GatewayError:
        return ""
    return digest.hexdigest()


def _verify(root: Path, files: list[Path], summary: Summary, progress: bool) -> None:
    """Wait until the cloud holds every instance the edge received, byte-identical.

    "Identical" is judged against the SHA-256 the edge computed over the bytes
    the modality sent, at the moment it answered success: DCMTK's storescu may
    re-encode a file's dataset on the way (group lengths, padding), so the file
    on disk at the modality is not the reference; what crossed the wire is.
    """
    from gateway.adapters.store import SpoolStore
    from gateway.cloud.archive.store import Archive

    deadline = time.monotonic() + TIMEOUT_S
    matched: set[str] = set()
    archive = Archive(root / "cloud" / "archive", root / "cloud" / "archive.db")
    store = SpoolStore(root / "edge" / "spool.db")
    try:
        while time.monotonic() < deadline:
            received = {i.identity.sha256: i for i in store.in_state(*ItemState, limit=10**6)}
            for record in archive.instances():
                sha256 = record.identity.sha256
                if sha256 in received and sha256 not in matched \
                        and _sha(archive.open(record)) == sha256:  # decrypted in memory
                    matched.add(sha256)
                    item = received[sha256]
                    if progress:
                        print(_("  [{done}/{total}] item {item}: {megabytes:.2f} MB in the cloud archive, SHA-256 "
                                "matches").format(done=len(matched), total=len(files), item=item.id,
                                                  megabytes=item.identity.size / 1e6), file=sys.stderr)
            acked = [i for i in received.values() if i.state in (ItemState.ACKNOWLEDGED, ItemState.PURGED)]
            summary.acknowledged = len(acked)
            if len(matched) >= len(files) and len(acked) >= len(files):
                break
            time.sleep(0.25)
        summary.bytes_on_wire = int(store.db.rows("SELECT COALESCE(SUM(packed_bytes), 0) FROM items")[0][0])
    finally:
        archive.close()
        store.close()
    summary.hash_matched = len(matched)


def _wait_for_interrupt() -> None:
    def _raise(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def run_demo(once: bool, as_json: bool, workdir: Path | None, keep: bool) -> int:
    root = workdir or Path(tempfile.mkdtemp(prefix="mgw-demo-"))
    def say(msg: str) -> None:
        if not as_json:
            print(msg, file=sys.stderr)

    summary = Summary()
    started = time.monotonic()
    deployment: LoopbackDeployment | None = None
    try:
        files = study_files()
        deployment = LoopbackDeployment(root, secure=True, modalities=(f"{MODALITY_AE}@127.0.0.1",))
        deployment.start()
        say(_("mgw demo: fleet CA made; box {box} provisioned with a one-time token over {url}; broker on "
              "127.0.0.1:{port} (mutual TLS, per-box ACL); cloud and edge running, state in {root}").format(
            box=BOX_ID, url=deployment.enrol_url, port=deployment.broker.port, root=root))
        summary.dashboard_url = deployment.dashboard_url
        user, password = _console_account(deployment)
        say(_("mgw demo: fleet dashboard at {url} (HTTPS; its certificate is the fleet CA's: trust {ca} in the "
              "browser); log in as {user}, password {password}").format(
            url=deployment.dashboard_url, ca=deployment.console_ca_file, user=user, password=password))
        summary.instances_sent = len(files)
        summary.bytes_original = sum(f.stat().st_size for f in files)
        say(_("mgw demo: sending {count} real instances ({megabytes:.1f} MB) to {ae}@127.0.0.1:{port}").format(
            count=len(files), megabytes=summary.bytes_original / 1e6, ae=EDGE_AE, port=deployment.dicom_port))
        summary.sender = dicom_scu.send_study("127.0.0.1", deployment.dicom_port, EDGE_AE, MODALITY_AE, files)
        say(_("mgw demo: the modality ({sender}) got success for every instance; following them to the cloud")
            .format(sender=summary.sender))
        _verify(root, files, summary, progress=not as_json)
        summary.seconds = round(time.monotonic() - started, 2)
        summary.ok = summary.hash_matched == summary.instances_sent == summary.acknowledged
        if summary.ok and not once and not as_json:
            say(_("mgw demo: running. Send more with: {command}   (Ctrl-C stops; the box admits only "
                  "{ae}@127.0.0.1)").format(ae=MODALITY_AE, command=f"storescu -aet {MODALITY_AE} -aec {EDGE_AE} "
                                                                     f"127.0.0.1 {deployment.dicom_port} FILE.dcm"))
            say(_("mgw demo: open the dashboard: {url}").format(url=deployment.dashboard_url))
            _wait_for_interrupt()
    except GatewayError as exc:
        say(_("mgw demo: failed: {reason}").format(reason=exc))
        if deployment is not None:
            say(deployment.log_tail())
    finally:
        if deployment is not None:
            deployment.stop()
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print((_("instances sent {sent}, acknowledged {acked}, hash-matched {matched}; {mb_in:.1f} MB in, "
                 "{mb_wire:.1f} MB on the wire, {seconds} s: OK") if summary.ok else
               _("instances sent {sent}, acknowledged {acked}, hash-matched {matched}; {mb_in:.1f} MB in, "
                 "{mb_wire:.1f} MB on the wire, {seconds} s: FAILED")).format(
            sent=summary.instances_sent, acked=summary.acknowledged, matched=summary.hash_matched,
            mb_in=summary.bytes_original / 1e6, mb_wire=summary.bytes_on_wire / 1e6, seconds=summary.seconds))
    return 0 if summary.ok else 1
