"""Emergency export: the not-yet-acknowledged instances, sealed to the cloud key, onto a stick.

Layout on the stick, one directory per export::

    MGW-EXPORT-<box>-<UTC time>/
        <transfer>.mgwx     chunk frames exactly as the uplink would publish them,
                            each preceded by its length (4 bytes, big endian)
        manifest.json       written last: box, time, and per transfer its file,
                            frame count, bytes and SHA-256 ("complete": false if
                            the stick filled up)

Packed items are copied from the outbox (their transfer id, so the cloud's
record answers the box's later resend with STORED); items not packed yet are
sealed here with fresh keys (the archive de-duplicates by SOP Instance UID and
hash). Nothing in the spool changes: an exported item is still sent when the
uplink returns. Nothing on the stick is readable without the cloud's key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.adapters import blobs
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolItem, SpoolStore
from gateway.config import EdgeSettings
from gateway.core.codec import Codec
from gateway.core.errors import IntegrityError, SpoolFullError, StorageError
from gateway.core.spool import ItemState
from gateway.core.transfer import Manifest, ObjectKeys, seal_object
from gateway.edge import cache
from gateway.edge.packer import frame_offset, outbox_path
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger(__name__)
EXPORT_FORMAT = "mgw-export"
EXPORT_VERSION = 1
EXPORT_PREFIX = "MGW-EXPORT-"
MANIFEST_NAME = "manifest.json"
FRAME_LENGTH = struct.Struct(">I")
UNACKED = (ItemState.RECEIVED, ItemState.PACKED, ItemState.SENDING)


@dataclass
class ExportSummary:
    directory: Path
    transfers: list[dict] = field(default_factory=list)
    complete: bool = True

    @property
    def bytes(self) -> int:
        return sum(int(t["bytes"]) for t in self.transfers)


def export_unacked(settings: EdgeSettings, paths: Paths, dest_root: Path, now: float | None = None,
                   urandom: Callable[[int], bytes] = os.urandom) -> ExportSummary:
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    summary = ExportSummary(dest_root / f"{EXPORT_PREFIX}{settings.box.id}-{stamp}")
    summary.directory.mkdir(parents=True, exist_ok=True)
    store = SpoolStore(paths.spool_db)
    try:
        for item in store.in_state(*UNACKED, limit=10**9):
            try:
                summary.transfers.append(_export_item(settings, paths, item, summary.directory, urandom))
            except SpoolFullError:
                summary.complete = False
                log.warning("stick full: export incomplete", extra={"ITEM_ID": item.id})
                break
            except (StorageError, IntegrityError) as exc:  # this item's outbox or blob is unreadable: skip it
                log.warning("item not exported", extra={"ITEM_ID": item.id, "ERROR": str(exc)})
    finally:
        store.close()
    doc = {"format": EXPORT_FORMAT, "v": EXPORT_VERSION, "box_id": settings.box.id, "created_at": now,
           "complete": summary.complete, "transfers": summary.transfers}
    blobs.write_atomic(summary.directory / MANIFEST_NAME, json.dumps(doc, indent=1).encode())
    log.info("emergency export written", extra={
        "MESSAGE_ID": MSG.USB_EXPORT_WRITTEN.value, "ITEMS": len(summary.transfers),
        "BYTES": summary.bytes, "COMPLETE": summary.complete})
    return summary


def _export_item(settings: EdgeSettings, paths: Paths, item: SpoolItem, dest: Path,
                 urandom: Callable[[int], bytes]) -> dict:
    outbox = outbox_path(paths.outbox_dir, item.transfer_id) if item.transfer_id else None
    if item.state is not ItemState.RECEIVED and outbox is not None and outbox.exists():
        transfer_hex, frames = item.transfer_id, _outbox_frames(item, outbox)
    else:
        transfer_hex, frames = _seal_fresh(settings, paths, item, urandom)
    assert transfer_hex is not None
    digest, counter = hashlib.sha256(), [0]
    path = dest / f"{transfer_hex}.mgwx"
    size = blobs.write_atomic(path, _length_prefixed(frames, digest, counter))
    return {"transfer_id": transfer_hex, "file": path.name, "frames": counter[0], "bytes": size,
            "sha256": digest.hexdigest(), "item_id": item.id}


def _outbox_frames(item: SpoolItem, outbox: Path) -> Iterator[bytes]:
    assert item.final_seq is not None
    with open(outbox, "rb") as fh:
        for seq in range(item.final_seq + 1):
            start, length = frame_offset(item, seq)
            fh.seek(start)
            frame = fh.read(length)
            if len(frame) != length:
                raise StorageError(f"outbox of item {item.id} is truncated")
            yield frame


def _seal_fresh(settings: EdgeSettings, paths: Paths, item: SpoolItem,
                urandom: Callable[[int], bytes]) -> tuple[str, Iterator[bytes]]:
    tid = urandom(16)
    keys = ObjectKeys.create(base64.b64decode(settings.box.cloud_public_key), tid, urandom(32), urandom(32))
    manifest = Manifest(
        codec=Codec.ZSTD, size=item.size, sha256=item.sha256, sop_class_uid=item.sop_class_uid,
        sop_instance_uid=item.sop_instance_uid, study_instance_uid=item.study_instance_uid,
        series_instance_uid=item.series_instance_uid, transfer_syntax_uid=item.transfer_syntax_uid,
        item_id=item.id)
    up = settings.uplink
    cache_key = FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME)  # the blob may be sealed at rest
    original = _checked(item, cache.read_blob(paths.blob_dir / item.blob_name, cache_key))
    return tid.hex(), seal_object(settings.box.id, keys, manifest, original, up.max_frame_bytes, up.zstd_level)


def _checked(item: SpoolItem, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The original bytes, refusing (``IntegrityError``) a blob that no longer matches its hash."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
        yield piece
    if digest.hexdigest() != item.sha256:
        raise IntegrityError(f"spooled blob of item {item.id} no longer matches its hash")


def _length_prefixed(frames: Iterable[bytes], digest: hashlib._Hash, counter: list[int]) -> Iterator[bytes]:
    for frame in frames:
        for piece in (FRAME_LENGTH.pack(len(frame)), frame):
            digest.update(piece)
            yield piece
        counter[0] += 1


def read_frames(path: Path) -> Iterator[bytes]:
    """The frames of one ``.mgwx`` file; ``StorageError`` if it is truncated."""
    with open(path, "rb") as fh:
        while header := fh.read(FRAME_LENGTH.size):
            if len(header) != FRAME_LENGTH.size:
                raise StorageError(f"{path.name}: truncated frame length")
            (length,) = FRAME_LENGTH.unpack(header)
            frame = fh.read(length)
            if len(frame) != length:
                raise StorageError(f"{path.name}: truncated frame")
            yield frame
