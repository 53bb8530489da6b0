"""Lossless compression on real images: the project's codec beside gzip -6 and plain zstd -3.

    .venv/bin/python bench/compression.py [--files N]

Corpus: the uncompressed images of the pydicom-data wheel (CR, CT, MR, US, ...), whole Part 10
files. Prints the size-weighted ratio and MB/s per core (one thread) for each codec, after
checking that every restore is byte-exact.
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

from gateway.core.codec import Codec, compress_stream, decompress_stream


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


CODECS: dict[str, Callable[[bytes], tuple[bytes, Callable[[bytes], bytes]]]] = {
    "gzip-6": lambda d: (gzip.compress(d, 6), gzip.decompress),
    "zstd-3": lambda d: (zstandard.ZstdCompressor(level=3).compress(d), zstandard.ZstdDecompressor().decompress),
    "mgw (codec ZSTD)": ours,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    files = corpus(args.files)
    blobs = [p.read_bytes() for p in files]
    total = sum(map(len, blobs))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"corpus: {len(files)} uncompressed images from pydicom-data, {total / 1e6:.1f} MB")
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
