"""The PIXEL2 codec on the edge (gateway/codecs): whatever the pixel bits, the cloud restores the
exact file; each image codec where it restores exactly, byte-shuffle+zstd where none would."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from gateway.codecs import imagecodecs_codec, pixel
from gateway.codecs.imagecodecs_codec import Strip, StripEncoder
from gateway.core.codec import Codec, decompress_stream
from gateway.core.segment import HEADER, ImageCodec, SampleTransform, SegmentHeader, SegmentKind
from tests.peers import real_images


def restore(payload: bytes, size: int) -> bytes:
    return b"".join(decompress_stream(Codec.PIXEL2, [payload], size, pixel.IMAGE_DECODERS))


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


CODECS = [ImageCodec.JPEG_XL, ImageCodec.HTJ2K, ImageCodec.JPEG_2000, ImageCodec.JPEG_LS]


def only(codec: ImageCodec) -> StripEncoder:
    """An encoder that tries ``codec`` alone, whatever the budget."""
    return StripEncoder(budget_ms_per_mb=1e9, codecs=frozenset({codec}))


def encode(codec: ImageCodec, raw: bytes, columns: int, components: int, sample_bytes: int,
           signed_bits: int) -> bytes | None:
    return only(codec).encode(Strip(raw, columns, components, sample_bytes, signed_bits), 1 << 40)


def decoded(coded: bytes) -> bytes:
    return imagecodecs_codec.decode_segment(SegmentHeader.decode(coded[:HEADER.size]), coded[HEADER.size:])


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@settings(max_examples=40, deadline=None)
@given(strip=strips())
def test_strip_restores_exactly_when_the_samples_have_any_bit_pattern(codec: ImageCodec, strip: tuple) -> None:
    raw, columns, components, sample_bytes, signed_bits = strip
    coded = encode(codec, raw, columns, components, sample_bytes, signed_bits)
    if coded is not None:  # None: the codec could not code it, or not exactly
        header = SegmentHeader.decode(coded[:HEADER.size])
        assert (header.kind, header.image_codec) == (SegmentKind.IMAGE, codec)
        assert decoded(coded) == raw
    plan = pixel.PixelPlan(0, len(raw), columns, components, sample_bytes, signed_bits)
    assert restore(pixel.code_strip(raw, plan, encoder=only(codec)), len(raw)) == raw


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_strip_is_coded_at_the_stored_depth_when_signed_samples_are_sign_extended(codec: ImageCodec) -> None:
    values = np.repeat(np.array([-2048, -1000, 0, 2047], dtype="<i2"), 64)  # CT: 12 bits stored, signed
    coded = encode(codec, values.tobytes(), 16, 1, 2, 12)
    assert coded is not None
    header = SegmentHeader.decode(coded[:HEADER.size])
    assert (header.transform, header.bits) == (SampleTransform.SIGNED_OFFSET, 12)
    assert decoded(coded) == values.tobytes()


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_strip_keeps_the_bits_above_bits_stored_when_they_are_not_zero(codec: ImageCodec) -> None:
    values = np.repeat(np.array([0x0FFF, 0xF123, 7, 0x8000], dtype="<u2"), 64)  # 12 bits stored, high bits set
    coded = encode(codec, values.tobytes(), 16, 1, 2, 0)
    assert coded is not None
    assert SegmentHeader.decode(coded[:HEADER.size]).bits == 16
    assert decoded(coded) == values.tobytes()


def test_strip_is_refused_when_it_is_not_whole_rows() -> None:
    assert encode(ImageCodec.JPEG_XL, bytes(15), 4, 1, 2, 0) is None
    assert encode(ImageCodec.JPEG_XL, bytes(16), 4, 1, 4, 0) is None


def _wrong(samples: np.ndarray, bits: int) -> bytes:
    """A codestream that decodes, but not to these samples: what a codec defect would give."""
    changed = samples.copy()
    changed.flat[len(changed.flat) // 2] ^= 1
    return bytes(imagecodecs.jpegxl_encode(changed, lossless=True, effort=1, bitspersample=max(bits, 2)))


def _refuse(samples: np.ndarray, bits: int) -> bytes:
    raise RuntimeError("the library refused")


def test_strip_falls_back_to_a_verified_codec_when_the_best_encoder_is_wrong_or_fails() -> None:
    rng = np.random.default_rng(3)
    raw = (rng.integers(0, 40, size=(64, 64)).cumsum(axis=1) % 4096).astype("<u2").tobytes()
    strip = Strip(raw, 64, 1, 2, 0)
    broken = StripEncoder(budget_ms_per_mb=1e9, encoders={
        "jxl3": (ImageCodec.JPEG_XL, _wrong), "jxl7": (ImageCodec.JPEG_XL, _wrong),
        "htj2k": (ImageCodec.HTJ2K, _refuse)})
    coded = broken.encode(strip, 1 << 40)
    assert coded is not None  # the wrong JPEG-XL stream was dropped: the next smallest verified one is kept
    assert SegmentHeader.decode(coded[:HEADER.size]).image_codec in (ImageCodec.JPEG_2000, ImageCodec.JPEG_LS)
    assert decoded(coded) == raw
    plan = pixel.PixelPlan(0, len(raw), 64, 1, 2, 0)
    nothing = StripEncoder(budget_ms_per_mb=1e9, codecs=frozenset({ImageCodec.JPEG_XL}),
                           encoders={"jxl3": (ImageCodec.JPEG_XL, _wrong), "jxl7": (ImageCodec.JPEG_XL, _wrong)})
    payload = pixel.code_strip(raw, plan, encoder=nothing)
    assert segment_kinds(payload) == [SegmentKind.SHUFFLE_ZSTD]  # no image codec left: byte-level, never lost
    assert restore(payload, len(raw)) == raw


def test_encoder_refuses_another_thread_when_it_was_made_on_this_one() -> None:
    encoder = only(ImageCodec.HTJ2K)
    failures: list[BaseException] = []
    others: list[StripEncoder] = []

    def elsewhere() -> None:
        try:
            encoder.encode(Strip(bytes(64), 8, 1, 1, 0), 1 << 40)
        except AssertionError as exc:
            failures.append(exc)
        others.append(pixel.encoder_for_thread(pixel.Effort()))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(60)
    assert len(failures) == 1 and "confined" in str(failures[0])
    assert others and others[0] is not pixel.encoder_for_thread(pixel.Effort())  # one encoder per thread
    assert pixel.encoder_for_thread(pixel.Effort()) is pixel.encoder_for_thread(pixel.Effort())


def test_budget_decides_which_codecs_are_tried_when_it_is_small_or_large() -> None:
    rng = np.random.default_rng(5)
    raw = (rng.integers(0, 400, size=(256, 256)).cumsum(axis=1) % 65536).astype("<u2").tobytes()
    tried: list[str] = []

    def spy(name: str, codec: ImageCodec, size: int) -> tuple[ImageCodec, Callable[[np.ndarray, int], bytes]]:
        def run(samples: np.ndarray, bits: int) -> bytes:
            tried.append(name)
            return bytes(size)  # only the size matters to the choice (it then fails verification)
        return codec, run

    def spies(jxl_size: int) -> dict[str, tuple[ImageCodec, Callable[[np.ndarray, int], bytes]]]:
        return {"htj2k": spy("htj2k", ImageCodec.HTJ2K, 1000), "jxl3": spy("jxl3", ImageCodec.JPEG_XL, jxl_size),
                "j2k": spy("j2k", ImageCodec.JPEG_2000, 900), "jpegls": spy("jpegls", ImageCodec.JPEG_LS, 990),
                "jxl7": spy("jxl7", ImageCodec.JPEG_XL, jxl_size - 1)}

    strip = Strip(raw, 256, 1, 2, 0)
    assert StripEncoder(budget_ms_per_mb=1.0, encoders=spies(500)).encode(strip, 1 << 40) is None
    assert tried == ["htj2k"]  # the first candidate always runs; nothing else fits a tiny budget
    tried.clear()
    StripEncoder(budget_ms_per_mb=100, encoders=spies(500)).encode(strip, 1 << 40)
    # no room for JPEG-XL effort 7 (a backlog's budget); JPEG-XL far ahead of HTJ2K: no JPEG 2000, no JPEG-LS
    assert tried == ["htj2k", "jxl3"]
    tried.clear()
    StripEncoder(budget_ms_per_mb=1e9, encoders=spies(990)).encode(strip, 1 << 40)
    assert tried == ["htj2k", "jxl3", "jxl7", "j2k"]  # HTJ2K close to the best: JPEG 2000 may win
    tried.clear()
    eight_bit = Strip(bytes(range(256)) * 64, 128, 1, 1, 0)
    StripEncoder(budget_ms_per_mb=100, encoders=spies(500)).encode(eight_bit, 1 << 40)
    assert tried == ["htj2k", "jxl3", "jpegls"]  # 8-bit grey: JPEG-LS may beat JPEG-XL (palette, captures)


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


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_decode_raises_codec_error_when_a_codestream_is_damaged(codec: ImageCodec, damage: str) -> None:
    from gateway.core.errors import CodecError

    values = np.repeat(np.arange(64, dtype="<u2") * 40, 16)
    coded = encode(codec, values.tobytes(), 32, 1, 2, 0)
    assert coded is not None
    header, body = SegmentHeader.decode(coded[:HEADER.size]), bytearray(coded[HEADER.size:])
    if damage == "truncate":
        body = body[: len(body) // 2]
    elif damage == "flip":
        body[len(body) // 2] ^= 0xFF
    else:
        body = bytearray(bytes(body[:2]) + bytes(range(256)))
    try:
        restored = imagecodecs_codec.decode_segment(header, bytes(body))
    except CodecError:
        return
    assert restored != values.tobytes()  # decoded without complaint: then the hash check catches it


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_decode_refuses_a_codestream_that_declares_a_larger_image_than_its_segment(codec: ImageCodec) -> None:
    from gateway.core.errors import CodecError

    values = np.arange(64 * 64, dtype="<u2") % 1000
    coded = encode(codec, values.tobytes(), 64, 1, 2, 0)
    assert coded is not None
    header = SegmentHeader.decode(coded[:HEADER.size])
    small = SegmentHeader(header.kind, header.raw_bytes // 2, header.coded_bytes, header.width,
                          header.image_codec, header.transform, header.bits)
    with pytest.raises(CodecError, match="declares an image"):
        imagecodecs_codec.decode_segment(small, coded[HEADER.size:])


def corpus_images() -> list[Path]:
    """The real uncompressed little-endian images of pydicom-data and pydicom's test files up to 1.2 MB:
    CT, MR, CR, US (RGB, palette), secondary captures in RGB and YBR_FULL, signed, multi-frame."""
    import pydicom.data
    from pydicom import dcmread

    from tests.peers import data_store_dir

    tests = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    for path in sorted(data_store_dir().glob("*.dcm")) + sorted(tests.glob("*.dcm")):
        if path.stat().st_size > 1_200_000:
            continue
        try:
            syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        except Exception:  # noqa: BLE001, S112 - not every file of the wheels is valid DICOM
            continue
        if pixel.plan(path.read_bytes(), syntax, 0) is not None:
            out.append(path)
    return out


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_real_corpus_restores_byte_exact_when_every_strip_goes_through_one_image_codec(codec: ImageCodec) -> None:
    from pydicom import dcmread

    encoder = StripEncoder(budget_ms_per_mb=200, jpegxl_effort=1, codecs=frozenset({codec}))  # time only: no effort 7
    images, grey, coded, colour_coded = 0, 0, 0, 0
    for path in corpus_images():
        data = path.read_bytes()
        plan = pixel.plan(data, dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID, 0)
        assert plan is not None
        rows = data[plan.offset:plan.offset + plan.length]
        images += 1
        grey += plan.components == 1
        image = encoder.encode(Strip(rows, plan.columns, plan.components, plan.sample_bytes, plan.signed_bits),
                               1 << 40)  # no competition from zstd: the image codec's own path, verified
        if image is not None:
            assert SegmentHeader.decode(image[:HEADER.size]).image_codec == codec
            assert decoded(image) == rows, path.name
            coded += 1
            colour_coded += plan.components == 3
        assert restore(pixel.code_strip(rows, plan, encoder=encoder), len(rows)) == rows, path.name
    assert images >= 25
    expected = grey if codec is ImageCodec.JPEG_LS else images
    assert coded >= expected - 2, f"{codec.name} coded only {coded} of {expected} images"
    if codec is not ImageCodec.JPEG_LS:  # JPEG-LS takes grey strips only; colour goes to the others
        assert colour_coded >= 8  # RGB and YBR_FULL through the codec's reversible colour transform
