"""The image size a codestream declares (gateway/core/codestream.py), read before any decoder runs:
never an exception on hostile bytes, and the true size on the streams the edge writes."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.codestream import declared_samples
from gateway.core.segment import ImageCodec


@given(st.sampled_from(list(ImageCodec)), st.binary(max_size=64),
       st.sampled_from([b"", b"\xff\xd8", b"\xff\x4f\xff\x51", b"\xff\x0a", b"\0\0\0\x0cJXL \r\n\x87\n"]))
def test_declared_samples_is_none_or_a_count_when_the_bytes_are_anything(codec: int, tail: bytes, head: bytes) -> None:
    declared = declared_samples(codec, head + tail)
    assert declared is None or declared >= 0


@pytest.mark.parametrize(("rows", "columns", "samples", "dtype"),
                         [(7, 1000, 1, "<u2"), (512, 512, 1, "<u2"), (256, 8, 3, "<u1"), (300, 517, 3, "<u1")])
def test_declared_samples_is_the_image_size_when_the_edge_wrote_the_codestream(
        rows: int, columns: int, samples: int, dtype: str) -> None:
    shape = (rows, columns, samples) if samples == 3 else (rows, columns)
    image = (np.arange(rows * columns * samples) % 251).astype(dtype).reshape(shape)
    streams = {
        ImageCodec.JPEG_LS: imagecodecs.jpegls_encode(image),
        ImageCodec.HTJ2K: imagecodecs.htj2k_encode(image, reversible=True),
        ImageCodec.JPEG_2000: imagecodecs.jpeg2k_encode(image, level=0, codecformat="J2K", reversible=True),
        ImageCodec.JPEG_XL: imagecodecs.jpegxl_encode(image, lossless=True, effort=1, usecontainer=False),
    }
    for codec, stream in streams.items():
        expected = rows * columns * (1 if codec is ImageCodec.JPEG_XL else samples)  # JPEG-XL: pixels
        assert declared_samples(codec, bytes(stream)) == expected, codec.name
    boxed = imagecodecs.jpegxl_encode(image, lossless=True, effort=1, usecontainer=True)
    assert declared_samples(ImageCodec.JPEG_XL, bytes(boxed)) == rows * columns
