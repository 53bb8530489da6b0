"""Routing and snapshots of the worklist feed (core/worklist_routes.py), and orders sealed at rest."""

from __future__ import annotations

import os

import pytest

from gateway.core import schema, worklist_routes
from gateway.core.errors import IntegrityError
from gateway.core.schema import WorklistEntry
from gateway.core.worklist_routes import Route


def entry(step: str, *, modality: str = "CT", station: str = "", name: str = "", date: str = "20261203",
          time: str = "090000", accession: str = "") -> WorklistEntry:
    return schema.convert(WorklistEntry, {
        "accession_number": accession or f"A-{step}", "patient_name": "Doe^John",
        "step": {"step_id": step, "modality": modality, "station_ae_title": station, "station_name": name,
                 "start_date": date, "start_time": time}}, "test")


CT1 = Route("ct-01", "CT", "CT1")


def test_entry_matches_when_modality_and_station_are_the_routes_or_the_station_is_empty() -> None:
    assert worklist_routes.matches(CT1, entry("S1", station="CT1"))
    assert worklist_routes.matches(CT1, entry("S2"))  # an HL7 order names no station: the route assigns it
    assert not worklist_routes.matches(CT1, entry("S3", station="CT2"))
    assert not worklist_routes.matches(CT1, entry("S4", modality="MR", station="CT1"))
    named = Route("ct-01", "CT", "CT1", "ROOM 1")
    assert worklist_routes.matches(named, entry("S5", name="ROOM 1"))
    assert not worklist_routes.matches(named, entry("S6", name="ROOM 2"))


def test_snapshot_holds_the_routed_entries_in_the_window_earliest_first_at_the_routes_station() -> None:
    entries = [entry("late", time="150000"), entry("early", time="080000", station="CT1"),
               entry("tomorrow", date="20261204"), entry("old", date="20261201"), entry("far", date="20261220"),
               entry("other", station="CT2"), entry("undated", date="", time="")]
    snap = worklist_routes.snapshot([CT1], entries, "20261202", "20261210")
    assert [e.step.step_id for e in snap] == ["early", "late", "tomorrow", "undated"]
    assert {e.step.station_ae_title for e in snap} == {"CT1"}


def test_digest_changes_when_the_content_changes_and_not_otherwise() -> None:
    a = worklist_routes.snapshot([CT1], [entry("S1"), entry("S2")], "20261201", "20261231")
    b = worklist_routes.snapshot([CT1], [entry("S2"), entry("S1")], "20261201", "20261231")
    assert worklist_routes.digest(a) == worklist_routes.digest(b)
    c = worklist_routes.snapshot([CT1], [entry("S1")], "20261201", "20261231")
    assert worklist_routes.digest(c) != worklist_routes.digest(a)


def test_sealed_order_opens_only_under_its_key_and_in_its_own_row() -> None:
    key = worklist_routes.at_rest_key(os.urandom(32))
    e = entry("S1", accession="ACC1")
    order = worklist_routes.order_key(key, "hl7", "S1", "ACC1")
    sealed = worklist_routes.seal_entry(key, os.urandom(16), e)
    assert b"Doe" not in sealed and b"ACC1" not in sealed
    assert worklist_routes.open_entry(key, order, "hl7", sealed) == e
    other_row = worklist_routes.order_key(key, "hl7", "S2", "ACC2")
    with pytest.raises(IntegrityError):
        worklist_routes.open_entry(key, other_row, "hl7", sealed)  # a blob moved to another row
    with pytest.raises(IntegrityError):
        worklist_routes.open_entry(worklist_routes.at_rest_key(os.urandom(32)), order, "hl7", sealed)
    assert order != worklist_routes.order_key(key, "mwl", "S1", "ACC1")  # the source is part of the name
