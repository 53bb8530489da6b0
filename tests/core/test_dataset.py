"""The sans-I/O dataset reader (gateway.core.dataset): structure, header values, limits, and the
regression cases of the deflated path (bomb, item flood, the "truncated" length)."""

from __future__ import annotations

import random
import zlib

import pytest

from gateway.core.dataset import DatasetWalk, Limits, Syntax, walk
from gateway.core.errors import DatasetLimitError, DatasetStructureError
from tests.dicom_cases import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    UNDEFINED,
    deflate,
    deflate_bomb,
    element,
    header,
    item,
    item_flood,
    sequence_end,
    truncation_length_case,
)

STUDY, SERIES, MODALITY = 0x0020000D, 0x0020000E, 0x00080060
WANTED = frozenset({STUDY, SERIES, MODALITY})


def _nested(depth: int) -> bytes:
    body = element(0x00100010, "PN", b"X^Y\0")
    for _ in range(depth):
        body = element(0x00081115, "SQ", b"", length=UNDEFINED) + item(body, undefined=True) + sequence_end()
    return body


def test_header_values_are_read_at_top_level_only_when_a_sequence_repeats_the_tag() -> None:
    inner = element(0x0020000D, "UI", b"9.9.9\0")
    data = (header() + element(0x00081115, "SQ", b"", length=UNDEFINED) + item(inner, undefined=True)
            + sequence_end() + element(0x7FE00010, "OB", bytes(10)))
    got = walk(data, Syntax.from_uid(EXPLICIT_LE), WANTED)
    assert got.text(STUDY) == "1.2.3.4" and got.text(MODALITY) == "CT" and got.text(SERIES) == "1.2.3.4.5"


@pytest.mark.parametrize("uid,little,implicit", [(IMPLICIT_LE, True, True), (EXPLICIT_BE, False, False)])
def test_other_uncompressed_syntaxes_are_walked_when_their_byte_order_and_vr_differ(
        uid: str, little: bool, implicit: bool) -> None:
    data = (element(0x00080060, "CS", b"MR", little=little, implicit=implicit)
            + element(0x00081115, "SQ", b"", length=UNDEFINED, little=little, implicit=implicit)
            + item(element(0x00100010, "PN", b"A^B\0", little=little, implicit=implicit), little=little)
            + sequence_end(little=little))
    assert walk(data, Syntax.from_uid(uid), WANTED).text(MODALITY) == "MR"


def test_encapsulated_pixel_data_fragments_are_walked_as_items_when_undefined_length() -> None:
    data = header() + element(0x7FE00010, "OB", b"", length=UNDEFINED) + item() + item(b"\xff\xd8" * 8) + sequence_end()
    assert walk(data, Syntax.from_uid("1.2.840.10008.1.2.4.70"), WANTED).elements == 7


def test_result_is_the_same_when_bytes_arrive_in_any_split_or_are_skipped() -> None:
    data = header() + _nested(3) + element(0x7FE00010, "OW", bytes(5000))
    whole = walk(data, Syntax.from_uid(EXPLICIT_LE), WANTED)
    rng = random.Random(7)
    for _ in range(50):
        walker, pos = DatasetWalk(Syntax.from_uid(EXPLICIT_LE), WANTED), 0
        while pos < len(data):
            n = rng.randint(1, 40)
            skip = min(walker.feed(data[pos:pos + n]), len(data) - pos - n)
            pos += n
            if skip > 0 and rng.random() < 0.5:
                walker.skip(skip)
                pos += skip
        assert walker.finish() == whole


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (header()[:-3], "overruns the end"),
    (header() + b"\x10\x00", "truncated at byte 43"),
    (element(0x7FE00010, "OB", b"abc", length=100), "overruns"),
    (element(0x00081115, "SQ", b"", length=UNDEFINED) + item(), "delimiter missing"),
    (element(0x00100010, "P1", b"ab"), "invalid VR"),
    (element(0x00081115, "SQ", b"", length=UNDEFINED) + element(0x00100010, "PN", b"ab"), "expected an item"),
    (sequence_end(), "misplaced delimiter"),
])
def test_structure_error_names_the_fault_when_the_dataset_is_malformed(data: bytes, message: str) -> None:
    with pytest.raises(DatasetStructureError, match=message):
        walk(data, Syntax.from_uid(EXPLICIT_LE))


def test_limit_error_when_sequences_nest_deeper_than_allowed() -> None:
    assert walk(_nested(8), Syntax.from_uid(EXPLICIT_LE), limits=Limits(max_depth=8)).elements > 0
    with pytest.raises(DatasetLimitError, match="nested deeper than 8"):
        walk(_nested(9), Syntax.from_uid(EXPLICIT_LE), limits=Limits(max_depth=8))


def test_limit_error_when_elements_or_items_pass_their_limits() -> None:
    data = element(0x00081115, "SQ", b"", length=UNDEFINED) + item() * 50 + sequence_end()
    with pytest.raises(DatasetLimitError, match="more than 40 items"):
        walk(data, Syntax.from_uid(EXPLICIT_LE), limits=Limits(max_items_per_sequence=40))
    with pytest.raises(DatasetLimitError, match="more than 30 elements"):
        walk(data, Syntax.from_uid(EXPLICIT_LE), limits=Limits(max_elements=30))


def test_limit_error_when_the_walk_outlasts_its_time_on_the_callers_clock() -> None:
    ticks = iter(range(0, 10**6, 10))
    data = element(0x00081115, "SQ", b"", length=UNDEFINED) + item() * 5000 + sequence_end()
    with pytest.raises(DatasetLimitError, match="longer than 30 s"):
        walk(data, Syntax.from_uid(EXPLICIT_LE), clock=lambda: float(next(ticks)))


def test_deflated_dataset_is_accepted_when_its_inflated_length_once_read_as_truncated() -> None:
    """Regression: zlib holds back output when all input is consumed and max_length is reached;
    the old loop stopped there and called a valid dataset truncated."""
    data = truncation_length_case()
    got = walk(data, Syntax.from_uid(DEFLATED_LE), WANTED)
    assert got.inflated_bytes == 1_048_590 and got.text(STUDY) == "1.2.3.4"
    for size in (1, 100, 4096, 1 << 16):  # and in any feed size
        walker = DatasetWalk(Syntax.from_uid(DEFLATED_LE), WANTED)
        for pos in range(0, len(data), size):
            assert walker.feed(data[pos:pos + size]) == 0
        assert walker.finish().inflated_bytes == 1_048_590


def test_deflate_bomb_is_refused_after_bounded_inflation_when_the_ratio_is_absurd() -> None:
    bomb = deflate_bomb()
    walker = DatasetWalk(Syntax.from_uid(DEFLATED_LE), WANTED)
    with pytest.raises(DatasetLimitError, match="inflates more than 200:1"):
        for pos in range(0, len(bomb), 1 << 16):
            walker.feed(bomb[pos:pos + (1 << 16)])
    assert walker._inflated <= Limits().inflate_floor_bytes + 200 * len(bomb)


def test_item_flood_is_refused_when_a_small_deflated_dataset_holds_200000_items() -> None:
    flood = item_flood()
    assert len(flood) < 3000
    with pytest.raises(DatasetLimitError, match="more than 100000 items"):
        walk(flood, Syntax.from_uid(DEFLATED_LE))


def test_deflated_errors_are_structure_errors_when_the_stream_is_corrupt_or_cut() -> None:
    data = deflate(header())
    with pytest.raises(DatasetStructureError, match="deflated dataset truncated"):
        walk(data[:-2], Syntax.from_uid(DEFLATED_LE))
    with pytest.raises(DatasetStructureError, match="corrupt"):
        walk(b"\xff" * 40, Syntax.from_uid(DEFLATED_LE))
    assert walk(data + b"\0", Syntax.from_uid(DEFLATED_LE), WANTED).text(MODALITY) == "CT"  # padding ignored


def test_jpip_referenced_deflate_is_read_as_deflated_when_its_uid_says_so() -> None:
    assert Syntax.from_uid("1.2.840.10008.1.2.4.95").deflated and not Syntax.from_uid(EXPLICIT_LE).deflated
    assert zlib.decompress(deflate(b"x"), -zlib.MAX_WBITS) == b"x"
