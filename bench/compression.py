"""Lossless compression on real images: the project's codecs beside zstd, gzip and the image codecs' anchors.

    .venv/bin/python bench/compression.py [--corpus pydicom-data|colour] [--files N]

Corpora (both shipped by PyPI packages, nothing is fetched at run time):
- ``pydicom-data``: the uncompressed images of the pydicom-data wheel (CR, CT, MR, US, ...), whole
  Part 10 files;
- ``colour``: every uncompressed little-endian ultrasound or 3-sample (RGB, YBR_FULL) image of the
  pydicom-data wheel and of pydicom's own test files (bench/README.md says why it is this small).

Prints the size-weighted ratio and MB/s per core (CPU seconds of this process, one thread: the
codecs are told ``numthreads=1``) for each codec, after checking that every restore is byte-exact.

Anchors, in the same run: gzip -6 and zstd -3 on the whole file; JPEG-XL lossless (effort 3 and
7), HTJ2K, JPEG 2000 (reversible) and JPEG-LS on each whole frame (imagecodecs), the rest of the
file zstd -3 (what a compressed transfer syntax would do; their speed counts the encode only).
Ours: ZSTD (codec 1) and PIXEL2 (codec 3, gateway/codecs/pixel.py) at the default budget and at
2x and 8x it (a backlogged queue; 8x is the packer's cap), restored through gateway/core exactly as
the cloud does, the edge's verifying decode of every segment included in the encode time.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import zstandard
from pydicom import dcmread

from gateway.codecs import pixel
from gateway.core.codec import Codec, compress_stream, decompress_stream

Restore = Callable[[bytes], bytes]



class Image:
    """One corpus file: its bytes and, when it has little-endian 8/16-bit pixels, where they are."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, path.read_bytes()
        ds = dcmread(path, stop_before_pixels=True)
        syntax = ds.file_meta.TransferSyntaxUID
        self.plan = pixel.plan(self.data, syntax)         # where the edge packs PIXEL2
        self.anchor_plan = pixel.plan(self.data, syntax, 0)  # every little-endian 8/16-bit image
        self.frames = int(ds.get("NumberOfFrames", 1) or 1)
        self.rows = int(ds.get("Rows", 0) or 0)


def _frames(image: Image) -> tuple[bytes, list[np.ndarray]]:
    """The file without its pixel rows, and its frames as unsigned arrays (signed ones offset)."""
    plan = image.anchor_plan
    assert plan is not None
    rest = image.data[:plan.offset] + image.data[plan.offset + plan.length:]
    dtype = np.dtype("<u1") if plan.sample_bytes == 1 else np.dtype("<u2")
    samples = np.frombuffer(image.data, dtype, plan.length // plan.sample_bytes, plan.offset)
    if plan.signed_bits:
        samples = (samples + dtype.type(1 << (plan.signed_bits - 1))) & dtype.type((1 << plan.signed_bits) - 1)
    shape = (-1, plan.columns, 3) if plan.components == 3 else (-1, plan.columns)
    return rest, list(samples.reshape(shape).reshape((image.frames, -1) + shape[1:]))


def frame_anchor(encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], np.ndarray]
                 ) -> Callable[[Image], tuple[bytes, Restore]]:
    """An image codec on each whole frame, the rest of the file zstd -3; restore checks the pixels."""
    def run(image: Image) -> tuple[bytes, Restore]:
        if image.anchor_plan is None:
            return zstd3(image)
        rest, frames = _frames(image)
        coded = [encode(f) for f in frames]
        packed_rest = zstandard.ZstdCompressor(level=3).compress(rest)

        def restore(_packed: bytes) -> bytes:
            same = all(np.array_equal(decode(c).reshape(f.shape), f) for c, f in zip(coded, frames, strict=True))
            return image.data if same and zstandard.ZstdDecompressor().decompress(packed_rest) == rest else b""

        return packed_rest + b"".join(coded), restore
    return run


def _bits(a: np.ndarray) -> int:
    return max(2, int(a.max()).bit_length())


def jxl(effort: int) -> Callable[[Image], tuple[bytes, Restore]]:
    return frame_anchor(lambda a: bytes(imagecodecs.jpegxl_encode(
        a, lossless=True, effort=effort, bitspersample=_bits(a), numthreads=1)),
                        lambda c: imagecodecs.jpegxl_decode(c, numthreads=1))


def zstd3(image: Image) -> tuple[bytes, Restore]:
    return zstandard.ZstdCompressor(level=3).compress(image.data), zstandard.ZstdDecompressor().decompress


def ours_zstd(image: Image) -> tuple[bytes, Restore]:
    packed = b"".join(compress_stream(Codec.ZSTD, [image.data], 1 << 20))
    return packed, lambda p: b"".join(decompress_stream(Codec.ZSTD, [p], len(image.data)))


def ours_pixel(scale: float) -> Callable[[Image], tuple[bytes, Restore]]:
    def run(image: Image) -> tuple[bytes, Restore]:
        if image.plan is None:
            return ours_zstd(image)
        packed = b"".join(pixel.pixel_payload([image.data], image.plan, effort=pixel.Effort(scale=scale)))
        return packed, lambda p: b"".join(decompress_stream(Codec.PIXEL2, [p], len(image.data), pixel.IMAGE_DECODERS))
    return run


CODECS: dict[str, Callable[[Image], tuple[bytes, Restore]]] = {
    "gzip-6": lambda i: (gzip.compress(i.data, 6), gzip.decompress),
    "zstd-3": zstd3,
    "JPEG-LS": frame_anchor(lambda a: bytes(imagecodecs.jpegls_encode(a)), imagecodecs.jpegls_decode),
    "HTJ2K": frame_anchor(lambda a: bytes(imagecodecs.htj2k_encode(a, reversible=True)), imagecodecs.htj2k_decode),
    "JPEG 2000": frame_anchor(lambda a: bytes(imagecodecs.jpeg2k_encode(
        a, level=0, codecformat="J2K", reversible=True, bitspersample=_bits(a), numthreads=1)),
        lambda c: imagecodecs.jpeg2k_decode(c, numthreads=1)),
    "JPEG-XL effort 3": jxl(3),
    "JPEG-XL effort 7": jxl(7),
    "mgw ZSTD (1)": ours_zstd,
    "mgw PIXEL2 (3)": ours_pixel(1.0),
    "mgw PIXEL2 backlog x2": ours_pixel(2.0),
    "mgw PIXEL2 backlog x8": ours_pixel(8.0),
}


def _readable(path: Path) -> bool:
    try:
        ds = dcmread(path, defer_size=1024)  # pixel values stay on disk
        return "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed
    except Exception:  # noqa: BLE001 - not every file in the wheels is valid DICOM
        return False


def corpus(name: str, limit: int) -> list[Path]:
    import data_store
    import pydicom.data

    wheel = sorted((Path(data_store.__file__).parent / "data").glob("*.dcm"))
    if name == "pydicom-data":
        return [p for p in wheel if _readable(p)][:limit]
    tests = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
    out = []
    for path in wheel + tests:
        if not _readable(path):
            continue
        ds = dcmread(path, stop_before_pixels=True)
        little = not ds.file_meta.TransferSyntaxUID.name.endswith("Big Endian")
        if little and (ds.get("Modality") == "US" or int(ds.get("SamplesPerPixel", 1) or 1) == 3):
            out.append(path)
    return out[:limit]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", choices=("pydicom-data", "colour"), default="pydicom-data")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--only", nargs="*", default=None, help="run these codecs (names as printed) only")
    args = parser.parse_args()
    images = [Image(p) for p in corpus(args.corpus, args.files)]
    total = sum(len(i.data) for i in images)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}, imagecodecs {imagecodecs.__version__}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"corpus: {args.corpus}, {len(images)} uncompressed images, {total / 1e6:.1f} MB, "
          f"{sum(1 for i in images if i.anchor_plan)} little-endian 8/16-bit, "
          f"{sum(1 for i in images if i.plan)} of them packed PIXEL2 (>= 64 KiB of pixels)")
    print(f"{'codec':<22} {'ratio':>7} {'MB/s in':>8} {'MB/s out':>9}  byte-exact   (MB/s: per core, CPU time)")
    for name, codec in CODECS.items():
        if args.only is not None and name not in args.only:
            continue
        packed_total, t_c, t_d, exact = 0, 0.0, 0.0, True
        for image in images:
            t0 = time.process_time()
            packed, restore = codec(image)
            t1 = time.process_time()
            exact &= restore(packed) == image.data
            t_d += time.process_time() - t1
            t_c += t1 - t0
            packed_total += len(packed)
        print(f"{name:<22} {total / packed_total:>6.3f}x {total / t_c / 1e6:>8.1f} {total / t_d / 1e6:>9.1f}  "
              f"{'yes' if exact else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
