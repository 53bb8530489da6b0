"""The versions of archived instances, as operators read them (``mgw cloud archive versions``, the console).

The archive keeps every version of an instance (the same SOP Instance UID with other bytes) and
marks all but the current one superseded (``Archive.store``, docs/conformance.md 4.3). This module
turns index rows into ``Version`` values and presents them: a JSON document and a bilingual text
table, each time in the zone of the site of the box that sent the version. No I/O: the caller
opens the index and knows the zones.

UIDs are patient-linked identifiers: they are shown to the operator who asked, never logged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.cloud.archive.index import Index
from gateway.core.errors import RequestError
from gateway.core.utilisation import Zone
from gateway.i18n import N_, _

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # PS3.5 9.1: digits and dots
MAX_UID_CHARS = 64
MAX_STUDY_VERSIONS = 10_000  # rows a study listing returns at most (a large study has a few thousand)
SHA_PREFIX_CHARS = 12  # as the archive's object names (<sop>_<sha12>)


@dataclass(frozen=True)
class Version:
    sop_instance_uid: str
    sha256: str
    box_id: str
    size: int
    stored_at: float  # when the cloud archived it
    superseded_at: float | None  # None: the current version

    @property
    def current(self) -> bool:
        return self.superseded_at is None


def parse_uid(text: str, what: str) -> str:
    """A UID from outside, or ``RequestError`` naming ``what`` (never echoing the value)."""
    if not (0 < len(text) <= MAX_UID_CHARS) or not UID.fullmatch(text):
        raise RequestError(_("{what} must be a DICOM UID (digits and dots, at most {max} characters)").format(
            what=what, max=MAX_UID_CHARS))
    return text


def _version(row: dict[str, Any]) -> Version:
    superseded = row.get("superseded_at")
    return Version(str(row["sop_instance_uid"]), str(row["sha256"]), str(row["box_id"]), int(row["size"]),
                   float(row["stored_at"]), None if superseded is None else float(superseded))


def of_instance(index: Index, sop_instance_uid: str) -> list[Version]:
    """Every version of one instance, oldest archived first."""
    return [_version(r) for r in index.versions(sop_instance_uid)]


def of_study(index: Index, study_instance_uid: str) -> list[Version]:
    """Every version of every instance of a study (at most ``MAX_STUDY_VERSIONS``)."""
    return [_version(r) for r in index.study_versions(study_instance_uid, MAX_STUDY_VERSIONS)]


def local_time(at: float, zone: Zone) -> str:
    """``at`` as ``YYYY-MM-DD HH:MM:SS +HH:MM`` in ``zone``."""
    offset = zone.utc_offset_s(at)
    sign, minutes = ("+" if offset >= 0 else "-"), abs(offset) // 60
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at + offset))
    return f"{stamp} {sign}{minutes // 60:02d}:{minutes % 60:02d}"


def as_json(version: Version, zone: Zone) -> dict[str, Any]:
    return {"sop_instance_uid": version.sop_instance_uid, "box_id": version.box_id, "size": version.size,
            "sha256": version.sha256, "stored_at": version.stored_at,
            "stored_local": local_time(version.stored_at, zone),
            "superseded_at": version.superseded_at, "current": version.current}


HEADER = (N_("archived"), N_("box"), N_("bytes"), N_("sha256"), N_("state"))  # shown in the CLI's language
CURRENT = N_("current")
SUPERSEDED = N_("superseded")


def text_table(versions: Iterable[Version], zone_of: Callable[[str], Zone]) -> str:
    """One block per instance (its UID, then one line per version), in the CLI's language."""
    lines: list[str] = []
    uid = None
    for v in versions:
        if v.sop_instance_uid != uid:
            uid = v.sop_instance_uid
            if lines:
                lines.append("")
            lines += [f"SOP Instance UID {uid}", _row(_(h) for h in HEADER)]
        cells = [local_time(v.stored_at, zone_of(v.box_id)), v.box_id, str(v.size),
                 v.sha256[:SHA_PREFIX_CHARS], _(CURRENT) if v.current else _(SUPERSEDED)]
        lines.append(_row(cells))
    return "\n".join(lines)


def _row(cells: Iterable[str]) -> str:
    return ("  " + "  ".join(f"{c:26s}" if i == 0 else f"{c:18s}" for i, c in enumerate(cells))).rstrip()
