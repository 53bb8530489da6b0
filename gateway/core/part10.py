"""The DICOM Part 10 file layout (PS3.10 section 7): preamble, prefix, file meta.

Only what the gateway needs without decoding a dataset: where the file meta
group ends and the dataset, kept exactly as the modality sent it, begins.
"""

from __future__ import annotations

import struct

from gateway.core.errors import FrameError

PREAMBLE_BYTES = 128
PREFIX = b"DICM"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def dataset_offset(data: bytes) -> int:
    """Offset of the first byte after the (0002,xxxx) file meta group.

    File meta is always Explicit VR Little Endian. Raises ``FrameError`` if
    ``data`` does not start like a Part 10 file.
    """
    if len(data) < PREAMBLE_BYTES + 4 or data[PREAMBLE_BYTES:PREAMBLE_BYTES + 4] != PREFIX:
        raise FrameError("not a DICOM Part 10 file (no DICM prefix)")
    pos = PREAMBLE_BYTES + 4
    while pos + 8 <= len(data):
        group, _element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return pos
        vr = bytes(data[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8 + length
    if pos == len(data):
        return pos
    raise FrameError("file meta group is truncated")


META_HEAD_BYTES = PREAMBLE_BYTES + 16  # preamble, "DICM", (0002,0000) UL 4 and its value
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"


def meta_end(head: bytes) -> int:
    """Offset of the dataset in a Part 10 file that we wrote, from its first ``META_HEAD_BYTES``.

    The edge's own files (pynetdicom's file meta on a received dataset) always open with the
    File Meta Information Group Length; one without it is a bug here, not a peer's fault.
    """
    if head[PREAMBLE_BYTES:META_HEAD_BYTES - 4] != PREFIX + _GROUP_LENGTH:
        raise AssertionError("incoming file lacks the file meta group length we expect")
    return META_HEAD_BYTES + int(struct.unpack_from("<L", head, META_HEAD_BYTES - 4)[0])


_TRANSFER_SYNTAX_TAG = (0x0002, 0x0010)


def meta_transfer_syntax(meta: bytes) -> str:
    """The (0002,0010) Transfer Syntax UID of a file meta group we wrote (``meta`` ends at
    ``meta_end``), padding stripped; "" if it has none."""
    pos = PREAMBLE_BYTES + len(PREFIX)
    while pos + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, pos)
        vr = bytes(meta[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(meta):
                break
            start, length = pos + 12, struct.unpack_from("<I", meta, pos + 8)[0]
        else:
            start, length = pos + 8, struct.unpack_from("<H", meta, pos + 6)[0]
        if (group, element) == _TRANSFER_SYNTAX_TAG:
            return bytes(meta[start:start + length]).decode("ascii", "replace").rstrip("\0 ")
        pos = start + length
    return ""
