"""Filling the worklist cache: one ``WorklistUpdate`` applied to this box's ``WorklistStore``.

The update message (``core.schema.WorklistUpdate``) is the one the cloud will publish to a box
over MQTT; today it comes from a file (``mgw edge worklist import FILE``). Both paths go through
``apply_update``: parsed at the boundary, refused unless it names this box, applied in order (a
sequence number at or below the last applied is ignored whole). The log says counts, never an
attribute of a patient.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.adapters.worklist_store import Applied, WorklistStore
from gateway.core import schema
from gateway.core.errors import FrameError, StorageError
from gateway.logs import MSG

log = logging.getLogger(__name__)


def read_update(path: Path) -> schema.WorklistUpdate:
    """The update in the JSON file ``path``, read up to one byte past the limit; ``FrameError``
    naming the offending field, or the size, when it is not one."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(schema.MAX_WORKLIST_BYTES + 1)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return schema.parse(schema.WorklistUpdate, raw, str(path), schema.MAX_WORKLIST_BYTES)


def apply_update(store: WorklistStore, update: schema.WorklistUpdate, box_id: str, now: float,
                 source: str) -> Applied:
    """Apply ``update`` if it is for ``box_id``; ``FrameError`` if it is another box's."""
    if update.box_id != box_id:
        raise FrameError(f"worklist update for box {update.box_id}, not this box ({box_id})")
    applied = store.apply(update, now)
    log.info("worklist update %s", "applied" if applied.applied else "ignored (not newer)", extra={
        "MESSAGE_ID": MSG.WORKLIST_UPDATED.value, "SOURCE": source, "SEQ": update.seq, "APPLIED": applied.applied,
        "UPSERTED": applied.upserted, "CANCELLED": applied.cancelled, "LAST_SEQ": applied.last_seq})
    return applied
