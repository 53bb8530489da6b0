"""Wire format v2 of the chunk and acknowledgement frames.

Every MQTT message body is exactly one frame. All integers are big-endian.

Chunk frame (edge -> cloud), 108-byte header then AES-GCM ciphertext::

    0   4  magic  b"MGWC"
    4   1  version (2)
    5   1  flags   bit 0 FINAL: this is the last chunk of the object
    6   2  reserved, zero
    8  16  transfer id (random, also the last topic level as hex)
   24   4  seq    0 = sealed manifest, 1.. = payload pieces
   28  32  ephemeral X25519 public key       } the wrapped data key, repeated in
   60  48  wrapped data key (AES-GCM)        } every chunk so any worker can verify it
  108   .  ciphertext || 16-byte GCM tag

The GCM associated data is ``b"mgw/v1 chunk" || len(box_id) || box_id || header``
(the label is unchanged from v1; the version byte in the header tells them apart).

Ack frame (cloud -> edge)::

    0   4  magic  b"MGWA"
    4   1  version (2)
    5   1  kind   AckKind
    6   2  reason RejectReason (0 unless REJECTED)
    8  16  transfer id
   24   8  key id: SHA-256(signing public key)[:8]
   32   2  n, number of ranges
   34  8n  ranges: (start u32, stop u32) of staged chunk seqs, stop exclusive
    .  32  SHA-256 of the original object (STORED only)
    .  64  Ed25519(cloud ack key, b"mgw/v2 ack" || len(box_id) || box_id || all above)

Version 1 (acks under an HMAC key the edge could derive) is refused both ways with
``UnsupportedVersionError``: a v1 chunk cannot be answered without reintroducing the flaw.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from gateway.core.acksig import KEY_ID_BYTES, SIGNATURE_BYTES, AckKeyring, AckSigner
from gateway.core.envelope import PUBLIC_KEY_BYTES, TAG_BYTES, WRAPPED_KEY_BYTES
from gateway.core.errors import FrameError, UnsupportedVersionError

WIRE_VERSION = 2
CHUNK_MAGIC = b"MGWC"
ACK_MAGIC = b"MGWA"
TRANSFER_ID_BYTES = 16
FLAG_FINAL = 0x01
_CHUNK_HEADER = struct.Struct(f">4sBBH{TRANSFER_ID_BYTES}sI{PUBLIC_KEY_BYTES}s{WRAPPED_KEY_BYTES}s")
CHUNK_HEADER_BYTES = _CHUNK_HEADER.size  # 108
_ACK_HEADER = struct.Struct(f">4sBBH{TRANSFER_ID_BYTES}s{KEY_ID_BYTES}sH")
_RANGE = struct.Struct(">II")
ACK_SIGNATURE_BYTES = SIGNATURE_BYTES
ACK_LABEL = b"mgw/v2 ack"
SHA256_BYTES = 32
MAX_ACK_RANGES = 4096
MAX_FRAME_BYTES = 128 * 1024
# Largest MQTT packet a broker accepts from anyone: a chunk frame (uplink.max_frame_bytes,
# <= MAX_FRAME_BYTES) plus topic, properties and fixed header with room to spare. Acks and
# telemetry are far smaller. A client that sends more is disconnected (MQTT 5 reason 0x95).
MAX_PACKET_BYTES = MAX_FRAME_BYTES + 4096
MIN_FRAME_BYTES = CHUNK_HEADER_BYTES + TAG_BYTES + 1024


class AckKind(enum.IntEnum):
    PROGRESS = 1  # these chunks are durably staged in the cloud
    STORED = 2  # the whole object is durably archived (or already was)
    REJECTED = 3  # the cloud will never store this transfer; see reason


class RejectReason(enum.IntEnum):
    NONE = 0
    INTEGRITY = 1  # hash or size mismatch after restore
    CODEC = 2  # unknown codec or corrupt compressed stream
    MANIFEST = 3  # manifest unreadable or missing required fields
    TOO_LARGE = 4  # declared size above the cloud's limit


def _check_version(data: bytes, magic: bytes, message: str) -> None:
    """Our magic with another version byte: ``UnsupportedVersionError``, whatever the length
    (a frame of another version need not have our sizes)."""
    if len(data) > 4 and bytes(data[:4]) == magic and data[4] != WIRE_VERSION:
        raise UnsupportedVersionError(message.format(v=data[4]), data[4])


@dataclass(frozen=True)
class ChunkFrame:
    transfer_id: bytes
    seq: int
    final: bool
    eph_public: bytes
    wrapped_key: bytes
    ciphertext: bytes

    def header(self) -> bytes:
        if (len(self.transfer_id), len(self.eph_public), len(self.wrapped_key)) != (
            TRANSFER_ID_BYTES, PUBLIC_KEY_BYTES, WRAPPED_KEY_BYTES
        ):
            raise ValueError("transfer id, ephemeral key or wrapped key has the wrong length")
        if not 0 <= self.seq < 2**32:
            raise ValueError("seq must fit in 32 bits")
        flags = FLAG_FINAL if self.final else 0
        return _CHUNK_HEADER.pack(
            CHUNK_MAGIC, WIRE_VERSION, flags, 0, self.transfer_id, self.seq,
            self.eph_public, self.wrapped_key,
        )

    def encode(self) -> bytes:
        return self.header() + self.ciphertext


def chunk_aad(box_id: str, header: bytes) -> bytes:
    box = box_id.encode("utf-8")
    return b"mgw/v1 chunk" + struct.pack(">H", len(box)) + box + header


def parse_chunk(data: bytes) -> ChunkFrame:
    """Parse one chunk frame, or raise ``FrameError``; never anything else."""
    _check_version(data, CHUNK_MAGIC, "chunk frame version {v}; this cloud speaks only version "
                   f"{WIRE_VERSION} (signed acks): upgrade the box")
    if len(data) < CHUNK_HEADER_BYTES + TAG_BYTES:
        raise FrameError(f"chunk frame too short: {len(data)} bytes")
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"chunk frame too long: {len(data)} bytes")
    magic, version, flags, reserved, tid, seq, eph, wrapped = _CHUNK_HEADER.unpack_from(data)
    if magic != CHUNK_MAGIC:
        raise FrameError("not a chunk frame (bad magic)")
    assert version == WIRE_VERSION
    if flags & ~FLAG_FINAL or reserved:
        raise FrameError("reserved chunk header bits are set")
    return ChunkFrame(tid, seq, bool(flags & FLAG_FINAL), eph, wrapped, bytes(data[CHUNK_HEADER_BYTES:]))


@dataclass(frozen=True)
class AckFrame:
    kind: AckKind
    transfer_id: bytes
    ranges: tuple[tuple[int, int], ...] = ()
    sha256: bytes = b""
    reason: RejectReason = RejectReason.NONE

    def _body(self, kid: bytes) -> bytes:
        if len(self.ranges) > MAX_ACK_RANGES:
            raise ValueError("too many ranges in one ack")
        if len(self.transfer_id) != TRANSFER_ID_BYTES:
            raise ValueError("transfer id must be 16 bytes")
        if any(not 0 <= start < stop < 2**32 for start, stop in self.ranges):
            raise ValueError("ack ranges must be non-empty, start < stop, in 32 bits")
        if self.sha256 and self.kind is not AckKind.STORED:
            raise ValueError("only a STORED ack carries a SHA-256")
        if self.reason is not RejectReason.NONE and self.kind is not AckKind.REJECTED:
            raise ValueError("only a REJECTED ack carries a reason")
        parts = [_ACK_HEADER.pack(ACK_MAGIC, WIRE_VERSION, self.kind, self.reason,
                                  self.transfer_id, kid, len(self.ranges))]
        parts += [_RANGE.pack(start, stop) for start, stop in self.ranges]
        if self.kind is AckKind.STORED:
            if len(self.sha256) != SHA256_BYTES:
                raise ValueError("a STORED ack carries the 32-byte SHA-256")
            parts.append(self.sha256)
        return b"".join(parts)

    def encode(self, box_id: str, signer: AckSigner) -> bytes:
        body = self._body(signer.key_id)
        return body + signer.sign(ack_signed_input(box_id, body))


def ack_signed_input(box_id: str, body: bytes) -> bytes:
    """The bytes an ack's Ed25519 signature covers: label, box id, then the frame up to the signature."""
    box = box_id.encode("utf-8")
    return ACK_LABEL + struct.pack(">H", len(box)) + box + body


def peek_ack_transfer_id(data: bytes) -> bytes:
    """The transfer id of an ack frame, to find its item (nothing is trusted before ``parse_ack``)."""
    if len(data) < _ACK_HEADER.size + ACK_SIGNATURE_BYTES or data[:4] != ACK_MAGIC:
        raise FrameError("not an ack frame")
    return bytes(data[8:24])


def parse_ack(data: bytes, box_id: str, keyring: AckKeyring) -> AckFrame:
    """Parse and authenticate an ack; ``FrameError`` or ``UnexpectedAckError`` on failure."""
    _check_version(data, ACK_MAGIC, f"ack frame version {{v}}, expected {WIRE_VERSION}")
    if len(data) < _ACK_HEADER.size + ACK_SIGNATURE_BYTES:
        raise FrameError(f"ack frame too short: {len(data)} bytes")
    magic, version, kind_raw, reason_raw, tid, kid, n = _ACK_HEADER.unpack_from(data)
    if magic != ACK_MAGIC:
        raise FrameError("not an ack frame (bad magic)")
    assert version == WIRE_VERSION
    try:
        kind, reason = AckKind(kind_raw), RejectReason(reason_raw)
    except ValueError as exc:
        raise FrameError(f"unknown ack kind {kind_raw} or reason {reason_raw}") from exc
    if reason is not RejectReason.NONE and kind is not AckKind.REJECTED:
        raise FrameError(f"a {kind.name} ack carries reason {reason.name}")
    if n > MAX_ACK_RANGES:
        raise FrameError(f"ack declares {n} ranges")
    sha_len = SHA256_BYTES if kind is AckKind.STORED else 0
    expected = _ACK_HEADER.size + n * _RANGE.size + sha_len + ACK_SIGNATURE_BYTES
    if len(data) != expected:
        raise FrameError(f"ack frame is {len(data)} bytes, header says {expected}")
    body, signature = bytes(data[:-ACK_SIGNATURE_BYTES]), bytes(data[-ACK_SIGNATURE_BYTES:])
    keyring.verify(kid, ack_signed_input(box_id, body), signature)
    offset = _ACK_HEADER.size
    ranges = []
    for _ in range(n):
        start, stop = _RANGE.unpack_from(data, offset)
        offset += _RANGE.size
        if stop <= start:
            raise FrameError(f"empty or inverted ack range {start}..{stop}")
        ranges.append((start, stop))
    sha = bytes(data[offset:offset + sha_len])
    return AckFrame(kind, tid, tuple(ranges), sha, reason)


def to_ranges(seqs: set[int] | frozenset[int]) -> tuple[tuple[int, int], ...]:
    """Compress a set of chunk numbers into sorted half-open ranges."""
    out: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if out and out[-1][1] == seq:
            out[-1] = (out[-1][0], seq + 1)
        else:
            out.append((seq, seq + 1))
    return tuple(out)


def from_ranges(ranges: tuple[tuple[int, int], ...]) -> set[int]:
    return {seq for start, stop in ranges for seq in range(start, stop)}
