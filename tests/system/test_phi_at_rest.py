"""No plaintext patient data at rest, on the box or in the cloud archive (issue "the box holds its ground").

Real images go through a real deployment with DCMTK storescu; an unreadable dataset is
quarantined on receipt, an item is quarantined after packing, an emergency export is written,
and the cloud archives the rest. Then every file of the box's state directory (spool, blobs,
incoming, quarantine, outbox, databases, keys), the services' temporary directory, the export
and the cloud archive directory is scanned for the images' patient names and IDs and for
windows of their pixel data. UIDs are not searched: the indexes hold them by design
(docs/security.md, limits).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from gateway import config
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolStore
from gateway.appliance.export import export_unacked
from gateway.core import spool
from gateway.core.spool import ItemState
from gateway.edge import cache
from gateway.loopback import EDGE_AE, LoopbackDeployment
from gateway.paths import Paths
from tests.peers import data_store_dir, real_images, send_verbatim, wait_for
from tests.system.reconcile import acknowledged_count, reconcile, state_count
from tests.system.test_end_to_end import _send

Deploy = Callable[..., LoopbackDeployment]
MIN_TEXT = 6  # shorter strings could occur by chance in megabytes of ciphertext


def _secrets(files: list[Path]) -> dict[bytes, str]:
    """Patient names and IDs (whole and by name component) and a 64-byte pixel data window of each."""
    found: dict[bytes, str] = {}
    for path in files:
        ds = dcmread(path)
        for keyword in ("PatientName", "PatientID", "OtherPatientIDs"):
            value = str(ds.get(keyword, "") or "").strip()
            for part in {value, *value.split("^")}:
                if len(part.strip()) >= MIN_TEXT:
                    found[part.strip().encode()] = f"{path.name} {keyword}"
        pixels = bytes(ds.get("PixelData", b"") or b"")
        middle = len(pixels) // 2
        window = pixels[middle:middle + 64]
        if len(set(window)) >= 16:  # varied enough that it cannot be an accident of padding
            found[window] = f"{path.name} pixel data"
    return found


def _scan(roots: list[Path], secrets: dict[bytes, str]) -> tuple[list[Path], list[str]]:
    files = [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]
    leaks = []
    for path in files:
        raw = path.read_bytes()
        leaks += [f"{path}: {what}" for secret, what in secrets.items() if secret in raw]
    return files, leaks


def _quarantine_one_packed(d: LoopbackDeployment) -> None:
    store = SpoolStore(d.edge_dir / "spool.db")
    try:
        item = store.in_state(ItemState.PACKED)[0]
        store.transition(item.id, spool.CloudRejected(reason="cloud: TOO_LARGE"), 0.0)
    finally:
        store.close()


def test_no_plaintext_patient_data_is_at_rest_when_a_study_is_received_quarantined_exported_and_archived(
        deploy: Deploy) -> None:
    d = deploy()
    files = real_images()
    unreadable = data_store_dir() / "emri_small_jpeg_2k_lossless_too_short.dcm"  # real, cut short
    secrets = _secrets(files)
    assert sum("pixel" in w for w in secrets.values()) >= 4 and any("Patient" in w for w in secrets.values())
    assert all(any(s in p.read_bytes() for p in files) for s in secrets)  # the scan can find what it looks for
    d.broker.stop()  # nothing leaves yet: items stay for quarantine and export
    _send(d, files)
    assert send_verbatim(d.dicom_port, [unreadable], EDGE_AE) == [0xC210]
    wait_for(lambda: state_count(d, "packed") == len(files), 120, "every instance packed")
    d.kill_edge()
    _quarantine_one_packed(d)
    settings = config.load_edge([d.edge_toml])
    paths = Paths.from_env(settings.box.state_dir, base=d.edge_toml.parent)
    (d.root / "stick").mkdir()
    export = export_unacked(settings, paths, d.root / "stick")
    assert len(export.transfers) == len(files) - 1
    d.start_edge()
    d.broker.start()
    wait_for(lambda: acknowledged_count(d) == len(files) - 1, 120, "the rest acknowledged by the cloud")

    scanned, leaks = _scan([d.edge_dir, d.tmp_dir, d.root / "stick", d.cloud_dir / "archive"], secrets)
    quarantined = list((d.edge_dir / "spool" / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.endswith(".mgwc") and quarantined[0] in scanned
    assert any(p.suffix == ".mgwx" for p in scanned)  # the export was scanned
    archived = [p for p in scanned if p.is_relative_to(d.cloud_dir / "archive") and p.suffix == ".mgwc"]
    assert len(archived) == len(files) - 1  # so were the archived objects, all sealed
    assert leaks == []


def test_plaintext_an_older_version_left_is_sealed_when_the_edge_starts(deploy: Deploy) -> None:
    d = deploy()
    d.broker.stop()
    source = real_images()[0]
    _send(d, [source])
    wait_for(lambda: state_count(d, "packed") == 1, 60, "the instance packed")
    d.kill_edge()
    blob_dir, quarantine = d.edge_dir / "spool" / "blobs", d.edge_dir / "spool" / "quarantine"
    key = FileKeyStore(d.edge_dir / "keys").secret(cache.KEY_NAME)
    store = SpoolStore(d.edge_dir / "spool.db")
    try:  # as an older version left them: a plaintext blob named by its row, a plaintext quarantined file
        (item,) = store.in_state(ItemState.PACKED)
        sealed = blob_dir / item.blob_name
        plain = sealed.with_name(sealed.name.removesuffix(cache.SEALED_SUFFIX))
        plain.write_bytes(b"".join(cache.read_blob(sealed, key)))
        sealed.unlink()
        store.rename_blob(item.blob_name, plain.name)
    finally:
        store.close()
    (quarantine / "old.dcm").write_bytes(source.read_bytes())
    assert _scan([d.edge_dir], _secrets([source]))[1]  # plaintext is there now
    d.start_edge()
    wait_for(lambda: (blob_dir / sealed.name).is_file(), 30, "the blob sealed at start")
    assert sorted(p.name for p in quarantine.iterdir()) == ["old.dcm.mgwc"]
    assert _scan([d.edge_dir], _secrets([source]))[1] == []
    assert "plaintext left by an older version sealed" in (d.root / "edge.log").read_text()
    d.broker.start()
    wait_for(lambda: acknowledged_count(d) == 1, 60, "the instance acknowledged")
    assert reconcile(d, [source]).clean
