"""Laws of the sans-I/O dataset reader (gateway.core.dataset), with hypothesis and pydicom as the writer.

- Round trip: any dataset pydicom writes, in any syntax the listener reads (implicit and
  explicit VR little endian, explicit big endian, deflated), is read back with the header values
  pydicom wrote (``core.cstore.InstanceHeader``), whatever sequences, private elements and pixel
  data surround them, and however the bytes are split or skipped.
- Refusal: a dataset cut inside its last element is refused; any mutation (bit flips, bytes
  inserted or deleted, lengths overwritten, the deflated stream altered) ends in a ``Walked`` or
  a ``DatasetStructureError`` (``DatasetLimitError`` included), never another exception.
"""

from __future__ import annotations

import io
import string
import warnings
import zlib
from dataclasses import dataclass
from datetime import date, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from gateway.core import cstore
from gateway.core.dataset import DatasetWalk, Limits, Syntax, Walked, walk
from gateway.core.errors import DatasetStructureError
from gateway.core.exam import HEADER_TAGS
from gateway.core.part10 import dataset_offset
from tests.dicom_cases import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, deflate

SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE)
SMALL = Limits(max_elements=20_000, max_items_per_sequence=1_000, max_depth=8, inflate_floor_bytes=1 << 20)

_UID = st.lists(st.integers(0, 99_999), min_size=1, max_size=9).map(lambda xs: "1.2." + ".".join(map(str, xs)))
_CS = st.text(string.ascii_uppercase + string.digits + "_", min_size=1, max_size=16)
_DA = st.dates(date(1901, 1, 1), date(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))
_TM = st.times(time(0, 0), time(23, 59, 59)).map(lambda t: t.strftime("%H%M%S"))
_VALUES: dict[str, st.SearchStrategy[str]] = {
    "Modality": _CS, "AcquisitionDateTime": st.builds(str.__add__, _DA, _TM),
    "AcquisitionDate": _DA, "AcquisitionTime": _TM, "ContentDate": _DA, "ContentTime": _TM,
    "SeriesDate": _DA, "SeriesTime": _TM, "StudyDate": _DA, "StudyTime": _TM,
    "TimezoneOffsetFromUTC": st.sampled_from(["+0000", "-0500", "+0130", "+1400"]),
}
_PRIORITY = st.sampled_from(["STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"])


@dataclass(frozen=True)
class Written:
    syntax: str
    data: bytes  # the dataset after the file meta, as pydicom wrote it
    expected: cstore.InstanceHeader
    pixel_bytes: int  # Pixel Data is the last element; its value's length


def _nested(draw: st.DrawFn, depth: int) -> Dataset:
    """An item repeating the wanted tags: only top-level values may be read."""
    item = Dataset()
    item.StudyInstanceUID = draw(_UID)
    item.Modality = draw(_CS)
    item.PatientName = draw(st.text(string.ascii_letters + "^", max_size=40))
    if depth > 0 and draw(st.booleans()):
        item.ReferencedSeriesSequence = _sequence(draw, depth - 1)
    return item


def _sequence(draw: st.DrawFn, depth: int) -> Sequence:
    items = [_nested(draw, depth) for _ in range(draw(st.integers(0, 3)))]
    for item in items:
        item.is_undefined_length_sequence_item = draw(st.booleans())
    return Sequence(items)


@st.composite
def written(draw: st.DrawFn, syntaxes: tuple[str, ...] = SYNTAXES) -> Written:
    syntax = draw(st.sampled_from(syntaxes))
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", draw(_UID)
    values = {kw: draw(st.none() | strategy) for kw, strategy in _VALUES.items()}
    for kw, value in values.items():
        if value is not None:
            setattr(ds, kw, value)
    study, series = draw(st.none() | _UID), draw(st.none() | _UID)
    if study is not None:
        ds.StudyInstanceUID = study
    if series is not None:
        ds.SeriesInstanceUID = series
    requested, study_priority = draw(st.none() | _PRIORITY), draw(st.none() | _CS)
    if requested is not None:
        ds.RequestedProcedurePriority = requested
    if study_priority is not None:
        ds.StudyPriorityID = study_priority
    if draw(st.booleans()):
        ds.ReferencedStudySequence = _sequence(draw, draw(st.integers(0, 3)))
        ds["ReferencedStudySequence"].is_undefined_length = draw(st.booleans())
    if draw(st.booleans()):
        ds.add_new(0x00090010, "LO", "MGW TEST")
        ds.add_new(0x00091001, "OB", draw(st.binary(max_size=300)))
    ds.ImageComments = draw(st.text(string.ascii_letters + " ", max_size=200))  # longer than a kept value
    ds.BitsAllocated = 16
    pixels = 2 * draw(st.integers(1, 2_000))
    ds.PixelData = draw(st.binary(min_size=pixels, max_size=pixels))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on retired syntaxes and value formats
        dcmwrite(out, ds, enforce_file_format=True)
    raw = out.getvalue()
    header = {kw: values[kw] for kw in HEADER_TAGS if values[kw]}
    expected = cstore.InstanceHeader(study or "", series or "", header, requested or study_priority or "",
                                     str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    return Written(syntax, raw[dataset_offset(raw):], expected, pixels)


def _read(data: bytes, syntax: str) -> Walked:
    return walk(data, Syntax.from_uid(syntax), cstore.WANTED, SMALL)


@settings(max_examples=300, deadline=None)
@given(written())
def test_header_values_are_read_back_when_pydicom_wrote_the_dataset_in_any_syntax(case: Written) -> None:
    assert cstore.InstanceHeader.of(_read(case.data, case.syntax)) == case.expected


@settings(max_examples=150, deadline=None)
@given(written(), st.lists(st.integers(1, 97), min_size=1, max_size=40), st.lists(st.booleans(), min_size=1))
def test_result_is_the_same_when_the_bytes_arrive_in_any_split_and_skippable_bytes_are_skipped(
        case: Written, sizes: list[int], skips: list[bool]) -> None:
    whole = _read(case.data, case.syntax)
    walker, pos, turn = DatasetWalk(Syntax.from_uid(case.syntax), cstore.WANTED, SMALL), 0, 0
    while pos < len(case.data):
        n = sizes[turn % len(sizes)]
        skippable = min(walker.feed(case.data[pos:pos + n]), max(0, len(case.data) - pos - n))
        pos += n
        if skippable and skips[turn % len(skips)]:
            walker.skip(skippable)
            pos += skippable
        turn += 1
    assert walker.finish() == whole


@settings(max_examples=200, deadline=None)
@given(written(syntaxes=(IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE)), st.data())
def test_dataset_is_refused_when_it_is_cut_inside_its_last_element(case: Written, data: st.DataObject) -> None:
    last_element = case.pixel_bytes + (8 if case.syntax == IMPLICIT_LE else 12)  # Pixel Data, OW
    cut = data.draw(st.integers(1, last_element - 1), label="bytes cut")
    with pytest.raises(DatasetStructureError):
        _read(case.data[:-cut], case.syntax)


@settings(max_examples=100, deadline=None)
@given(written(syntaxes=(DEFLATED_LE,)), st.data())
def test_deflated_dataset_is_refused_when_its_stream_is_cut(case: Written, data: st.DataObject) -> None:
    cut = data.draw(st.integers(2, len(case.data) - 1), label="bytes cut")  # 1 may be the even-length pad
    with pytest.raises(DatasetStructureError):
        _read(case.data[:-cut], case.syntax)


_LENGTHS = (b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x00\x00\x00\x00", b"\x10\x00\x00\x00")


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        how = draw(st.sampled_from(("flip", "delete", "insert", "length", "marker")))
        if how == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif how == "delete":
            del out[pos:pos + draw(st.integers(1, 16))]
        elif how == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif how == "length":
            out[pos:pos + 4] = draw(st.sampled_from(_LENGTHS))
        else:  # an item or a delimiter where it does not belong
            out[pos:pos] = draw(st.sampled_from((b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0")))
            out[pos + 4:pos + 4] = draw(st.sampled_from(_LENGTHS))
    return bytes(out)


@settings(max_examples=400, deadline=None)
@given(written(), st.data())
def test_mutated_dataset_is_read_or_refused_with_a_structure_error_when_bytes_are_altered(
        case: Written, data: st.DataObject) -> None:
    if case.syntax == DEFLATED_LE and data.draw(st.booleans(), label="mutate the inflated dataset"):
        bad = deflate(data.draw(mutated(zlib.decompress(case.data, -zlib.MAX_WBITS)), label="inflated"))
    else:
        bad = data.draw(mutated(case.data), label="mutated")
    try:
        got = _read(bad, case.syntax)
    except DatasetStructureError:
        return
    assert isinstance(got, Walked) and got.elements > 0
