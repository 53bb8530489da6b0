"""A box on disk for unit tests of gateway/edge/: real settings from TOML, a real spool database,
real sealed blobs and a real outbox; no broker, no listener."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from gateway import config
from gateway.adapters import keystore
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolItem, SpoolStore
from gateway.config import EdgeSettings
from gateway.core.acksig import AckKeyring, AckSigner
from gateway.core.instance import InstanceIdentity
from gateway.edge import cache
from gateway.paths import Paths
from gateway.tomlwrite import render_toml

BOX_ID = "unit-box"


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Box:
    root: Path
    settings: EdgeSettings
    paths: Paths
    store: SpoolStore
    cache_key: bytes
    cloud_private: bytes
    signer: AckSigner
    clock: Clock = field(default_factory=Clock)

    @property
    def keyring(self) -> AckKeyring:
        return AckKeyring((self.signer.public,))

    def receive(self, name: str = "CT_small.dcm", priority: int = 0, study_uid: str = "") -> SpoolItem:
        """What the listener and ``EdgeService.accept`` leave for one instance: a sealed blob and its row."""
        source = get_testdata_file(name)
        assert source is not None, f"pydicom test file {name} missing"
        raw = Path(source).read_bytes()
        ds = dcmread(source, stop_before_pixels=True)
        sha = hashlib.sha256(raw).hexdigest()
        blob = f"{sha[:16]}-{name}{cache.SEALED_SUFFIX}"
        cache.write_sealed(self.paths.blob_dir / blob, self.cache_key, [raw])
        identity = InstanceIdentity(
            sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=study_uid or str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), size=len(raw), sha256=sha)
        item = self.store.get(self.store.add_received(identity, "MODALITY", blob, self.clock(), priority=priority))
        assert item is not None
        return item

    def original(self, item: SpoolItem) -> bytes:
        return b"".join(cache.read_blob(self.paths.blob_dir / item.blob_name, self.cache_key))


def make_settings(root: Path, cloud_public: str, **tables: dict[str, object]) -> EdgeSettings:
    doc: dict[str, dict[str, object]] = {
        "box": {"id": BOX_ID, "cloud_public_key": cloud_public, "state_dir": str(root / "state")},
        "dicom": {"bind_host": "127.0.0.1", "port": 0},
        "uplink": {"max_frame_bytes": 2048, "window_chunks": 4, "transfers_in_flight": 2, "pixel_codec": False,
                   "ack_timeout_s": 30.0},
    }
    for table, keys in tables.items():
        doc.setdefault(table, {}).update(keys)
    path = root / "edge.toml"
    path.write_text(render_toml(doc))
    return config.load_edge([path])


@pytest.fixture
def make_box(tmp_path: Path) -> Iterator[object]:
    """``make_box(**tables)``: a box whose settings override the defaults above with ``tables``."""
    opened: list[SpoolStore] = []

    def make(**tables: dict[str, object]) -> Box:
        cloud_private = keystore.load_or_create_x25519(tmp_path / "cloud" / "envelope.key")
        settings = make_settings(tmp_path, keystore.public_b64(cloud_private), **tables)
        paths = Paths(tmp_path / "etc", Path(settings.box.state_dir), tmp_path / "run")
        for d in (paths.incoming_dir, paths.blob_dir, paths.outbox_dir, paths.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        store = SpoolStore(paths.spool_db)
        opened.append(store)
        key = FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME)
        signer = AckSigner(keystore.load_or_create_ed25519(tmp_path / "cloud" / "ack.key"))
        return Box(tmp_path, settings, paths, store, key, cloud_private, signer)

    yield make
    for store in opened:
        store.close()
