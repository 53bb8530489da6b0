"""Accession numbers in the cloud's archive index, kept only as a keyed digest; pure.

An operator may ask a box to resend a study by its Accession Number (0008,0050), which the box does
not keep. So the cloud reads the accession number from each restored object's top level as it
streams into the archive (``AccessionReader``: the structure walk of ``core.dataset``, the edge's
own), and the index keeps ``digest(key, box_id, accession)`` beside the instance: HMAC-SHA256 under a
key derived from the envelope key for this use only (``index_key``), bound to the box. No accession
number is stored in the clear; the fleet, holding the same envelope key, computes the digest of what
an operator typed and looks up the Study Instance UIDs archived from that box (docs/operations.md,
"Remote operations").

The reader never raises into the stream it watches: an object that is not a Part 10 file we know,
or whose walk fails, simply has no accession number (the edge refused malformed datasets already).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable, Iterator

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.core import dataset, part10
from gateway.core.errors import DatasetStructureError

ACCESSION_NUMBER = 0x00080050
INDEX_INFO = b"mgw/v1 archive accession numbers"
MAX_META_BYTES = 64 * 1024  # a file meta group longer than this: no accession is read
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"


def index_key(envelope_private: bytes) -> bytes:
    """The key of the accession digests: HKDF-SHA256 of the cloud's envelope key, for this use only."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INDEX_INFO).derive(envelope_private)


def normalise(text: str) -> str:
    """An accession number as compared: padding and leading/trailing spaces are not significant (SH)."""
    return text.strip("\0 ")


def digest(key: bytes, box_id: str, accession: str) -> str:
    """HMAC-SHA256 (hex) of (box id, accession number); "" when there is no accession number."""
    value = normalise(accession)
    if not value:
        return ""
    message = b"accession\x00" + box_id.encode("utf-8") + b"\x00" + value.encode("utf-8", "replace")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class AccessionReader:
    """Watches a Part 10 object's bytes go by (``through``) and reads its top-level Accession Number.
    ``clock`` measures the walk's own time (``dataset.Limits.max_seconds``), not the stream's."""

    def __init__(self, transfer_syntax_uid: str, clock: Callable[[], float] | None = None) -> None:
        self._syntax = dataset.Syntax.from_uid(transfer_syntax_uid)
        self._clock = clock
        self._spent_s = 0.0
        self._head = bytearray()
        self._walk: dataset.DatasetWalk | None = None
        self._failed = False

    def through(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        """``pieces`` unchanged, each watched on the way."""
        for piece in pieces:
            self._watch(piece)
            yield piece

    def _watch(self, piece: bytes) -> None:
        if self._failed:
            return
        started = self._clock() if self._clock is not None else 0.0
        try:
            if self._walk is not None:
                self._walk.feed(piece)
            else:
                self._head += piece
                self._start()
        except DatasetStructureError:
            self._failed = True
        if self._clock is not None:
            self._spent_s += self._clock() - started

    def _start(self) -> None:
        head = self._head
        if len(head) < part10.META_HEAD_BYTES:
            return
        if head[part10.PREAMBLE_BYTES:part10.META_HEAD_BYTES - 4] != part10.PREFIX + _GROUP_LENGTH:
            raise DatasetStructureError("not a Part 10 file with a file meta group length")
        start = part10.META_HEAD_BYTES + int(struct.unpack_from("<L", head, part10.META_HEAD_BYTES - 4)[0])
        if start > MAX_META_BYTES:
            raise DatasetStructureError("file meta group too long")
        if len(head) < start:
            return
        self._walk = dataset.DatasetWalk(self._syntax, frozenset({ACCESSION_NUMBER}), None,
                                         None if self._clock is None else lambda: self._spent_s)
        rest, self._head = bytes(head[start:]), bytearray()
        if rest:
            self._walk.feed(rest)

    def accession(self) -> str:
        """The accession number of the bytes seen (all of the object), normalised; "" if none was read."""
        if self._failed or self._walk is None:
            return ""
        try:
            return normalise(self._walk.finish().text(ACCESSION_NUMBER))
        except DatasetStructureError:
            return ""
