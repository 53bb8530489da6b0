"""Ingest of chunk frames: verify, stage, assemble, archive, acknowledge. No MQTT here.

``Ingest.handle_chunk(box_id, payload)`` takes one message body and the box id
from its topic and returns the acks to publish to that box:

* not a frame, a frame of an old wire version (``ChunkRejection.VERSION``: a v1 box
  expects an HMAC ack, which we no longer make), a key that does not unwrap, or a
  chunk failing AES-GCM (altered, replayed into another transfer, published under
  another box): refused, counted, logged, no ack;
* a transfer the index holds as STORED or REJECTED: that ack again;
* else the verified frame is staged durably as ``<staging>/<box>/<transfer>/<seq>.chunk``
  and a PROGRESS ack lists the staged seqs; once 0..FINAL are staged the object
  is restored into a scratch file on the archive's filesystem, archived, marked
  STORED, its staging removed, and a STORED ack (superseding PROGRESS) returned. On the way into
  the archive its Accession Number is read (``core.accession``) and kept beside it as a keyed
  digest only, for a resend by accession number.
  A manifest, codec, size or hash failure marks it REJECTED with that reason.

Crash safety: a chunk is acked only once its file and directory entry are
fsynced; an object only once it is under its final name and its row committed;
staging goes only after that commit. A crash leaves staged chunks, which the
next (re-sent) chunk of the transfer re-examines and assembles, or a committed row.

Multi-worker safety: chunks of one transfer may reach any worker (the broker's
shared subscription routes per message, not per transfer), so staging is shared
(``gateway.cloud.ingest.staging``: a directory on one node, or PostgreSQL for workers on
several machines). A worker holds the transfer exclusively across staging, the
completeness check, assembly and clean-up: one worker assembles, a waiter
re-reads the index and answers STORED. Behind it the index serialises stores
of one object and its ``(sop_instance_uid, sha256)`` key keeps one copy even of
one object sent twice. Not thread safe: one ``Ingest`` per thread (an
``Archive`` may be shared).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.cloud.archive.store import Archive, StoreOutcome, TransferRecord, TransferState
from gateway.cloud.fleet.deadletter import DeadLetterReason, DeadLetters
from gateway.cloud.ingest.budget import LIMITS, BoxBudgets, OverBudget
from gateway.cloud.ingest.staging import FileStaging, StagedTransfer, Staging
from gateway.codecs.imagecodecs_codec import IMAGE_DECODERS
from gateway.config import BOX_ID, BudgetSettings, IngestSettings
from gateway.core import accession, framing, transfer
from gateway.core.acksig import AckSigner
from gateway.core.codec import Codec
from gateway.core.errors import CodecError, EnvelopeTamperedError, FrameError, IntegrityError, UnsupportedVersionError
from gateway.core.framing import AckFrame, AckKind, ChunkFrame, RejectReason
from gateway.core.transfer import Manifest
from gateway.logs import MSG, escape

log = logging.getLogger(__name__)

MAX_PROGRESS_RANGES = 256  # a PROGRESS ack stays ~2 KiB; omitted ranges are merely re-sent
KEY_CACHE_ENTRIES = 1024


class ChunkRejection(enum.Enum):
    MALFORMED = "malformed"  # not a chunk frame, or a box id that is not one
    KEY = "key"  # the data key does not unwrap: forged, or replayed into another transfer
    AUTH = "auth"  # AES-GCM fails: altered, or published under another box id
    VERSION = "version"  # an old wire version (v1: HMAC acks); the box must be upgraded


_LETTER_REASON = {
    ChunkRejection.MALFORMED: DeadLetterReason.MALFORMED,
    ChunkRejection.KEY: DeadLetterReason.KEY,
    ChunkRejection.AUTH: DeadLetterReason.AUTH,
    ChunkRejection.VERSION: DeadLetterReason.VERSION,
}

COUNTERS = (
    "chunks_received", "chunks_staged", "chunks_duplicate", "chunks_rejected",
    *(f"chunks_rejected_{r.value}" for r in ChunkRejection), "chunks_corrupt_staged",
    "objects_stored", "objects_duplicate", "objects_rejected", "transfers_expired", "chunks_over_budget",
    *(f"chunks_over_budget_{limit}" for limit in LIMITS),
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

    def __init__(self, settings: IngestSettings, envelope_private_key: bytes, ack_signer: AckSigner,
                 archive: Archive, staging: Staging | Path, clock: Callable[[], float] = time.time,
                 dead_letters: DeadLetters | None = None, budgets: BudgetSettings | None = None) -> None:
        self._settings, self._private, self._archive = settings, envelope_private_key, archive
        self._signer = ack_signer
        self._accession_key = accession.index_key(envelope_private_key)  # the index keeps digests only
        self._staging: Staging = FileStaging(staging) if isinstance(staging, Path) else staging
        self._clock = clock
        self._dead_letters = dead_letters
        self._budgets = None if budgets is None else BoxBudgets(budgets, settings.max_object_bytes, self._staging,
                                                                 clock)
        # No object of max_object_bytes needs more chunks: every chunk but the last carries >= 1 KiB.
        self._max_seq = settings.max_object_bytes // 1024 + 2
        self._keys: OrderedDict[tuple[str, bytes], _Keys] = OrderedDict()
        self._counters = dict.fromkeys(COUNTERS, 0)

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def handle_chunk(self, box_id: str, payload: bytes, topic: str = "") -> list[Outgoing]:
        """Acks to publish for one chunk; raises ``LocalError`` if our disk or index fails."""
        self._counters["chunks_received"] += 1
        try:
            if self._budgets is not None:
                self._budgets.admit_message(box_id)
            chunk = self._authenticate(box_id, payload)
        except _Refused as refused:
            self._count_refusal(box_id, topic, len(payload), refused)
            return []
        except OverBudget as over:
            return self._over_budget(box_id, topic, len(payload), over)
        thex = chunk.frame.transfer_id.hex()
        record = self._archive.lookup_transfer(box_id, chunk.frame.transfer_id)
        if record is not None and record.state is not TransferState.STAGING \
                and not self._staging.present(box_id, thex):
            return [self._terminal_ack(chunk, record)]
        new_transfer = record is None and not self._staging.present(box_id, thex)
        if self._budgets is not None:
            try:
                self._budgets.admit_chunk(box_id, new_transfer)
            except OverBudget as over:
                return self._over_budget(box_id, topic, len(payload), over)
            self._budgets.staged(box_id, len(payload), new_transfer)
        with self._staging.hold(box_id, thex, self._clock()) as staged:
            return self._handle_locked(chunk, staged)

    def _over_budget(self, box_id: str, topic: str, size: int, over: OverBudget) -> list[Outgoing]:
        """Not acknowledged: the box resends it later. Dead-lettered (bounded per box) for the alert."""
        self._counters["chunks_over_budget"] += 1
        limit = f"chunks_over_budget_{over.limit}"
        self._counters[limit] = self._counters.get(limit, 0) + 1
        if self._dead_letters is not None:
            self._dead_letters.put(box_id, topic, DeadLetterReason.BUDGET, str(over), size)
        return []

    def _authenticate(self, box_id: str, payload: bytes) -> _Verified:
        if not BOX_ID.fullmatch(box_id):
            raise _Refused(ChunkRejection.MALFORMED, "box id is not a valid box id")
        try:
            frame = framing.parse_chunk(payload)
        except UnsupportedVersionError as exc:
            raise _Refused(ChunkRejection.VERSION, str(exc), bytes(payload[8:24])) from exc
        except FrameError as exc:
            raise _Refused(ChunkRejection.MALFORMED, str(exc)) from exc
        if frame.seq > self._max_seq:
            raise _Refused(ChunkRejection.MALFORMED, f"chunk number {frame.seq} is beyond any object's "
                           f"(at most {self._max_seq} for {self._settings.max_object_bytes} bytes)",
                           frame.transfer_id)
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
            hit = _Keys(frame.eph_public, frame.wrapped_key, data_key)
            self._keys[slot] = hit
        self._keys.move_to_end(slot)
        while len(self._keys) > KEY_CACHE_ENTRIES:
            self._keys.popitem(last=False)
        return hit

    def _count_refusal(self, box_id: str, topic: str, size: int, refused: _Refused) -> None:
        self._counters["chunks_rejected"] += 1
        self._counters[f"chunks_rejected_{refused.why.value}"] += 1
        if self._dead_letters is not None:  # it logs, bounded per box
            self._dead_letters.put(box_id, topic, _LETTER_REASON[refused.why], str(refused), size)
            return
        log.warning("chunk rejected: %s", refused, extra={
            "MESSAGE_ID": MSG.CHUNK_REJECTED.value, "BOX_ID": escape(box_id, 64),
            "TRANSFER": refused.transfer_id.hex()[:8], "BYTES": size, "REASON": refused.why.value})

    def _handle_locked(self, chunk: _Verified, tdir: StagedTransfer) -> list[Outgoing]:
        record = self._archive.lookup_transfer(chunk.box_id, chunk.frame.transfer_id)
        if record is not None and record.state is not TransferState.STAGING:
            tdir.clear()  # left by a crash after the commit, or the winner of a race
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
        staged = tdir.seqs()
        if chunks and staged.issuperset(range(chunks)):
            return self._assemble(chunk, chunks, tdir)
        return [self._progress_ack(chunk, staged)]

    def _stage(self, chunk: _Verified, tdir: StagedTransfer, record: TransferRecord | None) -> int:
        """Stage the frame (an existing seq is left alone); return the known chunk count."""
        seq = chunk.frame.seq
        if tdir.put(seq, chunk.raw):
            self._counters["chunks_staged"] += 1
        else:
            self._counters["chunks_duplicate"] += 1
        chunks = record.chunks if record is not None else 0
        if chunk.frame.final and chunks < seq + 1:
            chunks = seq + 1
        if record is None or record.chunks != chunks:
            self._archive.note_staging(chunk.box_id, chunk.frame.transfer_id, chunks, self._clock())
        return chunks

    def _assemble(self, chunk: _Verified, chunks: int, tdir: StagedTransfer) -> list[Outgoing]:
        frames = _StagedFrames(tdir, chunks)
        try:
            manifest, scratch, accession_number = self._restore(chunk, frames)
        except _Rejection as rejection:
            return self._reject(chunk, rejection.reason, chunks, tdir)
        except EnvelopeTamperedError:
            return self._drop_corrupt(chunk, frames.last_seq, tdir)
        result = self._archive.store(manifest.identity, scratch, chunk.box_id, chunk.frame.transfer_id,
                                     chunks, self._clock(), manifest.item_id,
                                     accession.digest(self._accession_key, chunk.box_id, accession_number))
        tdir.clear()
        duplicate = result.outcome is StoreOutcome.DUPLICATE
        self._counters["objects_duplicate" if duplicate else "objects_stored"] += 1
        log.info("object already archived" if duplicate else "object archived", extra={
            "MESSAGE_ID": (MSG.OBJECT_DUPLICATE if duplicate else MSG.OBJECT_ARCHIVED).value,
            "BOX_ID": chunk.box_id, "TRANSFER": chunk.tag, "BYTES": manifest.identity.size, "CHUNKS": chunks})
        return [self._ack(chunk, AckFrame(AckKind.STORED, chunk.frame.transfer_id,
                                          sha256=bytes.fromhex(manifest.identity.sha256)))]

    def _restore(self, chunk: _Verified, frames: _StagedFrames) -> tuple[Manifest, Path, str]:
        """Restore into a scratch file, reading the accession number on the way ("" if none);
        ``_Rejection`` names what the box got wrong."""
        pieces = transfer.open_object(chunk.box_id, chunk.keys.data_key, frames,
                                      self._settings.max_object_bytes, IMAGE_DECODERS)
        try:
            manifest = next(pieces)
        except FrameError as exc:
            raise _Rejection(RejectReason.MANIFEST) from exc
        except IntegrityError as exc:  # the only one before the manifest: the size limit
            raise _Rejection(RejectReason.TOO_LARGE) from exc
        assert isinstance(manifest, Manifest)
        self._check_manifest(manifest)
        reader = accession.AccessionReader(manifest.identity.transfer_syntax_uid, time.monotonic)
        try:
            scratch = self._archive.receive(reader.through(_only_bytes(pieces)))
        except FrameError as exc:  # chunks after FINAL, or a FINAL too early
            raise _Rejection(RejectReason.MANIFEST) from exc
        except CodecError as exc:  # corrupt or truncated compressed stream
            raise _Rejection(RejectReason.CODEC) from exc
        except IntegrityError as exc:  # restored bytes differ from the manifest's size or hash
            raise _Rejection(RejectReason.INTEGRITY) from exc
        return manifest, scratch, reader.accession()

    def _check_manifest(self, manifest: Manifest) -> None:
        if manifest.codec not in set(Codec):
            raise _Rejection(RejectReason.CODEC)
        if manifest.identity.size > self._settings.max_object_bytes:
            raise _Rejection(RejectReason.TOO_LARGE)

    def _reject(self, chunk: _Verified, reason: RejectReason, chunks: int,
                tdir: StagedTransfer) -> list[Outgoing]:
        record = self._archive.reject(chunk.box_id, chunk.frame.transfer_id, reason, chunks,
                                      self._clock())
        tdir.clear()
        if record.state is TransferState.REJECTED:
            self._counters["objects_rejected"] += 1
            log.warning("object rejected", extra={
                "MESSAGE_ID": MSG.OBJECT_REJECTED.value, "BOX_ID": chunk.box_id,
                "TRANSFER": chunk.tag, "REASON": record.reason.name, "CHUNKS": chunks})
        return [self._terminal_ack(chunk, record)]

    def _drop_corrupt(self, chunk: _Verified, seq: int, tdir: StagedTransfer) -> list[Outgoing]:
        """A staged file no longer verifies (our disk): drop it so a re-send replaces it."""
        self._counters["chunks_corrupt_staged"] += 1
        log.error("staged chunk is corrupt on disk; dropped", extra={
            "MESSAGE_ID": MSG.CHUNK_REJECTED.value, "BOX_ID": chunk.box_id,
            "TRANSFER": chunk.tag, "SEQ": seq})
        tdir.drop(seq)
        return [self._progress_ack(chunk, tdir.seqs())]

    def _ack(self, chunk: _Verified, ack: AckFrame) -> Outgoing:
        return Outgoing(chunk.box_id, ack.encode(chunk.box_id, self._signer))

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
        expired = self._staging.expire(
            cutoff, lambda box_id, thex: self._archive.forget_staging(box_id, bytes.fromhex(thex)))
        self._archive.sweep_scratch(cutoff)
        self._counters["transfers_expired"] += expired
        if expired:
            log.info("idle staged transfers dropped", extra={"MESSAGE_ID": MSG.STAGING_EXPIRED.value, "COUNT": expired})
        return expired

    def close(self) -> None:
        self._staging.close()


class _StagedFrames:
    """Staged frames 0..chunks-1 in order; remembers the seq it handed out last."""

    def __init__(self, staged: StagedTransfer, chunks: int) -> None:
        self._staged, self._chunks, self.last_seq = staged, chunks, -1

    def __iter__(self) -> Iterator[ChunkFrame]:
        for seq in range(self._chunks):
            self.last_seq = seq
            data = self._staged.read(seq)
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
