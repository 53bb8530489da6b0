"""Ingest of chunk frames: verify, stage, assemble, archive, acknowledge. No MQTT here.

``Ingest.handle_chunk(box_id, payload)`` takes one message body and the box id
from its topic and returns the acks to publish to that box:

* not a frame, a key that does not unwrap, or a chunk failing AES-GCM (altered,
  replayed into another transfer, published under another box): refused,
  counted, logged, no ack (without the data key we cannot MAC one);
* a transfer the index holds as STORED or REJECTED: that ack again;
* else the verified frame is staged durably as ``<staging>/<box>/<transfer>/<seq>.chunk``
  and a PROGRESS ack lists the staged seqs; once 0..FINAL are staged the object
  is restored into a scratch file on the archive's filesystem, archived, marked
  STORED, its staging removed, and a STORED ack (superseding PROGRESS) returned.
  A manifest, codec, size or hash failure marks it REJECTED with that reason.

Crash safety: a chunk is acked only once its file and directory entry are
fsynced; an object only once it is under its final name and its row committed;
staging goes only after that commit. A crash leaves staged chunks, which the
next (re-sent) chunk of the transfer re-examines and assembles, or a committed row.

Multi-worker safety: a lock file per transfer, ``<transfer dir>/.lock``, held with
``fcntl.flock`` (per open file description, so it also separates two ``Ingest``
objects in one process) across staging, the completeness check, assembly and
clean-up: one worker assembles, a waiter re-reads the index and answers STORED,
and a waiter whose lock file was unlinked meanwhile sees the inode change and
retries. Behind it the index serialises commits (``BEGIN IMMEDIATE``) and its
``(sop_instance_uid, sha256)`` key keeps one copy even of one object sent twice.
Not thread safe: one ``Ingest`` per thread (an ``Archive`` may be shared).
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters import blobs
from gateway.cloud.archive import Archive, StoreOutcome, TransferRecord, TransferState, ensure_dir_durable
from gateway.config import BOX_ID, IngestSettings
from gateway.core import envelope, framing, transfer
from gateway.core.codec import Codec
from gateway.core.errors import CodecError, EnvelopeTamperedError, FrameError, IntegrityError, StorageError
from gateway.core.framing import AckFrame, AckKind, ChunkFrame, RejectReason
from gateway.core.transfer import Manifest
from gateway.logs import MSG

log = logging.getLogger(__name__)

MAX_PROGRESS_RANGES = 256  # a PROGRESS ack stays ~2 KiB; omitted ranges are merely re-sent
KEY_CACHE_ENTRIES = 1024
LOCK_NAME = ".lock"
_CHUNK_FILE = re.compile(r"([0-9]+)\.chunk")
_TRANSFER_DIR = re.compile(r"[0-9a-f]{32}")


class ChunkRejection(enum.Enum):
    MALFORMED = "malformed"  # not a chunk frame, or a box id that is not one
    KEY = "key"  # the data key does not unwrap: forged, or replayed into another transfer
    AUTH = "auth"  # AES-GCM fails: altered, or published under another box id


COUNTERS = (
    "chunks_received", "chunks_staged", "chunks_duplicate", "chunks_rejected",
    *(f"chunks_rejected_{r.value}" for r in ChunkRejection), "chunks_corrupt_staged",
    "objects_stored", "objects_duplicate", "objects_rejected", "transfers_expired",
)


@dataclass(frozen=True)
class Outgoing:
    """An ack to publish to ``box_id``."""

    box_id: str
    payload: bytes  # encoded AckFrame


@dataclass(frozen=True)
class _Keys:
    eph_public: bytes
    wrapped_key: bytes
    data_key: bytes
    ack_key: bytes


@dataclass(frozen=True)
class _Verified:
    box_id: str
    frame: ChunkFrame
    keys: _Keys
    plaintext: bytes
    raw: bytes

    @property
    def tag(self) -> str:
        return self.frame.transfer_id.hex()[:8]


class _Refused(Exception):  # the chunk is not authentic: no ack
    def __init__(self, why: ChunkRejection, detail: str, transfer_id: bytes = b"") -> None:
        super().__init__(detail)
        self.why, self.transfer_id = why, transfer_id


class _Rejection(Exception):  # the authentic object is unusable: REJECTED ack
    def __init__(self, reason: RejectReason) -> None:
        super().__init__(reason.name)
        self.reason = reason


class Ingest:
    """One ingest worker's logic; see the module docstring for the contract."""

    def __init__(self, settings: IngestSettings, envelope_private_key: bytes, archive: Archive,
                 staging_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self._settings, self._private, self._archive = settings, envelope_private_key, archive
        self._staging, self._clock = staging_dir, clock
        self._keys: OrderedDict[tuple[str, bytes], _Keys] = OrderedDict()
        self._counters = dict.fromkeys(COUNTERS, 0)

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def handle_chunk(self, box_id: str, payload: bytes) -> list[Outgoing]:
        """Acks to publish for one chunk; raises ``LocalError`` if our disk or index fails."""
        self._counters["chunks_received"] += 1
        try:
            chunk = self._authenticate(box_id, payload)
        except _Refused as refused:
            self._count_refusal(box_id, len(payload), refused)
            return []
        tdir = self._staging / box_id / chunk.frame.transfer_id.hex()
        record = self._archive.lookup_transfer(box_id, chunk.frame.transfer_id)
        if record is not None and record.state is not TransferState.STAGING and not tdir.exists():
            return [self._terminal_ack(chunk, record)]
        try:
            with _transfer_lock(tdir) as fd:
                assert fd is not None
                now = self._clock()
                os.utime(fd, (now, now))  # the lock file's mtime is the transfer's last activity
                return self._handle_locked(chunk, tdir)
        except OSError as exc:
            raise StorageError(f"staging {tdir}: {exc.strerror or exc}") from exc

    def _authenticate(self, box_id: str, payload: bytes) -> _Verified:
        if not BOX_ID.fullmatch(box_id):
            raise _Refused(ChunkRejection.MALFORMED, "box id is not a valid box id")
        try:
            frame = framing.parse_chunk(payload)
        except FrameError as exc:
            raise _Refused(ChunkRejection.MALFORMED, str(exc)) from exc
        try:
            keys = self._keys_for(box_id, frame)
        except EnvelopeTamperedError as exc:
            raise _Refused(ChunkRejection.KEY, str(exc), frame.transfer_id) from exc
        try:
            plaintext = transfer.verify_chunk(box_id, frame, keys.data_key)
        except EnvelopeTamperedError as exc:
            raise _Refused(ChunkRejection.AUTH, str(exc), frame.transfer_id) from exc
        return _Verified(box_id, frame, keys, plaintext, bytes(payload))

    def _keys_for(self, box_id: str, frame: ChunkFrame) -> _Keys:
        """Unwrapped data key, memoised per (box, transfer) in a small LRU."""
        slot = (box_id, frame.transfer_id)
        hit = self._keys.get(slot)
        if hit is None or (hit.eph_public, hit.wrapped_key) != (frame.eph_public, frame.wrapped_key):
            data_key = transfer.unwrap_key(self._private, frame)
            hit = _Keys(frame.eph_public, frame.wrapped_key, data_key, envelope.ack_key(data_key))
            self._keys[slot] = hit
        self._keys.move_to_end(slot)
        while len(self._keys) > KEY_CACHE_ENTRIES:
            self._keys.popitem(last=False)
        return hit

    def _count_refusal(self, box_id: str, size: int, refused: _Refused) -> None:
        self._counters["chunks_rejected"] += 1
        self._counters[f"chunks_rejected_{refused.why.value}"] += 1
        log.warning("chunk rejected: %s", refused, extra={
            "MESSAGE_ID": MSG.CHUNK_REJECTED.value, "BOX_ID": box_id[:64],
            "TRANSFER": refused.transfer_id.hex()[:8], "BYTES": size, "REASON": refused.why.value})

    def _handle_locked(self, chunk: _Verified, tdir: Path) -> list[Outgoing]:
        record = self._archive.lookup_transfer(chunk.box_id, chunk.frame.transfer_id)
        if record is not None and record.state is not TransferState.STAGING:
            _clear(tdir)  # left by a crash after the commit, or the winner of a race
            return [self._terminal_ack(chunk, record)]
        chunks = record.chunks if record is not None else 0
        try:
            if chunk.frame.seq == 0:
                self._check_manifest(Manifest.decode(chunk.plaintext))
        except FrameError:
            return self._reject(chunk, RejectReason.MANIFEST, chunks, tdir)
        except _Rejection as rejection:
            return self._reject(chunk, rejection.reason, chunks, tdir)
        chunks = self._stage(chunk, tdir, record)
        staged = _staged_seqs(tdir)
        if chunks and staged.issuperset(range(chunks)):
            return self._assemble(chunk, chunks, tdir)
        return [self._progress_ack(chunk, staged)]

    def _stage(self, chunk: _Verified, tdir: Path, record: TransferRecord | None) -> int:
        """Stage the frame (an existing seq is left alone); return the known chunk count."""
        seq = chunk.frame.seq
        path = tdir / f"{seq}.chunk"
        if path.exists():
            self._counters["chunks_duplicate"] += 1
        else:
            blobs.write_atomic(path, chunk.raw)
            self._counters["chunks_staged"] += 1
        chunks = record.chunks if record is not None else 0
        if chunk.frame.final and chunks < seq + 1:
            chunks = seq + 1
        if record is None or record.chunks != chunks:
            self._archive.note_staging(chunk.box_id, chunk.frame.transfer_id, chunks, self._clock())
        return chunks

    def _assemble(self, chunk: _Verified, chunks: int, tdir: Path) -> list[Outgoing]:
        frames = _StagedFrames(tdir, chunks)
        try:
            manifest, scratch = self._restore(chunk, frames)
        except _Rejection as rejection:
            return self._reject(chunk, rejection.reason, chunks, tdir)
        except EnvelopeTamperedError:
            return self._drop_corrupt(chunk, frames.last_seq, tdir)
        result = self._archive.store(manifest, scratch, chunk.box_id, chunk.frame.transfer_id,
                                     chunks, self._clock())
        _clear(tdir)
        duplicate = result.outcome is StoreOutcome.DUPLICATE
        self._counters["objects_duplicate" if duplicate else "objects_stored"] += 1
        log.info("object already archived" if duplicate else "object archived", extra={
            "MESSAGE_ID": (MSG.OBJECT_DUPLICATE if duplicate else MSG.OBJECT_ARCHIVED).value,
            "BOX_ID": chunk.box_id, "TRANSFER": chunk.tag, "BYTES": manifest.size, "CHUNKS": chunks})
        return [self._ack(chunk, AckFrame(AckKind.STORED, chunk.frame.transfer_id,
                                          sha256=bytes.fromhex(manifest.sha256)))]

    def _restore(self, chunk: _Verified, frames: _StagedFrames) -> tuple[Manifest, Path]:
        """Restore into a scratch file; ``_Rejection`` names what the box got wrong."""
        pieces = transfer.open_object(chunk.box_id, chunk.keys.data_key, frames,
                                      self._settings.max_object_bytes)
        try:
            manifest = next(pieces)
        except FrameError as exc:
            raise _Rejection(RejectReason.MANIFEST) from exc
        except IntegrityError as exc:  # the only one before the manifest: the size limit
            raise _Rejection(RejectReason.TOO_LARGE) from exc
        assert isinstance(manifest, Manifest)
        self._check_manifest(manifest)
        try:
            scratch = self._archive.receive(_only_bytes(pieces))
        except FrameError as exc:  # chunks after FINAL, or a FINAL too early
            raise _Rejection(RejectReason.MANIFEST) from exc
        except CodecError as exc:  # corrupt or truncated compressed stream
            raise _Rejection(RejectReason.CODEC) from exc
        except IntegrityError as exc:  # restored bytes differ from the manifest's size or hash
            raise _Rejection(RejectReason.INTEGRITY) from exc
        return manifest, scratch

    def _check_manifest(self, manifest: Manifest) -> None:
        if manifest.codec not in set(Codec):
            raise _Rejection(RejectReason.CODEC)
        if manifest.size > self._settings.max_object_bytes:
            raise _Rejection(RejectReason.TOO_LARGE)

    def _reject(self, chunk: _Verified, reason: RejectReason, chunks: int,
                tdir: Path) -> list[Outgoing]:
        record = self._archive.reject(chunk.box_id, chunk.frame.transfer_id, reason, chunks,
                                      self._clock())
        _clear(tdir)
        if record.state is TransferState.REJECTED:
            self._counters["objects_rejected"] += 1
            log.warning("object rejected", extra={
                "MESSAGE_ID": MSG.OBJECT_REJECTED.value, "BOX_ID": chunk.box_id,
                "TRANSFER": chunk.tag, "REASON": record.reason.name, "CHUNKS": chunks})
        return [self._terminal_ack(chunk, record)]

    def _drop_corrupt(self, chunk: _Verified, seq: int, tdir: Path) -> list[Outgoing]:
        """A staged file no longer verifies (our disk): drop it so a re-send replaces it."""
        self._counters["chunks_corrupt_staged"] += 1
        log.error("staged chunk is corrupt on disk; dropped", extra={
            "MESSAGE_ID": MSG.CHUNK_REJECTED.value, "BOX_ID": chunk.box_id,
            "TRANSFER": chunk.tag, "SEQ": seq})
        blobs.remove(tdir / f"{seq}.chunk")
        return [self._progress_ack(chunk, _staged_seqs(tdir))]

    def _ack(self, chunk: _Verified, ack: AckFrame) -> Outgoing:
        return Outgoing(chunk.box_id, ack.encode(chunk.box_id, chunk.keys.ack_key))

    def _progress_ack(self, chunk: _Verified, staged: set[int]) -> Outgoing:
        ranges = framing.to_ranges(staged)[:MAX_PROGRESS_RANGES]
        return self._ack(chunk, AckFrame(AckKind.PROGRESS, chunk.frame.transfer_id, ranges))

    def _terminal_ack(self, chunk: _Verified, record: TransferRecord) -> Outgoing:
        tid = chunk.frame.transfer_id
        if record.state is TransferState.STORED:
            return self._ack(chunk, AckFrame(AckKind.STORED, tid, sha256=bytes.fromhex(record.sha256)))
        return self._ack(chunk, AckFrame(AckKind.REJECTED, tid, reason=record.reason))

    def expire_staging(self) -> int:
        """Drop staged transfers idle longer than ``staging_ttl_hours``; return how many."""
        cutoff = self._clock() - self._settings.staging_ttl_hours * 3600
        expired = 0
        try:
            for tdir in self._transfer_dirs():
                expired += self._expire_one(tdir, cutoff)
        except OSError as exc:
            raise StorageError(f"expiring staging in {self._staging}: {exc.strerror or exc}") from exc
        self._archive.sweep_scratch(cutoff)
        self._counters["transfers_expired"] += expired
        if expired:  # no MESSAGE_ID yet: logs.MSG has no STAGING_EXPIRED (asked for)
            log.info("idle staged transfers dropped", extra={"COUNT": expired})
        return expired

    def _expire_one(self, tdir: Path, cutoff: float) -> bool:
        """The lock file's mtime is the transfer's last activity (touched by every chunk)."""
        with _transfer_lock(tdir, wait=False) as fd:
            if fd is None or os.fstat(fd).st_mtime >= cutoff:
                return False  # busy, or active recently
            self._archive.forget_staging(tdir.parent.name, bytes.fromhex(tdir.name))
            _clear(tdir)
        return True

    def _transfer_dirs(self) -> list[Path]:
        boxes = [b for b in self._staging.iterdir() if BOX_ID.fullmatch(b.name)] if self._staging.is_dir() else []
        return [t for b in boxes if b.is_dir() for t in b.iterdir() if _TRANSFER_DIR.fullmatch(t.name) and t.is_dir()]


class _StagedFrames:
    """Staged frames 0..chunks-1 in order; remembers the seq it handed out last."""

    def __init__(self, tdir: Path, chunks: int) -> None:
        self._dir, self._chunks, self.last_seq = tdir, chunks, -1

    def __iter__(self) -> Iterator[ChunkFrame]:
        for seq in range(self._chunks):
            self.last_seq = seq
            data = b"".join(blobs.read_pieces(self._dir / f"{seq}.chunk"))
            try:
                frame = framing.parse_chunk(data)
            except FrameError as exc:
                raise EnvelopeTamperedError(f"staged chunk {seq} is corrupt") from exc
            if frame.seq != seq:
                raise EnvelopeTamperedError(f"staged chunk {seq} holds chunk {frame.seq}")
            yield frame


def _only_bytes(pieces: Iterator[bytes | Manifest]) -> Iterator[bytes]:
    for piece in pieces:
        assert isinstance(piece, bytes)
        yield piece


def _staged_seqs(tdir: Path) -> set[int]:
    return {int(m.group(1)) for name in os.listdir(tdir) if (m := _CHUNK_FILE.fullmatch(name))}


def _clear(tdir: Path) -> None:
    """Remove a transfer's staging; the caller holds its lock. Missing is fine."""
    if not tdir.is_dir():
        return
    for entry in tdir.iterdir():
        if entry.name != LOCK_NAME:
            entry.unlink(missing_ok=True)
    (tdir / LOCK_NAME).unlink(missing_ok=True)  # waiters notice the inode change and retry
    try:
        tdir.rmdir()
    except OSError:
        pass  # a waiter already re-created its lock file here; it will clear again


@contextmanager
def _transfer_lock(tdir: Path, wait: bool = True) -> Iterator[int | None]:
    """Hold ``tdir/.lock`` exclusively and yield its fd; None if not ``wait`` and busy."""
    lock, fd = tdir / LOCK_NAME, None
    while fd is None:
        if wait:
            ensure_dir_durable(tdir)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                raise FileNotFoundError(lock)  # cleared while we waited: start over
        except (FileNotFoundError, BlockingIOError):
            if fd is not None:
                os.close(fd)
                fd = None
            if not wait:
                break
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
