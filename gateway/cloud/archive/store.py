"""The cloud archive: a filesystem store of restored objects and its SQLite index.

Files live under ``archive_dir`` as
``<study_uid>/<series_uid>/<sop_instance_uid>_<sha256[:12]>.mgwc`` (UIDs reduced
to ``[0-9.]``, ``unknown`` when nothing valid is left), sealed at rest from their
first byte, scratch files included (``core.atrest``: AES-256-GCM segments) with the
archive key, a file kept apart from the data (``cloud.archive_key_file``). The
index keeps each original's size and SHA-256; ``open`` decrypts in memory and checks
both. A plaintext ``.dcm`` object (an archive from before encryption at rest) is
refused by ``open`` until ``seal_plaintext`` (``mgw cloud seal-archive``) seals it.
A file reaches its final
name only complete and fsynced (``blobs.adopt_atomic`` from a scratch file in
``archive_dir/.incoming``), and before its index row commits, so a committed row
always names a durable file; a crash in between leaves at worst an unindexed
complete file, which the next store of the same object overwrites.

The index (``gateway.cloud.archive.index``: SQLite by default, PostgreSQL when workers
run on several machines) is shared by all workers. A store is one index
transaction keyed by the SOP Instance UID, so stores of one object are
serialised across workers; ``(sop_instance_uid, sha256)`` is the primary key of
``instances``, so the same object stored twice (two transfers, two workers) is
kept once and the second store reports DUPLICATE. When PACS destinations are
configured, the same transaction enqueues the object for each of them
(``gateway.cloud.archive.forward``), so nothing archived is ever left unforwarded.
With several machines, ``archive_dir`` is one shared filesystem (see
docs/deployment.md).

``OSError`` becomes ``StorageError`` here (``blobs`` and the index backends
already raise ``StorageError``/``SpoolFullError``).
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters import blobs, keystore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.cloud.archive.index import Index
from gateway.core import atrest
from gateway.core.errors import ConfigError, IntegrityError, StorageError
from gateway.core.framing import RejectReason
from gateway.core.instance import InstanceIdentity, verified

SCRATCH_DIR = ".incoming"
KEY_FILE = "keys/archive.key"  # default, relative to the archive's parent (the cloud's state_dir)
SEALED_SUFFIX = atrest.SUFFIX
PLAINTEXT_SUFFIX = ".dcm"  # objects archived before encryption at rest
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_MAX_UID_CHARS = 64
_DIFFERS = "archived object differs from its index row (size or SHA-256)"


class TransferState(enum.Enum):
    STAGING = "STAGING"  # chunks are being staged; nothing archived yet
    STORED = "STORED"  # terminal: the object is durably archived
    REJECTED = "REJECTED"  # terminal: the object will never be archived


class StoreOutcome(enum.Enum):
    ARCHIVED = "ARCHIVED"  # a new file and row
    DUPLICATE = "DUPLICATE"  # the same (SOP Instance UID, SHA-256) was already archived


@dataclass(frozen=True)
class TransferRecord:
    box_id: str
    transfer_id: bytes
    state: TransferState
    reason: RejectReason
    sha256: str  # hex; "" unless STORED
    sop_instance_uid: str
    chunks: int  # number of chunk frames (FINAL seq + 1); 0 while unknown
    updated_at: float


@dataclass(frozen=True)
class InstanceRecord:
    identity: InstanceIdentity  # as the manifest carried it; (sop_instance_uid, sha256) is the key
    path: Path  # absolute
    box_id: str
    transfer_id: str  # hex
    stored_at: float
    edge_item_id: int = 0  # the box's spool row id (the manifest's item_id): orders a box's versions
    superseded_at: float | None = None  # None: the current version of its SOP Instance UID


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    instance: InstanceRecord


def _superseded(older: list[dict[str, Any]], box_id: str, edge_item_id: int,
                now: float) -> tuple[float | None, list[str]]:
    """For a new version of an instance beside ``older`` rows: (its own superseded_at, the digests
    of the current older versions it supersedes). A version from the same box with a higher spool
    row id was received later there, so it stays current even if it was archived first."""
    current = [r for r in older if r["superseded_at"] is None]
    if any(r["box_id"] == box_id and int(r["edge_item_id"]) > edge_item_id for r in current):
        return now, []
    return None, [r["sha256"] for r in current]


def sanitise_uid(uid: str) -> str:
    """A UID reduced to ``[0-9.]`` for a path component; ``unknown`` if not a valid UID."""
    kept = re.sub(r"[^0-9.]", "", uid)
    return kept if len(kept) <= _MAX_UID_CHARS and _UID.fullmatch(kept) else "unknown"


ensure_dir_durable = blobs.ensure_dir_durable


class Archive:
    """Filesystem store plus index. Usable from any thread, one call at a time."""

    def __init__(self, archive_dir: Path, index: Index | Path,
                 forward_destinations: tuple[str, ...] = (), key_file: Path | None = None,
                 migrating: bool = False) -> None:
        self._dir = archive_dir
        self._scratch = archive_dir / SCRATCH_DIR
        self._lock = threading.RLock()
        self._forward = tuple(forward_destinations)
        with self._guarded("open"):
            self._scratch.mkdir(parents=True, exist_ok=True)
        self.index: Index = SqliteIndex(index) if isinstance(index, Path) else index
        self.key_file = key_file or archive_dir.parent / KEY_FILE
        self._key = self._load_key(migrating)

    def _load_key(self, migrating: bool) -> bytes:
        """The archive key (raw 32 bytes, 0600). A missing key is made only when no object needs
        it (an empty archive; or, migrating, one with no sealed object): a lost key, or its volume
        not mounted, is refused, never silently replaced."""
        if not self.key_file.exists():
            rows = self.index.list_instances() if migrating else []
            needing = (sum(str(r["path"]).endswith(SEALED_SUFFIX) for r in rows) if migrating
                       else self.index.count_instances())
            if needing:
                raise ConfigError(
                    f"{self.key_file}: archive key missing, and {needing} archived objects need it "
                    "(restore the key or mount its volume; an archive from before encryption at rest: "
                    "run `mgw cloud seal-archive`)")
            return keystore.load_or_create_raw(self.key_file, 32)
        return keystore.read_raw_secret(self.key_file, 32)

    @property
    def directory(self) -> Path:
        return self._dir

    # -- plumbing -----------------------------------------------------------

    @contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except OSError as exc:
                raise StorageError(f"archive {self._dir}: {what}: {exc.strerror or exc}") from exc

    def schema_version(self) -> int:
        return self.index.schema_version()

    # -- transfers ----------------------------------------------------------

    def lookup_transfer(self, box_id: str, transfer_id: bytes) -> TransferRecord | None:
        with self._guarded("lookup transfer"):
            return self._transfer(box_id, transfer_id)

    def _transfer(self, box_id: str, transfer_id: bytes) -> TransferRecord | None:
        row = self.index.get_transfer(box_id, transfer_id.hex())
        if row is None:
            return None
        return TransferRecord(
            row["box_id"], bytes.fromhex(row["transfer_id"]), TransferState(row["state"]),
            RejectReason(row["reason"]), row["sha256"], row["sop_instance_uid"],
            row["chunks"], row["updated_at"])

    def _upsert_transfer(self, box_id: str, transfer_id: bytes, state: TransferState, now: float,
                         chunks: int = 0, reason: RejectReason = RejectReason.NONE,
                         sha256: str = "", sop_instance_uid: str = "") -> None:
        self.index.upsert_transfer({
            "box_id": box_id, "transfer_id": transfer_id.hex(), "state": state.value,
            "reason": int(reason), "sha256": sha256, "sop_instance_uid": sop_instance_uid,
            "chunks": chunks, "updated_at": now})

    def note_staging(self, box_id: str, transfer_id: bytes, chunks: int, now: float) -> None:
        """Record a transfer being staged (``chunks`` = FINAL seq + 1, or 0 while unknown)."""
        with self._guarded("note staging"), self.index.transaction():
            self._upsert_transfer(box_id, transfer_id, TransferState.STAGING, now, chunks)

    def reject(self, box_id: str, transfer_id: bytes, reason: RejectReason, chunks: int,
               now: float) -> TransferRecord:
        """Mark a transfer REJECTED unless it is already terminal; return its record."""
        with self._guarded("reject transfer"):
            with self.index.transaction():
                self._upsert_transfer(box_id, transfer_id, TransferState.REJECTED, now, chunks, reason)
            record = self._transfer(box_id, transfer_id)
        assert record is not None
        return record

    def forget_staging(self, box_id: str, transfer_id: bytes) -> None:
        """Drop the row of a transfer that is still STAGING (its chunks were expired)."""
        with self._guarded("forget staging"), self.index.transaction():
            self.index.delete_staging_transfer(box_id, transfer_id.hex())

    # -- objects ------------------------------------------------------------

    def receive(self, pieces: Iterable[bytes]) -> Path:
        """Write ``pieces`` durably to a scratch file in the archive's filesystem.

        If ``pieces`` raises, the partial scratch file is removed and the error
        re-raised; nothing ever appears under a final archive name.
        """
        scratch = self._scratch / f"{uuid.uuid4().hex}.part"
        failure: list[Exception] = []

        def guarded() -> Iterator[bytes]:
            try:
                yield from pieces
            except Exception as exc:  # re-raised below, once the file is closed
                failure.append(exc)

        blobs.write_atomic(scratch, atrest.seal_pieces(self._key, os.urandom(atrest.FILE_ID_BYTES), guarded()))
        if failure:
            blobs.remove(scratch)
            raise failure[0]
        return scratch

    def store(self, identity: InstanceIdentity, scratch: Path, box_id: str, transfer_id: bytes,
              chunks: int, now: float, edge_item_id: int = 0, accession_hmac: str = "") -> StoreResult:
        """Archive a verified scratch file (the bytes of ``identity``) and mark its transfer
        STORED, in one transaction.

        The scratch file is consumed: adopted under its final name, or removed
        (a duplicate, or a failure, which raises ``LocalError``).

        The same SOP Instance UID with other bytes is a new version, kept beside the others
        (docs/conformance.md, "Re-sent instances"): the current one is the version its box
        received last (the highest ``edge_item_id`` of that box), or, between boxes, the one
        archived last; every other version is marked superseded.

        ``accession_hmac`` is the object's accession number as a keyed digest (``core.accession``),
        kept beside it for a resend by accession; never the number itself.
        """
        row: dict[str, Any] = {}
        try:
            with self._guarded("store"), self.index.transaction(lock_key=identity.sop_instance_uid):
                existing = self._instance(identity.sop_instance_uid, identity.sha256)
                if existing is None:
                    older = self.index.versions(identity.sop_instance_uid)
                    row = self._file_instance(identity, scratch, box_id, transfer_id, now, edge_item_id,
                                              _superseded(older, box_id, edge_item_id, now), accession_hmac)
                    self.index.enqueue_forwards(identity.sop_instance_uid, identity.sha256, self._forward, now)
                self._upsert_transfer(box_id, transfer_id, TransferState.STORED, now, chunks,
                                      sha256=identity.sha256,
                                      sop_instance_uid=identity.sop_instance_uid)
        finally:
            scratch.unlink(missing_ok=True)  # after adopt_atomic it is already gone
        if existing is not None:
            return StoreResult(StoreOutcome.DUPLICATE, existing)
        return StoreResult(StoreOutcome.ARCHIVED, self._record(row))

    def _file_instance(self, identity: InstanceIdentity, scratch: Path, box_id: str, transfer_id: bytes,
                       now: float, edge_item_id: int, superseded: tuple[float | None, list[str]],
                       accession_hmac: str = "") -> dict[str, Any]:
        rel = self._free_name(identity)
        final = self._dir / rel
        ensure_dir_durable(final.parent)
        blobs.adopt_atomic(scratch, final)
        row = {
            "sop_instance_uid": identity.sop_instance_uid, "sha256": identity.sha256,
            "study_instance_uid": identity.study_instance_uid,
            "series_instance_uid": identity.series_instance_uid,
            "sop_class_uid": identity.sop_class_uid,
            "transfer_syntax": identity.transfer_syntax_uid, "size": identity.size,
            "path": rel, "box_id": box_id, "transfer_id": transfer_id.hex(), "stored_at": now,
            "edge_item_id": edge_item_id, "superseded_at": superseded[0], "accession_hmac": accession_hmac}
        self.index.insert_instance(row)
        if superseded[1]:
            self.index.supersede(identity.sop_instance_uid, superseded[1], now)
        return row

    def _free_name(self, identity: InstanceIdentity) -> str:
        """Relative path for a new object; the full hash if the short name is taken."""
        folder = f"{sanitise_uid(identity.study_instance_uid)}/{sanitise_uid(identity.series_instance_uid)}"
        sop = sanitise_uid(identity.sop_instance_uid)
        rel = f"{folder}/{sop}_{identity.sha256[:12]}{SEALED_SUFFIX}"
        if self.index.path_taken(rel):
            rel = f"{folder}/{sop}_{identity.sha256}{SEALED_SUFFIX}"
        return rel

    def open(self, record: InstanceRecord) -> Iterator[bytes]:
        """The original bytes of an archived object, decrypted in memory piece by piece. Each
        segment is authenticated before it is returned; at the end the size and SHA-256 are
        checked against the index. ``IntegrityError`` on any difference, and at once for a
        plaintext object (refused until ``mgw cloud seal-archive``)."""
        if not record.path.name.endswith(SEALED_SUFFIX):
            raise IntegrityError(f"archived object {record.path.name} is not sealed at rest "
                                 "(an archive from before encryption at rest): run `mgw cloud seal-archive`")
        return verified(atrest.open_pieces(self._key, blobs.read_pieces(record.path)), record.identity,
                        _DIFFERS)

    def seal_plaintext(self) -> tuple[int, int]:
        """Seal every plaintext (``.dcm``) object into ``<name>.mgwc``, checked against its index
        row on the way, repoint the row, delete the plaintext. Resumable: a crash leaves either
        the plaintext named by its row, or the sealed file named by it. An object that no longer
        matches its row is left as it is. Returns (sealed, left because damaged or unreadable)."""
        sealed = damaged = 0
        for record in self.instances():
            if not record.path.name.endswith(PLAINTEXT_SUFFIX):
                continue
            target = record.path.with_name(record.path.name.removesuffix(PLAINTEXT_SUFFIX) + SEALED_SUFFIX)
            original = verified(blobs.read_pieces(record.path), record.identity, _DIFFERS)
            try:
                blobs.write_atomic(target, atrest.seal_pieces(self._key, os.urandom(atrest.FILE_ID_BYTES), original))
            except (IntegrityError, StorageError):
                damaged += 1
                continue
            key = record.identity
            with self._guarded("seal plaintext"), self.index.transaction(lock_key=key.sop_instance_uid):
                self.index.move_instance(key.sop_instance_uid, key.sha256, str(target.relative_to(self._dir)))
            blobs.remove(record.path)
            sealed += 1
        return sealed, damaged

    def instance(self, sop_instance_uid: str, sha256: str) -> InstanceRecord | None:
        with self._guarded("lookup instance"):
            return self._instance(sop_instance_uid, sha256)

    def _instance(self, sop_instance_uid: str, sha256: str) -> InstanceRecord | None:
        row = self.index.get_instance(sop_instance_uid, sha256)
        return None if row is None else self._record(row)

    def _record(self, row: dict[str, Any]) -> InstanceRecord:
        identity = InstanceIdentity(
            sop_class_uid=row["sop_class_uid"], sop_instance_uid=row["sop_instance_uid"],
            study_instance_uid=row["study_instance_uid"], series_instance_uid=row["series_instance_uid"],
            transfer_syntax_uid=row["transfer_syntax"], size=row["size"], sha256=row["sha256"])
        return InstanceRecord(identity, self._dir / row["path"], row["box_id"], row["transfer_id"], row["stored_at"],
                              int(row.get("edge_item_id") or 0), row.get("superseded_at"))

    def versions(self, sop_instance_uid: str) -> list[InstanceRecord]:
        """Every archived version of an instance, oldest first; the current one has no ``superseded_at``."""
        with self._guarded("list versions"):
            return [self._record(row) for row in self.index.versions(sop_instance_uid)]

    def instances(self) -> list[InstanceRecord]:
        with self._guarded("list instances"):
            return [self._record(row) for row in self.index.list_instances()]

    def count(self) -> int:
        with self._guarded("count instances"):
            return self.index.count_instances()

    def sweep_scratch(self, older_than: float) -> int:
        """Remove scratch files (left by a crash mid-assembly) last modified before ``older_than``."""
        removed = 0
        with self._guarded("sweep scratch"):
            for entry in self._scratch.iterdir():
                if entry.is_file() and entry.stat().st_mtime < older_than:
                    entry.unlink(missing_ok=True)
                    removed += 1
        return removed

    def close(self) -> None:
        self.index.close()


def original_sha256(path: Path, key_file: Path) -> str:
    """SHA-256 of the original bytes of one archived (sealed) file, opened in memory with the key
    in ``key_file``; "" if it is missing, plaintext or fails authentication. For reconciliations."""
    try:
        digest = hashlib.sha256()
        for piece in atrest.open_pieces(keystore.read_raw_secret(key_file, 32), blobs.read_pieces(path)):
            digest.update(piece)
        return digest.hexdigest()
    except (IntegrityError, StorageError, ConfigError):
        return ""
