"""Seal one spooled item for the cloud: the one place an item's original is read, checked and sealed.

The spool packer (``edge/packer.py``), the USB emergency export (``appliance/export.py``) and
the quarantine's replay check (``edge/quarantine.py``) all come here. The pure steps are in
the core: ``core.instance.verified`` checks the original against the item's identity,
``core.transfer`` draws the object's keys, builds the manifest from the identity and seals
chunk frames. This module is the I/O around them: the blob, opened with the cache key and
never through a link (``cache.read_blob``), and the codec, chosen from the blob's header
(``codecs/pixel.py``).

Nothing here writes: the caller puts the frames where they go (the outbox, a stick).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters.store import SpoolItem
from gateway.codecs import pixel
from gateway.core.codec import Codec
from gateway.core.errors import GatewayError
from gateway.core.instance import verified
from gateway.core.transfer import Manifest, ObjectKeys, seal_object, seal_payload
from gateway.edge import cache

PIXEL_CODECS = {1: Codec.PIXEL, 2: Codec.PIXEL2}


def original(item: SpoolItem, blob_dir: Path, cache_key: bytes | None) -> Iterator[bytes]:
    """The item's original bytes; ``IntegrityError`` once they end unless they are still the
    bytes of its identity (size and SHA-256), ``StorageError`` if the blob cannot be read."""
    return verified(cache.read_blob(blob_dir / item.blob_name, cache_key), item.identity,
                    f"spooled blob of item {item.id} no longer matches its hash")


def intact(item: SpoolItem, blob_dir: Path, cache_key: bytes | None) -> bool:
    """Whether the item's blob can still be read and is still its identity's bytes."""
    try:
        for _ in original(item, blob_dir, cache_key):
            pass
    except (GatewayError, OSError):
        return False
    return True


@dataclass(frozen=True)
class Sealed:
    transfer_id: bytes
    manifest: Manifest
    # Chunk frames, manifest first: the blob is read, checked and sealed as they are consumed,
    # so a blob that no longer matches raises IntegrityError after the last frame, and the
    # caller keeps nothing it wrote before that.
    frames: Iterator[bytes]


def seal_item(item: SpoolItem, blob_dir: Path, cache_key: bytes | None, *, box_id: str, cloud_public: bytes,
              frame_bytes: int, zstd_level: int, pixel_codec: bool,
              urandom: Callable[[int], bytes] = os.urandom, effort: pixel.Effort | None = None) -> Sealed:
    """Seal ``item`` to the cloud's key under a fresh transfer id: PIXEL2 (PIXEL when ``effort``
    asks for format 1) when ``pixel_codec`` and its header has a pixel plan, else ZSTD
    (docs/architecture.md, "Compression"). ``effort`` sets the pixel codec's budget."""
    effort = effort or pixel.Effort()
    keys = ObjectKeys.draw(cloud_public, urandom)
    plan = None
    if pixel_codec:
        head = pixel.head_of(cache.read_blob(blob_dir / item.blob_name, cache_key))
        plan = pixel.plan(head, item.identity.transfer_syntax_uid)
    manifest = Manifest(item.identity, Codec.ZSTD if plan is None else PIXEL_CODECS[effort.pixel_format], item.id)
    checked = original(item, blob_dir, cache_key)
    if plan is None:
        frames = seal_object(box_id, keys, manifest, checked, frame_bytes, zstd_level)
    else:
        frames = seal_payload(box_id, keys, manifest, pixel.pixel_payload(checked, plan, zstd_level, effort),
                              frame_bytes)
    return Sealed(keys.transfer_id, manifest, frames)
