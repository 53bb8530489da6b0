"""Walk a received DICOM dataset's structure (PS3.5 section 7) from its bytes: a sans-I/O reader.

The caller pushes the bytes that follow the file meta group, exactly as received (deflated
included), with ``feed``; ``finish`` then says whether they hold one complete dataset and
returns the top-level values of the tags it was asked for (UIDs, utilisation header strings).
Headers, item tags and delimiters are walked; values are stepped over, never decoded, and
``feed`` answers how many of the following bytes the walker does not need, so a caller
reading a file may seek over pixel data instead of reading it (``skip``).

Every bound is on bytes actually fed, never on a length field (``Limits``): inflated bytes
(streamed through ``zlib.decompressobj`` with ``max_length``; no inflated byte is kept
beyond a header or a wanted value), elements, sequence depth, items per sequence and time.
Malformed input raises ``DatasetStructureError``; input past a limit raises
``DatasetLimitError`` (a subclass). Nothing else escapes for any input.

As before, sequences and items of undefined length are walked and their delimiters checked;
values of defined length (including sequences) are stepped over whole.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.core.errors import DatasetLimitError, DatasetStructureError

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
# PS3.5 A.5 (Deflated Explicit VR Little Endian) and A.6 / A.7 (JPIP Referenced Deflate, JPIP HTJ2K
# Referenced Deflate): the whole dataset after the file meta is one raw deflate stream.
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"})

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQ_END, _UNDEFINED = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0xFFFFFFFF
_INFLATE_PIECE = 1 << 16  # most inflated bytes produced per zlib call
_CLOCK_EVERY = 1024  # headers between two looks at the clock


@dataclass(frozen=True)
class Syntax:
    """How a transfer syntax encodes the dataset (every other accepted syntax is explicit VR LE)."""

    little_endian: bool = True
    implicit_vr: bool = False
    deflated: bool = False

    @classmethod
    def from_uid(cls, uid: str) -> Syntax:
        uid = uid.rstrip("\0 ")
        return cls(little_endian=uid != EXPLICIT_BE, implicit_vr=uid == IMPLICIT_LE, deflated=uid in DEFLATED)


@dataclass(frozen=True)
class Limits:
    """What one dataset may cost. Defaults fit every real modality object we know of; the largest
    legitimate counts are per-frame functional groups (one item per frame) and RT contours."""

    max_elements: int = 2_000_000  # element headers and item tags, all levels together
    max_items_per_sequence: int = 100_000
    max_depth: int = 32  # sequences nested within sequences
    max_inflate_ratio: int = 200  # inflated bytes per deflated byte consumed, past the floor below
    inflate_floor_bytes: int = 64 << 20  # any deflated dataset may inflate to this much
    max_seconds: float = 30.0  # wall time of one walk (checked with the caller's clock)


@dataclass(frozen=True)
class Walked:
    """The outcome of a complete walk: top-level values of the wanted tags, raw bytes."""

    values: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))
    elements: int = 0
    inflated_bytes: int = 0  # 0 unless the dataset was deflated

    def text(self, tag: int) -> str:
        """A wanted value as text (these are all short ASCII VRs), padding stripped; "" if absent."""
        value = self.values.get(tag)
        return "" if value is None else value.decode("ascii", "replace").rstrip("\0 ").strip()


class _Frame:
    """One open container: the dataset, an undefined-length item, or an undefined-length sequence."""

    __slots__ = ("is_sequence", "little", "implicit", "items")

    def __init__(self, is_sequence: bool, little: bool, implicit: bool) -> None:
        self.is_sequence, self.little, self.implicit, self.items = is_sequence, little, implicit, 0


class DatasetWalk:
    """Push parser: ``feed`` bytes in order (``skip`` over bytes not needed), then ``finish``."""

    def __init__(self, syntax: Syntax, wanted: frozenset[int] = frozenset(), limits: Limits | None = None,
                 clock: Callable[[], float] | None = None, max_value_bytes: int = 64) -> None:
        self._limits = limits or Limits()
        self._wanted, self._max_value = wanted, max_value_bytes
        self._clock = clock
        self._deadline = None if clock is None else clock() + self._limits.max_seconds
        self._stack = [_Frame(False, syntax.little_endian, syntax.implicit_vr)]
        self._pos = 0  # offset in the (inflated) dataset of the next byte to consume
        self._buf = bytearray()  # a header or wanted value split across feeds
        self._need = 8  # bytes of the next token: a header (8), a long length (4) or a wanted value
        self._state = "head"  # "head", "long" (awaiting the 4-byte length) or "value"
        self._pending: tuple[int, bytes] = (0, b"")  # tag and VR whose header is being completed
        self._skip = 0  # bytes of the current value still to step over
        self._elements = 0
        self._values: dict[int, bytes] = {}
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if syntax.deflated else None
        self._fed = self._inflated = 0

    # -- the caller's side -------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Consume ``data``; return how many of the bytes right after it the walker does not need
        (always 0 for a deflated dataset, whose bytes must all be inflated)."""
        if self._inflater is not None:
            self._fed += len(data)
            self._inflate(data)
            return 0
        self._consume(memoryview(data))
        return self._skip

    def skip(self, count: int) -> None:
        """The caller stepped over ``count`` bytes without feeding them (at most what ``feed`` said)."""
        if self._inflater is not None or not 0 <= count <= self._skip:
            raise AssertionError("skip() past what the walker said it does not need")
        self._skip -= count
        self._pos += count

    def finish(self) -> Walked:
        """No more bytes: the dataset must have ended cleanly."""
        if self._inflater is not None:
            self._inflate(b"")
            if not self._inflater.eof:
                raise DatasetStructureError("deflated dataset truncated")
        if self._skip:
            raise DatasetStructureError(f"a value overruns the end of the dataset ({self._skip} bytes short)")
        if self._buf or self._state != "head":
            raise DatasetStructureError(f"truncated at byte {self._pos - len(self._buf)}")
        if len(self._stack) > 1:
            what = "sequence" if self._stack[-1].is_sequence else "item"
            raise DatasetStructureError(f"{what} delimiter missing at the end of the dataset")
        if self._pos == 0:
            raise DatasetStructureError("empty dataset")
        return Walked(MappingProxyType(dict(self._values)), self._elements, self._inflated)

    # -- inflating ---------------------------------------------------------------------------
    def _inflate(self, data: bytes | bytearray | memoryview) -> None:
        """Inflate in bounded pieces; keep calling zlib while it still produces output, so output
        it holds back when all input is consumed is never mistaken for a truncated stream."""
        assert self._inflater is not None
        inflater, pending = self._inflater, data
        while not inflater.eof:
            try:
                out = inflater.decompress(pending, _INFLATE_PIECE)
            except zlib.error as exc:
                raise DatasetStructureError("deflated dataset corrupt") from exc
            pending = inflater.unconsumed_tail
            if not out and not pending:
                return  # zlib needs more input
            self._inflated += len(out)
            consumed = self._fed - len(pending) - len(inflater.unused_data)
            if self._inflated > self._limits.inflate_floor_bytes + self._limits.max_inflate_ratio * consumed:
                raise DatasetLimitError(f"deflated dataset inflates more than {self._limits.max_inflate_ratio}:1 "
                                        f"(over {self._inflated} bytes from {consumed})")
            self._check_time()
            self._consume(memoryview(out))
        # bytes after the end of the deflate stream are not part of the dataset; they are ignored

    # -- walking -----------------------------------------------------------------------------
    def _consume(self, view: memoryview) -> None:
        i, n = 0, len(view)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                self._pos += step
                i += step
                continue
            need = self._need - len(self._buf)
            if self._buf or n - i < need:
                take = min(need, n - i)
                self._buf += view[i:i + take]
                i += take
                self._pos += take
                if len(self._buf) < self._need:
                    return
                token, self._buf = bytes(self._buf), bytearray()
            else:
                token = bytes(view[i:i + need])
                i += need
                self._pos += need
            self._token(token)

    def _token(self, token: bytes) -> None:
        if self._state == "head":
            self._header(token)
        elif self._state == "long":
            tag, vr = self._pending
            self._element(tag, vr, struct.unpack("<L" if self._stack[-1].little else ">L", token)[0])
        else:
            self._values[self._pending[0]] = token
            self._state, self._need = "head", 8

    def _header(self, head: bytes) -> None:
        frame = self._stack[-1]
        order = "<" if frame.little else ">"
        group, element = struct.unpack(order + "HH", head[:4])
        tag, vr = group << 16 | element, head[4:6]
        self._count()
        if group == 0xFFFE or frame.implicit:
            self._element(tag, b"", struct.unpack(order + "L", head[4:8])[0])
        elif not (vr.isalpha() and vr.isupper()):
            raise DatasetStructureError(f"invalid VR at byte {self._pos - 8}")
        elif vr in _LONG_VRS:
            self._pending, self._state, self._need = (tag, vr), "long", 4
        else:
            self._element(tag, vr, struct.unpack(order + "H", head[6:8])[0])

    def _element(self, tag: int, vr: bytes, length: int) -> None:
        """A complete header: open, close or step over what it introduces."""
        self._state, self._need = "head", 8
        frame = self._stack[-1]
        if frame.is_sequence:
            self._in_sequence(frame, tag, length)
        elif tag == _ITEM_END and len(self._stack) > 1:
            self._stack.pop()
        elif tag >> 16 == 0xFFFE:
            raise DatasetStructureError(f"misplaced delimiter before byte {self._pos}")
        elif length == _UNDEFINED:  # a sequence, or encapsulated pixel data: items up to a delimiter
            if sum(f.is_sequence for f in self._stack) >= self._limits.max_depth:
                raise DatasetLimitError(f"sequences nested deeper than {self._limits.max_depth}")
            implicit = frame.implicit or vr == b"UN"  # PS3.5 6.2.2: UN of undefined length is implicit LE
            self._stack.append(_Frame(True, frame.little or vr == b"UN", implicit))
        elif len(self._stack) == 1 and tag in self._wanted and 0 < length <= self._max_value:
            self._pending, self._state, self._need = (tag, vr), "value", length
        else:
            self._skip = length

    def _in_sequence(self, frame: _Frame, tag: int, length: int) -> None:
        if tag == _SEQ_END:
            self._stack.pop()
            return
        if tag != _ITEM:
            raise DatasetStructureError(f"expected an item before byte {self._pos}")
        frame.items += 1
        if frame.items > self._limits.max_items_per_sequence:
            raise DatasetLimitError(f"a sequence holds more than {self._limits.max_items_per_sequence} items")
        if length == _UNDEFINED:
            self._stack.append(_Frame(False, frame.little, frame.implicit))
        else:
            self._skip = length

    def _count(self) -> None:
        self._elements += 1
        if self._elements > self._limits.max_elements:
            raise DatasetLimitError(f"dataset holds more than {self._limits.max_elements} elements")
        if self._elements % _CLOCK_EVERY == 0:
            self._check_time()

    def _check_time(self) -> None:
        if self._clock is not None and self._deadline is not None and self._clock() > self._deadline:
            raise DatasetLimitError(f"reading the dataset took longer than {self._limits.max_seconds:.0f} s")


def walk(data: bytes, syntax: Syntax, wanted: frozenset[int] = frozenset(), limits: Limits | None = None,
         clock: Callable[[], float] | None = None) -> Walked:
    """Walk a whole dataset held in memory (tests, fuzzing, small objects)."""
    walker = DatasetWalk(syntax, wanted, limits, clock)
    walker.feed(data)
    return walker.finish()
