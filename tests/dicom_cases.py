"""Hand-built DICOM datasets for the dataset reader's tests and fuzz target (no patient data).

Includes the regression cases of the issue "the box holds its ground": a ~1 MB deflate bomb,
a 200,000-item sequence in a couple of kilobytes, and a valid deflated dataset whose length
used to be refused as truncated.
"""

from __future__ import annotations

import struct
import zlib

DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF


def element(tag: int, vr: str, value: bytes, length: int | None = None, little: bool = True,
            implicit: bool = False) -> bytes:
    """One element; ``length`` overrides the value's (e.g. UNDEFINED, or a lie)."""
    order = "<" if little else ">"
    n = len(value) if length is None else length
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(order + "L", n) + value
    if vr in _LONG:
        return head + vr.encode() + b"\0\0" + struct.pack(order + "L", n) + value
    return head + vr.encode() + struct.pack(order + "H", n) + value


def item(body: bytes = b"", undefined: bool = False, little: bool = True) -> bytes:
    order = "<" if little else ">"
    if undefined:
        return struct.pack(order + "HHL", 0xFFFE, 0xE000, UNDEFINED) + body + struct.pack(order + "HHL", 0xFFFE,
                                                                                           0xE00D, 0)
    return struct.pack(order + "HHL", 0xFFFE, 0xE000, len(body)) + body


def sequence_end(little: bool = True) -> bytes:
    return struct.pack(("<" if little else ">") + "HHL", 0xFFFE, 0xE0DD, 0)


def deflate(data: bytes, level: int = 9) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def header(study_uid: bytes = b"1.2.3.4", modality: bytes = b"CT", sop_instance_uid: str = "") -> bytes:
    """A few top-level elements; with ``sop_instance_uid``, a CT Image's SOP Class and Instance UIDs first
    (what a C-STORE SCP checks against the command, core.cstore.InstanceHeader.mismatch)."""
    sop = b"" if not sop_instance_uid else (element(0x00080016, "UI", _ui(CT_IMAGE_STORAGE))
                                            + element(0x00080018, "UI", _ui(sop_instance_uid)))
    return (sop + element(0x00080060, "CS", modality) + element(0x0020000D, "UI", study_uid)
            + element(0x0020000E, "UI", b"1.2.3.4.5\0"))


def _ui(uid: str) -> bytes:
    return uid.encode() + b"\0" * (len(uid) % 2)


def deflate_bomb(compressed_bytes: int = 1 << 20) -> bytes:
    """A deflated dataset of about ``compressed_bytes`` that inflates about 1000 times larger:
    a valid header, then pixel data of zeros whose length field claims 4 GB. Built from one
    compressed MiB of zeros repeated (each piece ends on a full flush, so copies concatenate)."""
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = head.compress(header() + element(0x7FE00010, "OB", b"", length=0xFFFFFFF0)) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    piece = zeros.compress(bytes(1 << 20)) + zeros.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # an empty final block
    return start + piece * max(1, compressed_bytes // len(piece)) + end


def item_flood(items: int = 200_000) -> bytes:
    """A deflated dataset (a couple of KB) holding one sequence of ``items`` empty items."""
    body = header() + element(0x00081115, "SQ", b"", length=UNDEFINED) + item() * items + sequence_end()
    return deflate(body)


def truncation_length_case(sop_instance_uid: str = "") -> bytes:
    """A valid deflated dataset whose inflated length (1,048,590 bytes, mostly zeros) made the old
    reader refuse it as "truncated": zlib held back output after consuming all its input."""
    body = header(sop_instance_uid=sop_instance_uid)
    pixels = 1_048_590 - len(body) - 12
    return deflate(body + element(0x7FE00010, "OB", bytes(pixels)))
