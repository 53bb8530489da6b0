"""Accession numbers read from restored objects and kept as a keyed digest (gateway.core.accession)."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from gateway.core import accession
from tests.dicom_cases import DEFLATED_LE, EXPLICIT_LE, deflate, element
from tests.peers import real_images

KEY = bytes(range(32))


def part10(path: Path) -> tuple[bytes, str, str]:
    """A real image as the edge keeps it (a file meta group with its length), its syntax and accession number."""
    ds = dcmread(path)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.file_meta.TransferSyntaxUID), str(ds.get("AccessionNumber", "") or "").strip()


def read(raw: bytes, syntax: str, piece: int) -> str:
    reader = accession.AccessionReader(syntax)
    assert b"".join(reader.through(raw[i:i + piece] for i in range(0, len(raw), piece))) == raw
    return reader.accession()


@pytest.mark.parametrize("piece", [1000, 65536])
def test_reader_finds_the_accession_number_when_real_images_stream_past_in_pieces(piece: int) -> None:
    seen = []
    for path in real_images():
        raw, syntax, expected = part10(path)
        seen.append(expected)
        assert read(raw, syntax, piece) == expected, path.name
    assert any(seen)  # the corpus does carry accession numbers


def test_reader_finds_the_accession_number_when_the_dataset_is_deflated() -> None:
    body = element(0x00080050, "SH", b"ACC-DEFL  ") + element(0x00100010, "PN", b"NAME^TEST ")
    meta = element(0x00020010, "UI", DEFLATED_LE.encode() + b"\0")
    raw = (bytes(128) + b"DICM" + element(0x00020000, "UL", struct.pack("<L", len(meta))) + meta + deflate(body))
    assert read(raw, DEFLATED_LE, 7) == "ACC-DEFL"


def test_reader_finds_none_when_the_file_meta_has_no_group_length() -> None:
    raw = bytes(128) + b"DICM" + element(0x00020010, "UI", EXPLICIT_LE.encode() + b"\0") + element(
        0x00080050, "SH", b"ACC-1 ")
    assert read(raw, EXPLICIT_LE, 64) == ""


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000), st.integers(1, 600))
def test_reader_never_raises_and_passes_bytes_through_when_they_are_arbitrary(data: bytes, piece: int) -> None:
    head = bytes(128) + b"DICM" + element(0x00020000, "UL", struct.pack("<L", 0))
    for raw in (data, head + data):
        assert isinstance(read(raw, EXPLICIT_LE, piece), str)


def test_digest_is_bound_to_key_and_box_and_ignores_padding_when_accession_numbers_are_compared() -> None:
    d = accession.digest(KEY, "box-1", "ACC-1")
    assert len(d) == 64 and "ACC" not in d
    assert accession.digest(KEY, "box-1", " ACC-1\0 ") == d
    assert accession.digest(KEY, "box-2", "ACC-1") != d
    assert accession.digest(os.urandom(32), "box-1", "ACC-1") != d
    assert accession.digest(KEY, "box-1", "acc-1") != d  # SH is case-sensitive
    assert accession.digest(KEY, "box-1", "  \0") == ""
    assert accession.index_key(KEY) != KEY and len(accession.index_key(KEY)) == 32
