"""Pack a received instance: compress and seal it into the outbox, durably.

One item at a time: seal it (``edge/seal.py``: read the original blob,
checking it against the item's identity on the way, choose its codec, seal it
with a fresh data key for the cloud), write the frames to
``outbox/<transfer>.frames`` (tmp + fsync + rename), then commit PACKED.
A crash between the file and the commit leaves an orphan file that the
startup sweep removes; the item is simply packed again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters import blobs
from gateway.adapters.store import SpoolItem, SpoolStore
from gateway.codecs.pixel import Effort
from gateway.config import EdgeSettings
from gateway.core import spool
from gateway.core.errors import GatewayError, IntegrityError, SpoolFullError
from gateway.core.framing import MIN_FRAME_BYTES
from gateway.core.spool import ItemState
from gateway.edge.seal import seal_item
from gateway.logs import MSG

log = logging.getLogger(__name__)
MAX_BUDGET_SCALE = 8.0


@dataclass
class _Tally:
    frames: int = 0
    frame0_bytes: int = 0
    total_bytes: int = 0


def outbox_path(outbox_dir: Path, transfer_hex: str) -> Path:
    return outbox_dir / f"{transfer_hex}.frames"


def frame_offset(item: SpoolItem, seq: int) -> tuple[int, int]:
    """Byte offset and length of chunk ``seq`` in the item's outbox file."""
    assert item.frame0_bytes is not None and item.frame_bytes is not None
    assert item.packed_bytes is not None and item.final_seq is not None
    if seq == 0:
        return 0, item.frame0_bytes
    start = item.frame0_bytes + (seq - 1) * item.frame_bytes
    end = item.packed_bytes if seq == item.final_seq else start + item.frame_bytes
    return start, end - start


class Packer:
    def __init__(
        self,
        settings: EdgeSettings,
        store: SpoolStore,
        blob_dir: Path,
        outbox_dir: Path,
        cloud_public: bytes,
        clock: Callable[[], float],
        urandom: Callable[[int], bytes] = os.urandom,
        cache_key: bytes | None = None,
        frame_limit: Callable[[], int] = lambda: 0,
    ) -> None:
        self._cache_key = cache_key
        self._settings = settings
        self._store = store
        self._blob_dir = blob_dir
        self._outbox_dir = outbox_dir
        self._cloud_public = cloud_public
        self._clock = clock
        self._urandom = urandom
        self._frame_limit = frame_limit  # the broker's largest chunk frame, 0 = none known

    def pack_one(self, item: SpoolItem) -> bool:
        """Pack ``item``; True if it is now PACKED, False if it failed (and maybe quarantined)."""
        try:
            self._pack(item)
            return True
        except SpoolFullError as exc:
            log.warning("no space to pack; will retry", extra={"ITEM_ID": item.id, "REASON": str(exc)})
            return False
        except GatewayError as exc:
            self._failed(item, exc)
            return False

    def _pack(self, item: SpoolItem) -> None:
        up = self._settings.uplink
        frame_bytes = self.frame_bytes()
        sealed = seal_item(item, self._blob_dir, self._cache_key, box_id=self._settings.box.id,
                           cloud_public=self._cloud_public, frame_bytes=frame_bytes, zstd_level=up.zstd_level,
                           pixel_codec=up.pixel_codec, urandom=self._urandom, effort=self.effort())
        tally = _Tally()
        tid = sealed.transfer_id.hex()
        blobs.write_atomic(outbox_path(self._outbox_dir, tid), self._counted(sealed.frames, tally))
        self._store.transition(
            item.id, spool.Packed(), self._clock(),
            transfer_id=tid, final_seq=tally.frames - 1, frame0_bytes=tally.frame0_bytes,
            frame_bytes=frame_bytes, packed_bytes=tally.total_bytes,
            ack_key=None, acked_ranges="[]",  # acks are signed by the cloud (wire v2): no per-item secret
        )
        log.info("instance packed", extra={
            "MESSAGE_ID": MSG.ITEM_PACKED.value, "ITEM_ID": item.id, "BYTES": item.identity.size,
            "PACKED_BYTES": tally.total_bytes, "CHUNKS": tally.frames, "CODEC": sealed.manifest.codec})

    def effort(self) -> Effort:
        """The pixel codec's settings, its budget raised by one for every ``uplink.codec_backlog_mb``
        packed but not yet acknowledged (up to ``MAX_BUDGET_SCALE``): a backlogged uplink has CPU to spare."""
        up = self._settings.uplink
        counts = self._store.counts()
        backlog = sum(counts.get(s.value, {}).get("bytes", 0.0) for s in (ItemState.PACKED, ItemState.SENDING))
        scale = min(MAX_BUDGET_SCALE, 1.0 + backlog / (up.codec_backlog_mb * 1e6))
        return Effort(up.pixel_format, up.codec_budget_ms_per_mb, up.jpegxl_effort, scale)

    def frame_bytes(self) -> int:
        """``uplink.max_frame_bytes``, lowered to what the broker last said it accepts."""
        limit = self._frame_limit()
        configured = self._settings.uplink.max_frame_bytes
        return max(MIN_FRAME_BYTES, min(configured, limit)) if limit else configured

    @staticmethod
    def _counted(frames: Iterator[bytes], tally: _Tally) -> Iterator[bytes]:
        for frame in frames:
            if tally.frames == 0:
                tally.frame0_bytes = len(frame)
            tally.frames += 1
            tally.total_bytes += len(frame)
            yield frame

    def _failed(self, item: SpoolItem, exc: GatewayError) -> None:
        """A corrupt blob is quarantined at once; other failures after bounded attempts."""
        now, reason = self._clock(), str(exc)
        attempts = self._store.note_pack_failure(item.id, now)
        if isinstance(exc, IntegrityError) or attempts >= self._settings.spool.max_pack_attempts:
            self._store.transition(item.id, spool.PackFailed(reason=reason), now)
            log.error("instance quarantined: cannot pack", extra={
                "MESSAGE_ID": MSG.ITEM_QUARANTINED.value, "ITEM_ID": item.id,
                "ATTEMPTS": attempts, "REASON": reason})
        else:
            log.warning("pack failed, will retry", extra={"ITEM_ID": item.id, "ATTEMPTS": attempts, "REASON": reason})
