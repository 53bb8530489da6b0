"""The C-STORE SCP's pure rules (gateway.core.cstore): statuses, the tags the walk keeps, the header."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword

from gateway.core import cstore
from gateway.core.cstore import InstanceHeader, StoreStatus
from gateway.core.dataset import Walked
from gateway.core.errors import (
    DatasetLimitError,
    DatasetStructureError,
    LocalError,
    PeerError,
    SpoolFullError,
    StorageError,
)
from gateway.core.exam import HEADER_TAGS


@pytest.mark.parametrize(("exc", "status"), [
    (SpoolFullError("above the high-water mark"), StoreStatus.OUT_OF_RESOURCES),
    (DatasetLimitError("nested deeper than 32"), StoreStatus.TOO_COSTLY),
    (DatasetStructureError("truncated at byte 9"), StoreStatus.CANNOT_UNDERSTAND),
    (StorageError("spool database: disk I/O error"), StoreStatus.PROCESSING_FAILURE),
    (RuntimeError("a bug"), StoreStatus.PROCESSING_FAILURE),
])
def test_status_names_the_outcome_when_a_c_store_raised(exc: Exception, status: StoreStatus) -> None:
    assert cstore.status_for(exc) is status


@given(st.sampled_from([PeerError, LocalError, ValueError, OSError, KeyError]), st.text(max_size=20))
def test_status_is_processing_failure_when_the_error_is_not_one_the_rules_name(kind: type[Exception],
                                                                                 message: str) -> None:
    assert cstore.status_for(kind(message)) is StoreStatus.PROCESSING_FAILURE


def test_header_tag_numbers_are_the_dictionarys_when_compared_with_pydicom() -> None:
    assert list(cstore.HEADER_TAG_NUMBERS) == list(HEADER_TAGS)
    for keyword, tag in cstore.HEADER_TAG_NUMBERS.items():
        assert tag_for_keyword(keyword) == tag, keyword
    for keyword, tag in (("SOPClassUID", cstore.SOP_CLASS_UID), ("SOPInstanceUID", cstore.SOP_INSTANCE_UID),
                         ("StudyInstanceUID", cstore.STUDY_UID), ("SeriesInstanceUID", cstore.SERIES_UID),
                         ("RequestedProcedurePriority", cstore.REQUESTED_PRIORITY),
                         ("StudyPriorityID", cstore.STUDY_PRIORITY)):
        assert tag_for_keyword(keyword) == tag, keyword
    assert all(dictionary_VR(tag) in ("UI", "CS", "DA", "TM", "DT", "SH") for tag in cstore.WANTED)  # short ASCII


def test_header_keeps_non_empty_values_and_falls_back_to_study_priority_when_requested_priority_is_absent() -> None:
    values = {cstore.STUDY_UID: b"1.2.3\0", cstore.HEADER_TAG_NUMBERS["Modality"]: b"MR",
              cstore.HEADER_TAG_NUMBERS["StudyDate"]: b"  ", cstore.STUDY_PRIORITY: b"HIGH"}
    found = InstanceHeader.of(Walked(MappingProxyType(values)))
    assert found == InstanceHeader("1.2.3", "", {"Modality": "MR"}, "HIGH")
    both = {**values, cstore.REQUESTED_PRIORITY: b"STAT"}
    assert InstanceHeader.of(Walked(MappingProxyType(both))).requested_priority == "STAT"


@pytest.mark.parametrize(("dataset_class", "dataset_instance", "expected"), [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", None),
    ("1.2.840.10008.5.1.4.1.1.2", "", StoreStatus.INVALID_INSTANCE),
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", StoreStatus.INVALID_INSTANCE),
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", StoreStatus.CLASS_MISMATCH),
    ("", "1.2.3.4", StoreStatus.CLASS_MISMATCH),
], ids=["same", "no-instance-uid", "other-instance-uid", "other-class", "no-class-uid"])
def test_dataset_is_refused_with_the_standards_status_when_it_is_not_the_commands_instance(
        dataset_class: str, dataset_instance: str, expected: StoreStatus | None) -> None:
    values = {cstore.SOP_CLASS_UID: dataset_class.encode() + b"\0", cstore.SOP_INSTANCE_UID: dataset_instance.encode()}
    header = InstanceHeader.of(Walked(MappingProxyType({k: v for k, v in values.items() if v.strip(b"\0")})))
    found = header.mismatch("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    assert (found[0] if found else None) is expected
    assert found is None or "(0008,001" in found[1]
