"""The quarantine, for ``mgw quarantine list|show|replay|delete``.

Two kinds of entries, both shown without patient data (no names, ids or UIDs):
- ``item``: a spool item in state QUARANTINED (pack failed after bounded attempts, the
  cloud rejected it, or it was resent ``uplink.max_send_attempts`` rounds without
  progress). Replay sends it through the queue again, after checking that its blob still
  holds its identity's bytes (``seal.intact``: the same read and check the packer's seal
  runs); delete removes its blob and keeps the row, state PURGED.
- ``file``: a dataset the DICOM listener could not parse (the modality was answered
  0xC210, so it still holds the instance). It can only be deleted.

Safe while the edge runs: every change is one SQLite transaction, and the service's
packer picks replayed items up by polling the database.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters import blobs
from gateway.adapters.dicom_names import sop_class_name
from gateway.adapters.keystore import FileKeyStore
from gateway.adapters.store import SpoolItem, SpoolStore
from gateway.core import spool
from gateway.core.errors import LocalError
from gateway.core.spool import ItemState
from gateway.edge import cache, seal
from gateway.i18n import _
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger(__name__)
FILE_PREFIX = "file:"


class QuarantineError(LocalError):
    """No such entry, or the operation does not apply to it."""


@dataclass(frozen=True)
class Entry:
    id: str  # the item id, or "file:<name>" for an unparseable dataset
    kind: str  # "item" or "file"
    sop_class: str  # the SOP Class name (never a UID of the instance)
    calling_ae: str
    bytes: int
    received_at: float
    reason: str
    pack_attempts: int
    sha256_prefix: str
    blob_present: bool

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Quarantine:
    def __init__(self, store: SpoolStore, paths: Paths) -> None:
        self._store = store
        self._paths = paths
        self._clock = time.time

    def _item_entry(self, item: SpoolItem) -> Entry:
        return Entry(
            id=str(item.id), kind="item", sop_class=sop_class_name(item.identity.sop_class_uid),
            calling_ae=item.calling_ae, bytes=item.identity.size, received_at=item.received_at,
            reason=item.reason or "", pack_attempts=item.pack_attempts, sha256_prefix=item.identity.sha256[:12],
            blob_present=(self._paths.blob_dir / item.blob_name).is_file())

    def _file_entry(self, path: Path) -> Entry:
        st = path.stat()
        return Entry(
            id=FILE_PREFIX + path.name, kind="file", sop_class="", calling_ae="", bytes=st.st_size,
            received_at=st.st_mtime, reason="dataset unreadable on receipt (answered 0xC210)", pack_attempts=0,
            sha256_prefix="", blob_present=True)

    def entries(self) -> list[Entry]:
        out = [self._item_entry(i) for i in self._store.in_state(ItemState.QUARANTINED, limit=10**9)]
        qdir = self._paths.quarantine_dir
        if qdir.is_dir():
            out += [self._file_entry(p) for p in sorted(qdir.iterdir()) if p.is_file()]
        return out

    def get(self, entry_id: str) -> Entry:
        if entry_id.startswith(FILE_PREFIX):
            return self._file_entry(self._file(entry_id))
        return self._item_entry(self._item(entry_id))

    def _item(self, entry_id: str) -> SpoolItem:
        try:
            item = self._store.get(int(entry_id))
        except ValueError:
            item = None
        if item is None or item.state is not ItemState.QUARANTINED:
            raise QuarantineError(_("no quarantined item {id} (see `mgw quarantine list`)").format(id=repr(entry_id)))
        return item

    def _file(self, entry_id: str) -> Path:
        name = entry_id[len(FILE_PREFIX):]
        path = self._paths.quarantine_dir / name
        if "/" in name or name in ("", ".", "..") or not path.is_file():
            raise QuarantineError(_("no quarantined file {id} (see `mgw quarantine list`)").format(id=repr(entry_id)))
        return path

    def replay(self, entry_id: str) -> Entry:
        """Send a quarantined item through the queue again, from packing."""
        if entry_id.startswith(FILE_PREFIX):
            raise QuarantineError(_("an unreadable dataset cannot be replayed: the modality must send it again"))
        item = self._item(entry_id)
        if not seal.intact(item, self._paths.blob_dir, self._cache_key()):
            raise QuarantineError(_("item {id}: its spooled blob is missing or no longer matches its hash; it cannot "
                                    "be replayed, only deleted").format(id=item.id))
        self._store.transition(
            item.id, spool.Replayed(), self._clock(), pack_attempts=0, transfer_id=None, final_seq=None,
            frame0_bytes=None, frame_bytes=None, packed_bytes=None, ack_key=None, acked_ranges="[]", reason=None)
        log.warning("quarantined instance replayed", extra={
            "MESSAGE_ID": MSG.QUARANTINE_REPLAYED.value, "ITEM_ID": item.id, "BYTES": item.identity.size})
        return self._item_entry(item)

    def delete(self, entry_id: str) -> Entry:
        """Delete a quarantined item's blob (its row stays, PURGED) or an unreadable dataset file."""
        if entry_id.startswith(FILE_PREFIX):
            path = self._file(entry_id)
            entry = self._file_entry(path)
            blobs.remove(path)
        else:
            item = self._item(entry_id)
            entry = self._item_entry(item)
            done, effects = self._store.transition(item.id, spool.Discarded(), self._clock())
            if spool.Effect.DELETE_BLOB in effects:
                blobs.remove(self._paths.blob_dir / done.blob_name)
        log.warning("quarantined entry deleted by an operator", extra={
            "MESSAGE_ID": MSG.QUARANTINE_DELETED.value, "ENTRY": entry.id, "BYTES": entry.bytes})
        return entry

    def _cache_key(self) -> bytes | None:
        """The cache key if the box has one (never made here: no key, no sealed blob to open)."""
        keys = FileKeyStore(self._paths.state_dir / "keys")
        return keys.secret(cache.KEY_NAME) if keys.path(cache.KEY_NAME).with_suffix(".secret").exists() else None
