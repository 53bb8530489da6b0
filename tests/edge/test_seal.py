"""The one seal of a spooled item (gateway.edge.seal), with a real spool, real files and real keys.

What the seal writes is opened the way the cloud opens it (``core.transfer.open_object`` with
the cloud's private key and image decoders) and must give back the original under the item's
identity. The packer and the USB export seal through it: with the same randomness they write
the same frames. A blob that no longer holds its identity's bytes is refused by the seal, the
packer and the quarantine's replay check alike.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway import config
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolItem, SpoolStore
from gateway.appliance import export
from gateway.codecs import pixel
from gateway.codecs.imagecodecs_codec import IMAGE_DECODERS
from gateway.core import envelope
from gateway.core.codec import Codec
from gateway.core.errors import IntegrityError
from gateway.core.framing import MIN_FRAME_BYTES, parse_chunk
from gateway.core.instance import InstanceIdentity
from gateway.core.spool import ItemState
from gateway.core.transfer import Manifest, open_object, unwrap_key
from gateway.edge import cache
from gateway.edge.packer import MAX_BUDGET_SCALE, Packer, frame_offset, outbox_path
from gateway.edge.seal import intact, seal_item
from gateway.paths import Paths
from tests.peers import real_images

BOX_ID = "box-seal-1"
FRAME_BYTES = 4 * MIN_FRAME_BYTES
NOW = 1_900_000_000.0


@dataclass
class Box:
    settings: config.EdgeSettings
    paths: Paths
    store: SpoolStore
    cache_key: bytes
    cloud_private: bytes

    @property
    def cloud_public(self) -> bytes:
        return envelope.public_key_of(self.cloud_private)

    def spool(self, data: bytes, transfer_syntax_uid: str, n: int = 1) -> SpoolItem:
        """``data`` received and spooled as the edge does it: sealed at rest, row RECEIVED."""
        blob = f"{hashlib.sha256(data).hexdigest()[:16]}-{n}{cache.SEALED_SUFFIX}"
        cache.write_sealed(self.paths.blob_dir / blob, self.cache_key, [data])
        identity = InstanceIdentity(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{n}",
            study_instance_uid="1.2.826.0.1.3680043.8.498.100", series_instance_uid="",
            transfer_syntax_uid=transfer_syntax_uid, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        item = self.store.get(self.store.add_received(identity, "MODALITY", blob, NOW))
        assert item is not None
        return item

    def seal(self, item: SpoolItem, pixel_codec: bool) -> list[bytes]:
        sealed = seal_item(item, self.paths.blob_dir, self.cache_key, box_id=BOX_ID, cloud_public=self.cloud_public,
                           frame_bytes=FRAME_BYTES, zstd_level=3, pixel_codec=pixel_codec)
        frames = list(sealed.frames)
        assert parse_chunk(frames[0]).transfer_id == sealed.transfer_id
        return frames

    def open(self, frames: list[bytes]) -> tuple[Manifest, bytes]:
        """What the cloud does with the frames: unwrap the data key, verify, restore."""
        parsed = [parse_chunk(f) for f in frames]
        pieces = open_object(BOX_ID, unwrap_key(self.cloud_private, parsed[0]), parsed, 1 << 40, IMAGE_DECODERS)
        manifest = next(pieces)
        assert isinstance(manifest, Manifest)
        return manifest, b"".join(p for p in pieces if isinstance(p, bytes))


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    private = bytes(range(1, 33))
    state = tmp_path / "state"
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[box]\nid = "{BOX_ID}"\n'
                    f'cloud_public_key = "{base64.b64encode(envelope.public_key_of(private)).decode()}"\n'
                    f'state_dir = "{state}"\n[uplink]\nmax_frame_bytes = {FRAME_BYTES}\npixel_codec = false\n')
    paths = Paths.from_env(str(state))
    store = SpoolStore(paths.spool_db)
    key = FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME)  # the key the edge and the export use
    yield Box(config.load_edge([toml]), paths, store, key, private)
    store.close()


def deterministic(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def uncompressed_image() -> tuple[bytes, str]:
    """A real image PIXEL applies to (uncompressed little endian, enough pixel data)."""
    for path in real_images():
        data = path.read_bytes()
        ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        if pixel.plan(data[:pixel.HEAD_BYTES], ts) is not None:
            return data, ts
    raise AssertionError("no real image has a pixel plan")


@pytest.mark.parametrize("pixel_codec", [False, True], ids=["zstd", "pixel"])
def test_frames_open_to_the_original_under_the_items_identity_when_an_item_is_sealed(
        box: Box, pixel_codec: bool) -> None:
    data, ts = uncompressed_image()
    item = box.spool(data, ts)

    manifest, restored = box.open(box.seal(item, pixel_codec))

    assert manifest == Manifest(item.identity, Codec.PIXEL2 if pixel_codec else Codec.ZSTD, item.id)
    assert restored == data


def test_seal_uses_zstd_when_the_pixel_codec_is_on_but_the_object_has_no_pixel_plan(box: Box) -> None:
    data = random.Random(3).randbytes(70_000)  # not a DICOM file at all: pydicom cannot plan it
    item = box.spool(data, "1.2.840.10008.1.2.1")

    manifest, restored = box.open(box.seal(item, pixel_codec=True))

    assert (manifest.codec, restored) == (Codec.ZSTD, data)


def test_seal_raises_integrity_error_after_the_last_frame_when_the_blob_no_longer_matches_its_identity(
        box: Box) -> None:
    item = box.spool(b"original bytes" * 500, "1.2.840.10008.1.2.1")
    cache.write_sealed(box.paths.blob_dir / item.blob_name, box.cache_key, [b"original bytez" * 500])

    with pytest.raises(IntegrityError, match=f"spooled blob of item {item.id} no longer matches its hash"):
        box.seal(item, pixel_codec=False)
    assert not intact(item, box.paths.blob_dir, box.cache_key)


def test_intact_is_true_only_when_the_blob_is_readable_and_still_the_identitys_bytes(box: Box) -> None:
    item = box.spool(b"kept" * 100, "1.2.840.10008.1.2.1")
    assert intact(item, box.paths.blob_dir, box.cache_key)
    assert not intact(item, box.paths.blob_dir, None)  # sealed at rest, no key to open it
    (box.paths.blob_dir / item.blob_name).unlink()
    assert not intact(item, box.paths.blob_dir, box.cache_key)


def test_packer_and_export_write_the_same_frames_when_they_seal_one_item_with_the_same_randomness(
        box: Box, tmp_path: Path) -> None:
    data = random.Random(5).randbytes(20_000)
    item = box.spool(data, "1.2.840.10008.1.2.1")
    (tmp_path / "stick").mkdir()

    summary = export.export_unacked(box.settings, box.paths, tmp_path / "stick", NOW, urandom=deterministic(7))
    packer = Packer(box.settings, box.store, box.paths.blob_dir, box.paths.outbox_dir, box.cloud_public,
                    lambda: NOW, urandom=deterministic(7), cache_key=box.cache_key)
    assert packer.pack_one(item)

    packed = box.store.get(item.id)
    assert packed is not None and packed.state is ItemState.PACKED and packed.transfer_id is not None
    outbox = outbox_path(box.paths.outbox_dir, packed.transfer_id).read_bytes()
    assert packed.final_seq is not None
    from_outbox = [outbox[start:start + length]
                   for start, length in (frame_offset(packed, seq) for seq in range(packed.final_seq + 1))]
    [entry] = summary.transfers
    assert entry["transfer_id"] == packed.transfer_id
    assert list(export.read_frames(summary.directory / entry["file"])) == from_outbox
    assert box.open(from_outbox) == (Manifest(item.identity, Codec.ZSTD, item.id), data)


def test_packer_quarantines_the_item_at_once_and_writes_no_outbox_when_its_blob_no_longer_matches(
        box: Box) -> None:
    item = box.spool(b"spooled" * 1000, "1.2.840.10008.1.2.1")
    cache.write_sealed(box.paths.blob_dir / item.blob_name, box.cache_key, [b"changed" * 1000])
    packer = Packer(box.settings, box.store, box.paths.blob_dir, box.paths.outbox_dir, box.cloud_public,
                    lambda: NOW, cache_key=box.cache_key)

    assert not packer.pack_one(item)

    after = box.store.get(item.id)
    assert after is not None and after.state is ItemState.QUARANTINED
    assert after.reason == f"spooled blob of item {item.id} no longer matches its hash"
    assert not box.paths.outbox_dir.exists() or list(box.paths.outbox_dir.iterdir()) == []


def test_packer_raises_the_codec_budget_when_packed_bytes_wait_for_the_uplink(box: Box) -> None:
    uplink = dataclasses.replace(box.settings.uplink, codec_backlog_mb=0.01)  # 10 kB of backlog per step
    settings = dataclasses.replace(box.settings, uplink=uplink)
    packer = Packer(settings, box.store, box.paths.blob_dir, box.paths.outbox_dir, box.cloud_public,
                    lambda: NOW, cache_key=box.cache_key)
    assert packer.effort().scale == 1.0  # nothing waits: the default budget
    assert packer.pack_one(box.spool(random.Random(1).randbytes(20_000), "1.2.840.10008.1.2.1"))
    assert packer.effort().scale == pytest.approx(3.0)  # 20 kB packed, not yet acknowledged
    assert packer.pack_one(box.spool(random.Random(2).randbytes(200_000), "1.2.840.10008.1.2.1", n=2))
    assert packer.effort().scale == MAX_BUDGET_SCALE


def test_seal_writes_codec_2_when_the_cloud_is_older_and_pixel_format_is_1(box: Box) -> None:
    data, ts = uncompressed_image()
    item = box.spool(data, ts)
    sealed = seal_item(item, box.paths.blob_dir, box.cache_key, box_id=BOX_ID, cloud_public=box.cloud_public,
                       frame_bytes=FRAME_BYTES, zstd_level=3, pixel_codec=True, effort=pixel.Effort(pixel_format=1))
    manifest, restored = box.open(list(sealed.frames))
    assert manifest.codec == Codec.PIXEL and restored == data
