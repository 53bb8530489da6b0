"""One DICOM instance's identity, from the C-STORE to the archive: pure.

``InstanceIdentity`` is what the edge knows about an instance when it answers the C-STORE
and what the cloud files it under: its UIDs and transfer syntax, and the size and SHA-256
of the exact bytes the gateway keeps (the Part 10 file: our file meta group followed by the
dataset as received). It is made once, by the DICOM listener, and then held, never copied
field by field, by every type that follows the instance: the listener's ``ReceivedInstance``,
the spool's ``SpoolItem``, the sealed ``Manifest`` and the archive's ``InstanceRecord``
(docs/architecture.md, "One identity, one seal").

The identity is not checked here: the wire schema (``core.schema.ManifestV1``) is the
boundary where a box's values are refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.core.errors import IntegrityError


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    sop_class_uid: str  # from the C-STORE request
    sop_instance_uid: str  # from the C-STORE request
    study_instance_uid: str  # from the dataset; "" if absent
    series_instance_uid: str  # from the dataset; "" if absent
    transfer_syntax_uid: str  # of the dataset as received (the accepted presentation context)
    size: int  # bytes of the Part 10 file the gateway keeps
    sha256: str  # of those bytes, 64 lowercase hex characters


def verified(pieces: Iterable[bytes], identity: InstanceIdentity, mismatch: str) -> Iterator[bytes]:
    """``pieces`` passed through unchanged; once they end, ``IntegrityError(mismatch)`` unless
    they were exactly ``identity``'s bytes (its size and SHA-256).

    The caller must act only on what it consumed once the iterator is exhausted: the check
    comes after the last piece.
    """
    digest, seen = hashlib.sha256(), 0
    for piece in pieces:
        digest.update(piece)
        seen += len(piece)
        yield piece
    if seen != identity.size or digest.hexdigest() != identity.sha256:
        raise IntegrityError(mismatch)
