"""Lossless compression on real images: the project's codecs beside gzip -6, zstd -3, shuffle+zstd and JPEG-LS.

    .venv/bin/python bench/compression.py [--files N]

Corpus: the uncompressed images of the pydicom-data wheel (CR, CT, MR, US, ...), whole Part 10
files. Prints the size-weighted ratio and MB/s per core (one thread) for each codec, after
checking that every restore is byte-exact.

Anchors: gzip -6, zstd -3 and byte-shuffle (2-byte) + zstd -3 on the whole file; JPEG-LS
(CharLS) on the pixel frames at the header's BitsStored with the rest of the file zstd'd,
"byte-exact" meaning the decoded pixels equal the original pixel bytes. Ours: ZSTD (codec 1)
and PIXEL (codec 2, gateway/codecs/pixel.py), restored through gateway/core exactly as the
cloud does, including the per-strip verification on the encoding side.
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

import zstandard
from pydicom import dcmread

from gateway.codecs import jpegls, pixel
from gateway.core.codec import Codec, compress_stream, decompress_stream
from gateway.core.segment import shuffle, unshuffle

PATHS: dict[int, Path] = {}


def corpus(limit: int) -> list[Path]:
    import data_store

    root = Path(data_store.__file__).parent / "data"
    out = []
    for path in sorted(root.glob("*.dcm")):
        try:
            ds = dcmread(path, defer_size=1024)  # pixel values stay on disk
        except Exception:  # noqa: BLE001 - not every file in the wheel is valid DICOM
            continue
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
            out.append(path)
    return out[:limit]


def ours(data: bytes) -> tuple[bytes, Callable[[bytes], bytes]]:
    packed = b"".join(compress_stream(Codec.ZSTD, [data], 1 << 20))
    return packed, lambda p: b"".join(decompress_stream(Codec.ZSTD, [p], len(data)))


def ours_pixel(data: bytes) -> tuple[bytes, Callable[[bytes], bytes]]:
    plan = PLANS.get(id(data))
    if plan is None:
        return ours(data)
    packed = b"".join(pixel.pixel_payload([data], plan))
    return packed, lambda p: b"".join(decompress_stream(Codec.PIXEL, [p], len(data), jpegls.IMAGE_DECODERS))


def shuffle_zstd(data: bytes) -> tuple[bytes, Callable[[bytes], bytes]]:
    packed = zstandard.ZstdCompressor(level=3).compress(shuffle(data, 2))
    return packed, lambda p: unshuffle(zstandard.ZstdDecompressor().decompress(p), 2)


def jpeg_ls_anchor(data: bytes) -> tuple[bytes, Callable[[bytes], bytes]]:
    """CharLS on each whole frame at BitsStored (as a JPEG-LS transfer syntax would), rest zstd."""
    import jpeg_ls
    from pydicom import dcmread

    plan = ANCHOR_PLANS.get(id(data))
    if plan is None:
        return zstandard.ZstdCompressor(level=3).compress(data), zstandard.ZstdDecompressor().decompress
    ds = dcmread(PATHS[id(data)], stop_before_pixels=True)
    frame_bytes = plan.length // int(ds.get("NumberOfFrames", 1) or 1)
    rest = data[:plan.offset] + data[plan.offset + plan.length:]
    frames = [jpeg_ls.encode_pixel_data(data[o:o + frame_bytes], rows=ds.Rows, columns=ds.Columns,
                                        samples_per_pixel=ds.SamplesPerPixel, bits_stored=ds.BitsStored,
                                        planar_configuration=ds.get("PlanarConfiguration", 0))
              for o in range(plan.offset, plan.offset + plan.length, frame_bytes)]
    packed = zstandard.ZstdCompressor(level=3).compress(rest) + b"".join(frames)
    n_rest = len(zstandard.ZstdCompressor(level=3).compress(rest))

    def restore(p: bytes) -> bytes:
        head = zstandard.ZstdDecompressor().decompress(p[:n_rest])
        pix = b"".join(bytes(jpeg_ls.decode_pixel_data(f)[0]) for f in frames)
        return head[:plan.offset] + pix + head[plan.offset:]

    return packed, restore


PLANS: dict[int, pixel.PixelPlan] = {}  # where the edge would choose PIXEL
ANCHOR_PLANS: dict[int, pixel.PixelPlan] = {}  # every little-endian 8/16-bit image, whatever its size

CODECS: dict[str, Callable[[bytes], tuple[bytes, Callable[[bytes], bytes]]]] = {
    "gzip-6": lambda d: (gzip.compress(d, 6), gzip.decompress),
    "zstd-3": lambda d: (zstandard.ZstdCompressor(level=3).compress(d), zstandard.ZstdDecompressor().decompress),
    "shuffle2+zstd-3": shuffle_zstd,
    "JPEG-LS (CharLS)": jpeg_ls_anchor,
    "mgw (codec ZSTD)": ours,
    "mgw (codec PIXEL)": ours_pixel,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    files = corpus(args.files)
    blobs = [p.read_bytes() for p in files]
    for path, data in zip(files, blobs, strict=True):
        PATHS[id(data)] = path
        syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if (plan := pixel.plan(data, syntax)) is not None:
            PLANS[id(data)] = plan
        if (plan := pixel.plan(data, syntax, 0)) is not None:
            ANCHOR_PLANS[id(data)] = plan
    total = sum(map(len, blobs))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"corpus: {len(files)} uncompressed images from pydicom-data, {total / 1e6:.1f} MB, "
          f"{len(ANCHOR_PLANS)} little-endian 8/16-bit, {len(PLANS)} of them packed PIXEL (>= 64 KiB of pixels)")
    print(f"{'codec':<20} {'ratio':>7} {'MB/s in':>9} {'MB/s out':>9}  byte-exact")
    for name, codec in CODECS.items():
        packed_total, t_c, t_d, exact = 0, 0.0, 0.0, True
        for data in blobs:
            t0 = time.perf_counter()
            packed, restore = codec(data)
            t1 = time.perf_counter()
            exact &= restore(packed) == data
            t_d += time.perf_counter() - t1
            t_c += t1 - t0
            packed_total += len(packed)
        print(f"{name:<20} {total / packed_total:>6.2f}x {total / t_c / 1e6:>9.0f} {total / t_d / 1e6:>9.0f}  "
              f"{'yes' if exact else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
