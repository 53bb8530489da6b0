"""``mgw cloud import``: an emergency export from a USB stick into the archive.

Every frame goes through the same ``Ingest.handle_chunk`` as frames from MQTT:
authenticated against the box id named in the export (it is in every chunk's
associated data, so a wrong one fails AES-GCM), staged, assembled, hash-checked
and archived. Importing twice changes nothing: the transfer records answer
STORED and the archive keeps one copy per SOP Instance UID and hash. When the
box's uplink returns and it sends the same transfers, the cloud answers STORED.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.appliance.export import EXPORT_FORMAT, EXPORT_PREFIX, EXPORT_VERSION, MANIFEST_NAME, read_frames
from gateway.cloud.archive.store import Archive, TransferState
from gateway.cloud.ingest.pipeline import Ingest
from gateway.config import BOX_ID
from gateway.core.errors import FrameError, GatewayError
from gateway.logs import MSG

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    stored: int = 0
    rejected: int = 0
    incomplete: int = 0
    unreadable: int = 0
    exports: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"stored": self.stored, "rejected": self.rejected, "incomplete": self.incomplete,
                "unreadable": self.unreadable, "exports": self.exports}


def export_dirs(path: Path) -> list[Path]:
    """``path`` itself if it is an export, else the exports directly inside it (a stick's root)."""
    if (path / MANIFEST_NAME).is_file():
        return [path]
    return sorted(p for p in path.glob(f"{EXPORT_PREFIX}*") if (p / MANIFEST_NAME).is_file())


def import_exports(path: Path, ingest: Ingest, archive: Archive) -> ImportSummary:
    dirs = export_dirs(path)
    if not dirs:
        raise FrameError(f"{path}: no emergency export (no {MANIFEST_NAME})")
    summary = ImportSummary()
    for directory in dirs:
        _import_one(directory, ingest, archive, summary)
    return summary


def _manifest(directory: Path) -> dict[str, Any]:
    try:
        doc = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise FrameError(f"{directory.name}: unreadable manifest") from exc
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or doc.get("v") != EXPORT_VERSION:
        raise FrameError(f"{directory.name}: not a version {EXPORT_VERSION} {EXPORT_FORMAT}")
    if not isinstance(doc.get("box_id"), str) or not BOX_ID.fullmatch(doc["box_id"]):
        raise FrameError(f"{directory.name}: manifest names no valid box id")
    if not isinstance(doc.get("transfers"), list):
        raise FrameError(f"{directory.name}: manifest lists no transfers")
    return doc


def _import_one(directory: Path, ingest: Ingest, archive: Archive, summary: ImportSummary) -> None:
    doc = _manifest(directory)
    box_id = doc["box_id"]
    summary.exports.append(directory.name)
    for entry in doc["transfers"]:
        try:
            transfer_id = bytes.fromhex(str(entry["transfer_id"]))
            path = directory / Path(str(entry["file"])).name
            if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
                raise FrameError(f"{path.name}: SHA-256 differs from the manifest")
            for frame in read_frames(path):
                ingest.handle_chunk(box_id, frame)
        except (OSError, KeyError, ValueError, TypeError, GatewayError) as exc:
            summary.unreadable += 1
            log.warning("export file not imported", extra={"EXPORT": directory.name, "ERROR": str(exc)})
            continue
        record = archive.lookup_transfer(box_id, transfer_id)
        if record is None or record.state is TransferState.STAGING:
            summary.incomplete += 1
        elif record.state is TransferState.STORED:
            summary.stored += 1
        else:
            summary.rejected += 1
    log.info("emergency export imported", extra={
        "MESSAGE_ID": MSG.EXPORT_IMPORTED.value, "BOX_ID": box_id, "EXPORT": directory.name,
        "STORED": summary.stored, "REJECTED": summary.rejected, "INCOMPLETE": summary.incomplete,
        "UNREADABLE": summary.unreadable})
