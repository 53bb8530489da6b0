"""Names from pydicom's DICOM dictionary, for operator-facing text (``mgw quarantine``)."""

from __future__ import annotations

from pydicom.uid import UID


def sop_class_name(uid: str) -> str:
    """The SOP Class's registered name, or "unknown SOP class" (never echoes the UID itself)."""
    name = UID(uid).name
    return name if name != uid else "unknown SOP class"
