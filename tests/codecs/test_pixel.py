"""The PIXEL codec on the edge (gateway/codecs): whatever the pixel bits, the cloud restores the
exact file; JPEG-LS where it restores exactly, byte-shuffle+zstd where it would not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from gateway.codecs import jpegls, pixel
from gateway.core.codec import Codec, decompress_stream
from gateway.core.segment import HEADER, SampleTransform, SegmentHeader, SegmentKind
from tests.peers import real_images


def restore(payload: bytes, size: int) -> bytes:
    return b"".join(decompress_stream(Codec.PIXEL, [payload], size, jpegls.IMAGE_DECODERS))


def segment_kinds(payload: bytes) -> list[SegmentKind]:
    kinds, pos = [], 0
    while pos < len(payload):
        header = SegmentHeader.decode(payload[pos:pos + HEADER.size])
        kinds.append(header.kind)
        pos += HEADER.size + header.coded_bytes
    return kinds


@st.composite
def strips(draw: st.DrawFn) -> tuple[bytes, int, int, int, int]:
    sample_bytes = draw(st.sampled_from([1, 2]))
    components = draw(st.sampled_from([1, 3]))
    rows, columns = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    signed_bits = draw(st.sampled_from([0, 0, 2, 7, 8 * sample_bytes - 1, 8 * sample_bytes]))
    count = rows * columns * components
    style = draw(st.sampled_from(["any", "small", "sign-extended"]))
    top = 1 << (8 * sample_bytes)
    values = draw(st.lists(st.integers(0, top - 1), min_size=count, max_size=count))
    if style == "small":
        values = [v % 37 for v in values]
    elif style == "sign-extended" and signed_bits:
        half = 1 << (signed_bits - 1)
        values = [((v % (2 * half)) - half) % top for v in values]
    raw = np.array(values, dtype=f"<u{sample_bytes}").tobytes()
    return raw, columns, components, sample_bytes, signed_bits


@settings(max_examples=150, deadline=None)
@given(strips())
def test_strip_restores_exactly_when_the_samples_have_any_bit_pattern(strip: tuple) -> None:
    raw, columns, components, sample_bytes, signed_bits = strip
    coded = jpegls.encode_strip(raw, columns, components, sample_bytes, signed_bits)
    if coded is not None:  # None: CharLS could not code it (e.g. noise larger than the input)
        header = SegmentHeader.decode(coded[:HEADER.size])
        assert header.kind is SegmentKind.IMAGE
        assert jpegls.decode_segment(header, coded[HEADER.size:]) == raw
    plan = pixel.PixelPlan(0, len(raw), columns, components, sample_bytes, signed_bits)
    assert restore(pixel.code_strip(raw, plan), len(raw)) == raw


def test_strip_is_coded_at_the_stored_depth_when_signed_samples_are_sign_extended() -> None:
    values = np.repeat(np.array([-2048, -1000, 0, 2047], dtype="<i2"), 64)  # CT: 12 bits stored, signed
    coded = jpegls.encode_strip(values.tobytes(), 16, 1, 2, 12)
    assert coded is not None
    header = SegmentHeader.decode(coded[:HEADER.size])
    assert (header.transform, header.bits) == (SampleTransform.SIGNED_OFFSET, 12)
    assert jpegls.decode_segment(header, coded[HEADER.size:]) == values.tobytes()


def test_strip_keeps_the_bits_above_bits_stored_when_they_are_not_zero() -> None:
    values = np.repeat(np.array([0x0FFF, 0xF123, 7, 0x8000], dtype="<u2"), 64)  # 12 bits stored, high bits set
    coded = jpegls.encode_strip(values.tobytes(), 16, 1, 2, 0)
    assert coded is not None
    header = SegmentHeader.decode(coded[:HEADER.size])
    assert header.bits == 16
    assert jpegls.decode_segment(header, coded[HEADER.size:]) == values.tobytes()


def test_strip_is_refused_when_it_is_not_whole_rows() -> None:
    assert jpegls.encode_strip(bytes(15), 4, 1, 2, 0) is None
    assert jpegls.encode_strip(bytes(16), 4, 1, 4, 0) is None


def image_file(path: Path, pixels: bytes, rows: int, columns: int, bits_allocated: int, bits_stored: int,
               signed: int = 0, samples: int = 1, frames: int = 1, implicit: bool = False,
               trailer: bool = False) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Test^Pixel"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        bits_allocated, bits_stored, bits_stored - 1, signed)
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels
    if trailer:
        ds.add_new(0xFFFAFFFA, "SQ", [])  # Digital Signatures Sequence: after the pixel data
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_file_restores_byte_exact_when_signed_multiframe_pixels_are_packed(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    values = (rng.integers(-2048, 2048, size=(3, 40, 50)).cumsum(axis=2) // 64).astype("<i2")
    path = image_file(tmp_path / "ct.dcm", values.tobytes(), 40, 50, 16, 12, signed=1, frames=3, trailer=True)
    data = path.read_bytes()
    plan = pixel.plan(path.read_bytes(), str(ExplicitVRLittleEndian), 0)
    assert plan is not None and plan.length == values.nbytes and plan.signed_bits == 12
    payload = b"".join(pixel.pixel_payload([data[i:i + 999] for i in range(0, len(data), 999)], plan, 3))
    assert SegmentKind.IMAGE in segment_kinds(payload)
    assert restore(payload, len(data)) == data


def test_file_restores_byte_exact_when_rgb_is_implicit_vr(tmp_path: Path) -> None:
    rgb = np.tile(np.arange(60, dtype=np.uint8), 30 * 3).tobytes()[: 30 * 20 * 3]
    path = image_file(tmp_path / "us.dcm", rgb, 30, 20, 8, 8, samples=3, implicit=True)
    data = path.read_bytes()
    plan = pixel.plan(path.read_bytes(), str(ImplicitVRLittleEndian), 0)
    assert plan is not None and plan.components == 3
    assert restore(b"".join(pixel.pixel_payload([data], plan)), len(data)) == data


def test_pixel_rows_fall_back_to_shuffle_zstd_when_the_file_is_shorter_than_planned(tmp_path: Path) -> None:
    values = np.arange(64 * 64, dtype="<u2")
    path = image_file(tmp_path / "mr.dcm", values.tobytes(), 64, 64, 16, 12)
    data = path.read_bytes()
    plan = pixel.plan(path.read_bytes(), str(ExplicitVRLittleEndian), 0)
    assert plan is not None
    cut = data[:-101]  # a blob that lost its tail: not whole rows any more
    payload = b"".join(pixel.pixel_payload([cut], plan))
    assert segment_kinds(payload)[-1] is SegmentKind.SHUFFLE_ZSTD
    assert restore(payload, len(cut)) == cut


def test_plan_is_none_when_pixel_codec_does_not_apply(tmp_path: Path) -> None:
    one_bit = image_file(tmp_path / "seg.dcm", bytes(8), 8, 8, 1, 1)
    assert pixel.plan(one_bit.read_bytes(), str(ExplicitVRLittleEndian), 0) is None
    small = image_file(tmp_path / "small.dcm", bytes(512), 16, 16, 16, 12)
    assert pixel.plan(small.read_bytes(), str(ExplicitVRLittleEndian), 0) is not None
    assert pixel.plan(small.read_bytes(), str(ExplicitVRLittleEndian)) is None  # below MIN_PIXEL_BYTES: zstd
    assert pixel.plan(small.read_bytes(), "1.2.840.10008.1.2.4.80", 0) is None  # JPEG-LS already: zstd passes it
    assert pixel.plan(small.read_bytes()[:300], str(ExplicitVRLittleEndian), 0) is None  # header cut short
    assert pixel.head_of([b"ab", b"cd", b"ef"], 3) == b"abc"
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    assert pixel.plan(garbage.read_bytes(), str(ExplicitVRLittleEndian), 0) is None


def test_real_images_restore_byte_exact_and_smaller_than_zstd_when_packed_as_pixel() -> None:
    import zstandard
    from pydicom import dcmread

    planned, acquired = 0, {"693_UNCI.dcm", "MR2_UNCI.dcm", "RG1_UNCI.dcm", "US1_UNCI.dcm"}
    for path in real_images():
        data = path.read_bytes()
        plan = pixel.plan(path.read_bytes(), dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        if plan is None:
            continue
        planned += 1
        payload = b"".join(pixel.pixel_payload([data], plan))
        assert restore(payload, len(data)) == data, path.name
        if path.name in acquired:
            assert SegmentKind.IMAGE in segment_kinds(payload), path.name
        assert len(payload) <= len(zstandard.ZstdCompressor(level=3).compress(data)) + 64, path.name
    assert planned >= 4  # CT, MR, CR, US at least


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_decode_raises_codec_error_when_a_jpeg_ls_codestream_is_damaged(damage: str) -> None:
    from gateway.core.errors import CodecError

    values = np.repeat(np.arange(64, dtype="<u2") * 40, 16)
    coded = jpegls.encode_strip(values.tobytes(), 32, 1, 2, 0)
    assert coded is not None
    header, body = SegmentHeader.decode(coded[:HEADER.size]), bytearray(coded[HEADER.size:])
    if damage == "truncate":
        body = body[: len(body) // 2]
    elif damage == "flip":
        body[len(body) // 2] ^= 0xFF
    else:
        body = bytearray(b"\xff\xd8" + bytes(range(256)))
    try:
        restored = jpegls.decode_segment(header, bytes(body))
    except CodecError:
        return
    assert restored != values.tobytes()  # decoded without complaint: then the hash check catches it
