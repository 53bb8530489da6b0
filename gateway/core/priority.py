"""Which instances jump the uplink queue: STAT rules, as data.

A rule set comes from ``[priority]``; the inputs are facts the DICOM listener saw (calling AE
title, Modality, the C-STORE Priority field and the Requested Procedure / Study Priority
attributes). Higher numbers go first in the packer and the sender.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass


class Priority(enum.IntEnum):
    ROUTINE = 0
    HIGH = 1
    STAT = 2


DIMSE_PRIORITY_HIGH = 0x0001  # C-STORE Priority (0000,0700): 0 medium, 1 high, 2 low


@dataclass(frozen=True)
class PriorityRules:
    stat_calling_aets: Collection[str] = ()
    stat_modalities: Collection[str] = ()
    honor_dicom_priority: bool = True


def classify(rules: PriorityRules, calling_ae: str, modality: str, dimse_priority: int,
             requested_priority: str) -> Priority:
    """STAT if a site rule names the calling AE or the modality, or the dataset says STAT;
    HIGH if the C-STORE or the dataset asks for high priority; else ROUTINE."""
    if calling_ae in rules.stat_calling_aets or modality.upper() in {m.upper() for m in rules.stat_modalities}:
        return Priority.STAT
    if not rules.honor_dicom_priority:
        return Priority.ROUTINE
    asked = requested_priority.strip().upper()
    if asked == "STAT":
        return Priority.STAT
    if asked == "HIGH" or dimse_priority == DIMSE_PRIORITY_HIGH:
        return Priority.HIGH
    return Priority.ROUTINE
