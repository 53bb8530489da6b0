"""Which box gets which worklist entry, and a box's snapshot (docs/protocol.md, "Worklist feed"): pure.

The cloud decides where a scheduled step is served, never the box: a ``Route`` says that box
``box_id`` serves the station (``modality``, ``station_ae_title``, optionally ``station_name``).
An entry matches a route when its modality is the route's, its Scheduled Station AE Title is the
route's or empty (an HL7 order names no station: the route assigns it) and, when both name one,
its station name is the route's. The snapshot a box is sent is every open entry matching one of
its routes, scheduled within the window (``first_date`` to ``last_date``, DICOM dates; an entry
with no date is always in), earliest first, each carrying the AE title and station name of the
route it matched. ``digest`` names a snapshot's content, so an unchanged one is not sent again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.core import atrest, schema
from gateway.core.errors import IntegrityError
from gateway.core.schema import WorklistEntry


@dataclass(frozen=True)
class Route:
    box_id: str
    modality: str
    station_ae_title: str
    station_name: str = ""


def matches(route: Route, entry: WorklistEntry) -> bool:
    step = entry.step
    if step.modality != route.modality:
        return False
    if step.station_ae_title and step.station_ae_title != route.station_ae_title:
        return False
    return not (step.station_name and route.station_name and step.station_name != route.station_name)


def routed(routes: Iterable[Route], entry: WorklistEntry) -> Route | None:
    """The first of ``routes`` the entry matches (routes in a stable order), or None."""
    return next((r for r in routes if matches(r, entry)), None)


def in_window(entry: WorklistEntry, first_date: str, last_date: str) -> bool:
    date = entry.step.start_date
    return not date or first_date <= date <= last_date


def assigned(route: Route, entry: WorklistEntry) -> WorklistEntry:
    """The entry as the box serves it: at the route's station."""
    step = schema.convert(schema.WorklistStep, {**schema.to_builtins(entry.step),
                                                "station_ae_title": route.station_ae_title,
                                                "station_name": entry.step.station_name or route.station_name},
                          "routed step")
    doc = schema.to_builtins(entry)
    doc["step"] = schema.to_builtins(step)
    return schema.convert(WorklistEntry, doc, "routed entry")


def snapshot(routes: Sequence[Route], entries: Iterable[WorklistEntry], first_date: str,
             last_date: str) -> list[WorklistEntry]:
    """The box's worklist: the entries its routes match within the window, earliest first (then by
    accession and step, for a stable order)."""
    ordered = sorted(routes, key=lambda r: (r.modality, r.station_ae_title, r.station_name))
    out = []
    for entry in entries:
        route = routed(ordered, entry)
        if route is not None and in_window(entry, first_date, last_date):
            out.append(assigned(route, entry))
    return sorted(out, key=lambda e: (e.step.start_date or "99999999", e.step.start_time, e.accession_number,
                                      e.step.step_id))


def digest(entries: Sequence[WorklistEntry]) -> str:
    """SHA-256 (hex) of the snapshot's content, in its order."""
    h = hashlib.sha256()
    for entry in entries:
        raw = schema.encode(entry)
        h.update(len(raw).to_bytes(4, "big") + raw)
    return h.hexdigest()


# -- orders at rest in the fleet store (gateway/cloud/worklist/store.py) ----------------------------------
AT_REST_INFO = b"mgw/v1 fleet worklist orders at rest"


def at_rest_key(secret: bytes) -> bytes:
    """The key sealing orders in the fleet store: HKDF-SHA256 of a cloud secret, for this use only."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=AT_REST_INFO).derive(secret)


def order_key(key: bytes, source: str, step_id: str, accession_number: str) -> str:
    """An order's name in the store: HMAC-SHA256 of (source, step ID, accession number), hex; the
    identifiers stay unreadable, and the same order from the same source has the same name."""
    message = "\x00".join((source, step_id, accession_number)).encode("utf-8")
    return hmac.new(key, b"order\x00" + message, hashlib.sha256).hexdigest()


def content_digest(key: bytes, entry: WorklistEntry) -> str:
    """A keyed digest of the entry's content (HMAC-SHA256, hex): an order the RIS sends again
    unchanged is not rewritten, and a decrypted entry can be cached by it."""
    return hmac.new(key, b"content\x00" + schema.encode(entry), hashlib.sha256).hexdigest()


def seal_entry(key: bytes, file_id: bytes, entry: WorklistEntry) -> bytes:
    """The entry sealed (``core.atrest``); ``file_id`` is 16 random bytes, fresh for every seal (it
    derives the blob's own key: never reuse one). ``open_entry`` binds the blob to its row."""
    return b"".join(atrest.seal_pieces(key, file_id, [schema.encode(entry)]))


def open_entry(key: bytes, order: str, source: str, sealed: bytes) -> WorklistEntry:
    """The entry of a stored order; ``IntegrityError`` if it was altered or moved to another row."""
    entry = schema.parse(WorklistEntry, b"".join(atrest.open_pieces(key, [sealed])), "stored order")
    if order_key(key, source, entry.step.step_id, entry.accession_number) != order:
        raise IntegrityError("stored order does not belong to its row")
    return entry
