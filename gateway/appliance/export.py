"""Emergency export: the not-yet-acknowledged instances, sealed to the cloud key, onto a stick.

Layout on the stick, one directory per export::

    MGW-EXPORT-<box>-<UTC time>/
        <transfer>.mgwx     chunk frames exactly as the uplink would publish them,
                            each preceded by its length (4 bytes, big endian)
        manifest.json       box, time, per transfer its file, frame count, bytes and
                            SHA-256, and per item not written its id and why.
                            Written first ("complete": false), every CHECKPOINT_S
                            and last; "complete": true only when every item was
                            written. Each .mgwx goes under a temporary name,
                            fsynced and renamed: a final name is always complete.

Nothing on the stick is followed: the folder is new (mkdir) and opened
O_NOFOLLOW, and every file is created O_EXCL|O_NOFOLLOW relative to it. The stick
filling up or failing stops the export; an item whose spooled data cannot be
read is listed and the rest still go.

Packed items are copied from the outbox (their transfer id, so the cloud's
record answers the box's later resend with STORED); items not packed yet are
sealed here with fresh keys (the archive de-duplicates by SOP Instance UID and
hash). Nothing in the spool changes: an exported item is still sent when the
uplink returns. Nothing on the stick is readable without the cloud's key.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapters import safefs
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolItem, SpoolStore
from gateway.config import EdgeSettings
from gateway.core.errors import GatewayError, StorageError
from gateway.core.spool import ItemState
from gateway.edge import cache
from gateway.edge.packer import frame_offset, outbox_path
from gateway.edge.seal import seal_item
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger(__name__)
EXPORT_FORMAT = "mgw-export"
EXPORT_VERSION = 1
EXPORT_PREFIX = "MGW-EXPORT-"
MANIFEST_NAME = "manifest.json"
FRAME_LENGTH = struct.Struct(">I")
UNACKED = (ItemState.RECEIVED, ItemState.PACKED, ItemState.SENDING)


CHECKPOINT_S = 30.0  # while writing, the manifest is rewritten this often (a stick pulled mid-way)


@dataclass
class ExportSummary:
    directory: Path
    transfers: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why nothing more was written (the stick filled up or failed)
    manifest_error: str | None = None

    @property
    def complete(self) -> bool:
        return not self.failed and self.manifest_error is None

    @property
    def bytes(self) -> int:
        return sum(int(t["bytes"]) for t in self.transfers)


def export_unacked(settings: EdgeSettings, paths: Paths, dest_root: Path, now: float | None = None,
                   urandom: Callable[[int], bytes] = os.urandom) -> ExportSummary:
    """Write the export into a new folder directly under ``dest_root`` (the stick's root).

    Nothing on the stick is followed: the folder is made with mkdir and opened ``O_NOFOLLOW``,
    every file created in it relative to its descriptor (``safefs.write_new``). ``SinkError`` if
    not even the folder can be made; after that, every item not written is listed in the manifest.
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    name, dir_fd = _make_export_dir(dest_root, f"{EXPORT_PREFIX}{settings.box.id}-{stamp}")
    summary = ExportSummary(dest_root / name)
    try:
        _write_manifest(settings, summary, dir_fd, now, final=False)  # a stick pulled from now on says so
        store = SpoolStore(paths.spool_db)
        try:
            items = store.in_state(*UNACKED, limit=10**9)
        finally:
            store.close()
        _export_items(settings, paths, items, summary, dir_fd, now, urandom)
        _write_manifest(settings, summary, dir_fd, now, final=True)
    finally:
        os.close(dir_fd)
    (log.info if summary.complete else log.warning)("emergency export written", extra={
        "MESSAGE_ID": MSG.USB_EXPORT_WRITTEN.value, "ITEMS": len(summary.transfers), "BYTES": summary.bytes,
        "COMPLETE": summary.complete, "FAILED": len(summary.failed), "STOPPED": summary.stopped or "",
        "MANIFEST_ERROR": summary.manifest_error or ""})
    return summary


def _make_export_dir(dest_root: Path, base: str) -> tuple[str, int]:
    """A new folder (never one that was there: the stick may have put a link there), opened."""
    try:
        root_fd = safefs.open_dir(dest_root)
    except OSError as exc:
        raise safefs.SinkError(f"cannot open the stick's root: {exc.strerror}", False) from exc
    try:
        for n in range(10):
            name = base if n == 0 else f"{base}-{n}"
            try:
                os.mkdir(name, 0o700, dir_fd=root_fd)
            except FileExistsError:
                continue
            fd = safefs.open_dir(name, dir_fd=root_fd)
            os.fsync(root_fd)
            return name, fd
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise safefs.SinkError(f"cannot create {base} on the stick: {exc.strerror}", full) from exc
    finally:
        os.close(root_fd)
    raise safefs.SinkError(f"cannot create {base} on the stick: the name and its variants are taken", False)


def _export_items(settings: EdgeSettings, paths: Paths, items: list[SpoolItem], summary: ExportSummary,
                  dir_fd: int, now: float, urandom: Callable[[int], bytes]) -> None:
    checkpoint = time.monotonic() + CHECKPOINT_S
    for item in items:
        if summary.stopped is not None:
            summary.failed.append({"item_id": item.id, "reason": f"not attempted: {summary.stopped}"})
            continue
        try:
            summary.transfers.append(_export_item(settings, paths, item, dir_fd, urandom))
        except safefs.SinkError as exc:  # the stick: nothing more can go onto it
            summary.stopped = "the stick is full" if exc.full else "the stick failed"
            summary.failed.append({"item_id": item.id, "reason": str(exc)})
            log.warning("export stopped", extra={"ITEM_ID": item.id, "ERROR": str(exc)})
        except (GatewayError, OSError) as exc:  # this item's outbox or blob is unreadable: the rest still go
            reason = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) else str(exc)
            summary.failed.append({"item_id": item.id, "reason": reason or exc.__class__.__name__})
            log.warning("item not exported", extra={"ITEM_ID": item.id, "ERROR": reason})
        if summary.stopped is None and time.monotonic() >= checkpoint:
            _write_manifest(settings, summary, dir_fd, now, final=False)
            checkpoint = time.monotonic() + CHECKPOINT_S


def _write_manifest(settings: EdgeSettings, summary: ExportSummary, dir_fd: int, now: float, final: bool) -> None:
    """The manifest: exactly the files written so far (each complete under its final name) and
    every item not written with why; ``complete`` only in the final one with nothing failed."""
    doc = {"format": EXPORT_FORMAT, "v": EXPORT_VERSION, "box_id": settings.box.id, "created_at": now,
           "complete": final and not summary.failed, "transfers": summary.transfers, "failed": summary.failed}
    try:
        safefs.write_new(dir_fd, MANIFEST_NAME, [json.dumps(doc, indent=1).encode()])
    except safefs.SinkError as exc:
        summary.manifest_error = str(exc)
        summary.stopped = summary.stopped or ("the stick is full" if exc.full else "the stick failed")
        log.warning("export manifest not written", extra={"ERROR": str(exc)})
    else:
        summary.manifest_error = None


def _export_item(settings: EdgeSettings, paths: Paths, item: SpoolItem, dir_fd: int,
                 urandom: Callable[[int], bytes]) -> dict[str, Any]:
    outbox = outbox_path(paths.outbox_dir, item.transfer_id) if item.transfer_id else None
    if item.state is not ItemState.RECEIVED and outbox is not None and os.path.lexists(outbox):
        transfer_hex, frames = item.transfer_id, _outbox_frames(item, outbox)
    else:
        transfer_hex, frames = _seal_fresh(settings, paths, item, urandom)
    assert transfer_hex is not None
    digest, counter = hashlib.sha256(), [0]
    name = f"{transfer_hex}.mgwx"
    size = safefs.write_new(dir_fd, name, _length_prefixed(frames, digest, counter))
    return {"transfer_id": transfer_hex, "file": name, "frames": counter[0], "bytes": size,
            "sha256": digest.hexdigest(), "item_id": item.id}


def _outbox_frames(item: SpoolItem, outbox: Path) -> Iterator[bytes]:
    assert item.final_seq is not None
    with safefs.open_regular(outbox) as fh:  # root reading the service user's folder: no link followed
        for seq in range(item.final_seq + 1):
            start, length = frame_offset(item, seq)
            fh.seek(start)
            frame = fh.read(length)
            if len(frame) != length:
                raise StorageError(f"outbox of item {item.id} is truncated")
            yield frame


def _seal_fresh(settings: EdgeSettings, paths: Paths, item: SpoolItem,
                urandom: Callable[[int], bytes]) -> tuple[str, Iterator[bytes]]:
    """Seal an item the packer has not packed, with the packer's own ``seal_item``: ZSTD (one
    pass over each blob while the stick is in) and the configured frame size (the frames reach
    the cloud through ``mgw cloud import``, not through a broker's packet limit)."""
    up = settings.uplink
    cache_key = FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME)  # the blob may be sealed at rest
    sealed = seal_item(item, paths.blob_dir, cache_key, box_id=settings.box.id,
                       cloud_public=base64.b64decode(settings.box.cloud_public_key), frame_bytes=up.max_frame_bytes,
                       zstd_level=up.zstd_level, pixel_codec=False, urandom=urandom)
    return sealed.transfer_id.hex(), sealed.frames


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
