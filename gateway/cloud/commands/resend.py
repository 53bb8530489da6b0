"""Resend by accession number: the cloud resolves it to the Study Instance UIDs it archived from the box.

The box keeps no accession numbers (it answers a resend by accession "not held", as for an older
cloud). The archive index keeps each instance's accession number as a keyed digest only
(``core.accession``, written by the ingest), so the API and ``mgw cloud command issue`` compute the
digest of the accession number the operator gave, for that box, look up the studies archived from it,
and queue one resend command per Study Instance UID, sealed as usual. None found is refused
(``UnknownAccession``: the API answers 404, the CLI an error); more than ``MAX_STUDIES`` too (resend
them by UID). The audit log and the log carry the digest, never the accession number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.cloud.commands.queue import CommandQueue
from gateway.cloud.commands.store import CommandRow
from gateway.core import command_rules
from gateway.core.command_wire import Kind
from gateway.core.errors import RequestError

MAX_STUDIES = 20  # an accession number names one study, rarely a few
Studies = Callable[[str, str, int], list[str]]  # (box id, accession digest, limit) -> Study Instance UIDs


class UnknownAccession(RequestError):
    """No study (``found`` 0) or too many archived from the box have this accession number."""

    def __init__(self, reason: str, found: int = 0) -> None:
        super().__init__(reason)
        self.found = found


@dataclass(frozen=True)
class Issued:
    rows: list[CommandRow]  # one per study (one for any other command)
    accession_hmac: str  # "" unless the command was given by accession number


def accession_of(kind: Kind, args: dict[str, Any]) -> str | None:
    """The accession number of a resend given by one (checked as the box would), else None."""
    if kind is not Kind.RESEND or not isinstance(args, dict) or "accession" not in args:
        return None
    return str(command_rules.check_args(kind, args)["accession"])  # ValueError for a bad one


def issue(queue: CommandQueue, box_id: str, kind: Kind, args: dict[str, Any], by: str, ttl_s: float,
          studies: Studies) -> Issued:
    """Queue the command; a resend by accession number becomes one resend per Study Instance UID
    archived from ``box_id`` under that number. ``ValueError`` for bad arguments, ``UnknownAccession``
    when the archive has none (or too many) for the box."""
    accession = accession_of(kind, args)
    if accession is None:
        return Issued([queue.issue(box_id, kind, args, by, ttl_s)], "")
    digest = queue.accession_digest(box_id, accession)
    found = studies(box_id, digest, MAX_STUDIES + 1)
    if not found:
        raise UnknownAccession(f"no study archived from {box_id} has this accession number")
    if len(found) > MAX_STUDIES:
        raise UnknownAccession(f"this accession number names more than {MAX_STUDIES} studies archived from "
                               f"{box_id}: resend them by Study Instance UID", len(found))
    return Issued([queue.issue(box_id, kind, {"study_instance_uid": uid}, by, ttl_s) for uid in found], digest)
