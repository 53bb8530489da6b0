"""Modality Worklist SCP (PS3.4 Annex K): C-FIND answered from the box's own cache.

A ``DicomService`` for the edge AE (see dicom_scp.py). The modality asks for its scheduled
procedure steps; the answer comes from ``WorklistStore`` on the box, so it keeps working with the
uplink down. Matching and return keys are ``core.worklist``'s; this module turns the identifier
(pydicom, decoded in the query's Specific Character Set) into a ``Query`` and each match into an
identifier encoded in the answer's character set (``core.worklist.answer_charset``).

Statuses (docs/conformance.md, "Modality Worklist SCP"): Pending 0xFF00 per match (0xFF01 when
the identifier holds optional keys we do not support), then Success 0x0000; Cancel 0xFE00 after
a C-CANCEL; 0xA900 when the identifier is not a worklist identifier (a Query/Retrieve Level, a
Scheduled Procedure Step Sequence that is not one sequence of at most one item); 0xC000 when a
key's value cannot be matched; 0xC001 when the cache cannot be read. The handler never raises
into pynetdicom, and never logs PHI: counts, AE titles and statuses only.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from gateway.adapters.dicom_scp import DicomService, SupportedContext
from gateway.adapters.worklist_store import WorklistStore
from gateway.config import WorklistSettings
from gateway.core import worklist
from gateway.core.errors import GatewayError
from gateway.core.worklist import CONTROL_KEYS, STEP_KEYS, STEP_SEQUENCE, TOP_KEYS, Query, QueryError
from gateway.logs import MSG

log = logging.getLogger(__name__)

PENDING, PENDING_UNSUPPORTED, SUCCESS, CANCEL = 0xFF00, 0xFF01, 0x0000, 0xFE00
NOT_WORKLIST, UNMATCHABLE, CACHE_UNREADABLE = 0xA900, 0xC000, 0xC001


class NotWorklist(ValueError):
    """The identifier does not belong to the Modality Worklist Information Model (0xA900)."""


class WorklistScp(DicomService):
    """C-FIND SCP for Modality Worklist Information Model - FIND; one of the listener's services."""

    def __init__(self, settings: WorklistSettings, store: WorklistStore, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(worklist.MODALITY_WORKLIST_FIND)]

    def handlers(self) -> Sequence[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_FIND, self._on_find)]

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"worklist_queries": dict(self._counts)}

    def stop(self) -> None:
        self._store.close()

    # -- the handler: never raises ------------------------------------------------------------------------
    def _on_find(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            query, unsupported, charset = _parse(event.identifier)
            matches, matched = self._matches(query, calling)
        except NotWorklist as exc:
            yield self._refused(calling, NOT_WORKLIST, str(exc))
            return
        except (QueryError, ValueError, TypeError, LookupError) as exc:
            yield self._refused(calling, UNMATCHABLE, str(exc) if isinstance(exc, QueryError) else "undecodable")
            return
        except GatewayError:
            log.exception("worklist cache unreadable", extra={"MESSAGE_ID": MSG.WORKLIST_REFUSED.value})
            yield self._refused(calling, CACHE_UNREADABLE, "worklist cache unreadable")
            return
        except Exception:
            log.exception("worklist query failed", extra={"MESSAGE_ID": MSG.WORKLIST_REFUSED.value})
            yield self._refused(calling, CACHE_UNREADABLE, "worklist query failed")
            return
        pending = PENDING_UNSUPPORTED if unsupported else PENDING
        sent = 0
        for item in matches:
            if event.is_cancelled:
                self._answered(calling, sent, matched, "cancelled")
                yield CANCEL, None
                return
            try:
                answer = _identifier(item, query, unsupported, charset)
            except Exception:
                log.exception("worklist answer failed", extra={"MESSAGE_ID": MSG.WORKLIST_REFUSED.value})
                yield self._refused(calling, CACHE_UNREADABLE, "worklist answer failed")
                return
            yield pending, answer
            sent += 1
        self._answered(calling, sent, matched, "success")

    def _matches(self, query: Query, calling: str) -> tuple[list[worklist.WorklistItem], int]:
        """The items to answer (at most ``max_results``, earliest first) and how many matched."""
        s = self._settings
        now = self._clock()
        if (expired := self._store.expire(now, s.keep_hours * 3600.0)) > 0:
            log.info("worklist items expired", extra={"MESSAGE_ID": MSG.WORKLIST_EXPIRED.value, "ITEMS": expired})
        station = calling if s.station_filter == "calling_ae" else None
        modality = (query.step or {}).get("Modality", "").strip()
        plain = modality if modality and "*" not in modality and "?" not in modality else None
        found = [item for item in self._store.candidates(station, s.include_unassigned, plain)
                 if worklist.matches(item, query)]
        return found[:s.max_results], len(found)

    def _answered(self, calling: str, sent: int, matched: int, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1
        log.info("worklist query answered", extra={
            "MESSAGE_ID": MSG.WORKLIST_ANSWERED.value, "CALLING_AE": calling, "MATCHES": matched, "SENT": sent,
            "OUTCOME": outcome})

    def _refused(self, calling: str, status: int, reason: str) -> tuple[Dataset, None]:
        with self._lock:
            self._counts[f"0x{status:04X}"] += 1
        log.warning("worklist query refused", extra={
            "MESSAGE_ID": MSG.WORKLIST_REFUSED.value, "CALLING_AE": calling, "STATUS": f"0x{status:04X}",
            "REASON": reason})
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = reason[:64]
        return answer, None


# -- identifier in, identifier out ---------------------------------------------------------------------------
@dataclass
class Unsupported:
    """Keys of the identifier we neither match nor know, at the top level and in the step's item."""

    top: list[DataElement] = field(default_factory=list)
    step: list[DataElement] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.top or self.step)


def _parse(identifier: Dataset | None) -> tuple[Query, Unsupported, tuple[str, ...]]:
    """The query, the keys we do not support (returned empty), the query's character set."""
    if identifier is None:
        raise NotWorklist("no identifier")
    raw = identifier.get("SpecificCharacterSet", "") or ""
    asked = (str(raw).strip(),) if isinstance(raw, str) else tuple(str(v).strip() for v in raw)
    top: dict[str, str] = {}
    step: dict[str, str] | None = None
    unsupported = Unsupported()
    for elem in identifier:
        keyword = elem.keyword
        if keyword in CONTROL_KEYS or elem.tag.is_private or elem.tag.group == 0x0002:
            continue
        if keyword == "QueryRetrieveLevel":
            raise NotWorklist("Query/Retrieve Level in a worklist identifier")
        if keyword == STEP_SEQUENCE:
            step = _step(elem, unsupported.step)
        elif keyword in TOP_KEYS:
            top[keyword] = text_value(elem)
        else:
            unsupported.top.append(elem)
    return worklist.parse_query(top, step), unsupported, asked


def _step(elem: DataElement, unsupported: list[DataElement]) -> dict[str, str]:
    if elem.VR != "SQ":
        raise NotWorklist("Scheduled Procedure Step Sequence is not a sequence")
    items = list(elem.value or [])
    if len(items) > 1:
        raise NotWorklist("Scheduled Procedure Step Sequence with more than one item")
    step: dict[str, str] = {}
    for sub in items[0] if items else []:
        if sub.keyword in STEP_KEYS:
            step[sub.keyword] = text_value(sub)
        elif not sub.tag.is_private:
            unsupported.append(sub)  # answered empty inside the step's item
    return step


def text_value(elem: DataElement) -> str:
    if elem.VR == "SQ":
        raise NotWorklist(f"{elem.keyword} is a sequence")
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        raise QueryError(f"{elem.keyword}: binary value")
    if not isinstance(value, str) and hasattr(value, "__iter__") and not hasattr(value, "components"):
        return "\\".join(str(v) for v in value)  # a multi-valued key (list of UID matching)
    return str(value)


def _identifier(item: worklist.WorklistItem, query: Query, unsupported: Unsupported,
                asked: tuple[str, ...]) -> Dataset:
    top, step = worklist.answer(item, query)
    charset = worklist.answer_charset(asked, [*top.values(), *(step or {}).values()])
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    _empty(ds, unsupported.top)
    if step is not None:
        entry = Dataset()
        for keyword, value in step.items():
            setattr(entry, keyword, value)
        _empty(entry, unsupported.step)
        ds.ScheduledProcedureStepSequence = [entry]
    return ds


def _empty(ds: Dataset, elements: list[DataElement]) -> None:
    """Keys we do not support come back with no value (which is why the status is 0xFF01)."""
    for elem in elements:
        ds.add(DataElement(elem.tag, elem.VR, [] if elem.VR == "SQ" else None))
