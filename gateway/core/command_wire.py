"""Remote commands on the wire (docs/protocol.md, "Remote commands"): cloud -> box, sealed and signed; pure.

Central operations act on a box through commands the cloud signs with its Ed25519 *command key*
(``acksig.AckSigner``; a key of its own, not the ack key, kept by the fleet service only). A box
holds the command key's public half in a keyring (current and, during a rotation, next), given
by enrolment as ``command_keys``; a box without one refuses every command.

Topics (``gateway.core.topics``)::

    {prefix}/{box}/cmd          cloud -> box: one command frame, QoS 1, not retained
    {prefix}/{box}/cmd/result   box -> cloud: ``schema.CommandResult`` (JSON), QoS 1

Frame (integers big-endian)::

    magic "MGWK" | version 1 (1 byte) | key id (8) | seq (8) | issued at (8, ms) | expires at (8, ms)
    | kind length (1) | kind (ASCII) | command id (16) | ephemeral X25519 public (32)
    | wrapped data key (48) | nonce (12) | ciphertext (AES-256-GCM, tag last) | Ed25519 signature (64)

The clear header holds no patient data or names, only what the box checks before any other
work: who signed (key id, then the signature over ``LABEL + len(box id) (2) + box id + every
byte before it``), the sequence number, the times and the kind. The arguments (a Study
Instance UID, an accession number, a configuration, the operator's name) are sealed to the
box's own X25519 inbound key (the one it announces in its birth as ``worklist_key``), bound to
the box id and command id, so the broker never holds them in the clear and a frame made for
one box opens on no other.

The box accepts a command only when, in this order: the frame parses, a key it trusts signed it
for this box id, it has not expired (``expires_at``) and was not issued in the future beyond
``MAX_SKEW_S``, and its ``seq`` is above the last one the box executed (a replay is refused; the
same command delivered twice, same seq and id, is answered with its stored result, never run
again). ``check`` decides this; ``open_frame`` then decrypts the arguments.

No I/O here: keys, randomness and the clock come in as arguments.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core import acksig, envelope, schema
from gateway.core.errors import EnvelopeTamperedError, FrameError, UnexpectedAckError

MAGIC = b"MGWK"
VERSION = 1
LABEL = b"mgw/v1 command"
NONCE_BYTES = 12
ID_BYTES = 16
MAX_SKEW_S = 300.0  # a command issued further in the future than this is refused (clocks disagree, or forged)
MAX_LIFETIME_S = 30 * 86400.0  # the cloud never issues a command that lives longer (a queued command expires)
MAX_ARGS_BYTES = 48 * 1024  # the sealed arguments' JSON; a configuration fits
_HEAD = struct.Struct(">4sB8sQQQB")  # magic, version, key id, seq, issued ms, expires ms, kind length
_WRAP_ID = b"mgw/v1 command wrap "
MIN_FRAME_BYTES = _HEAD.size + 1 + ID_BYTES + 32 + 48 + NONCE_BYTES + envelope.TAG_BYTES + acksig.SIGNATURE_BYTES
MAX_FRAME_BYTES = 64 * 1024  # under the broker's packet limit (core.framing.MAX_PACKET_BYTES)


class Kind(enum.StrEnum):
    """What a command asks of the box (docs/operations.md, "Remote operations")."""

    ECHO = "echo"  # C-ECHO the modality; result: status and round-trip time
    BUNDLE = "bundle"  # collect a diagnostic bundle (no PHI), upload it sealed to the cloud
    RESEND = "resend"  # send a study again, by Study Instance UID or accession number
    QUARANTINE = "quarantine"  # list, replay or drop quarantined items
    CONFIG = "config"  # apply a new configuration version, roll back if the health check fails
    RENEW = "renew"  # renew the box certificate now
    RESTART = "restart"  # restart one of the box's services
    UPDATE = "update"  # start a software update through the update hooks and their health gate


class Refusal(enum.StrEnum):
    """Why a box refused a frame; the reason codes of ``schema.CommandResult`` (state ``refused``)."""

    MALFORMED = "malformed"
    UNTRUSTED = "untrusted"  # no key the box trusts signed it, or the signature does not verify
    NO_KEY = "no-command-key"  # the box has no command keyring (enrolled before commands existed)
    WRONG_BOX = "wrong-box"
    EXPIRED = "expired"
    FUTURE = "issued-in-the-future"
    REPLAYED = "replayed"  # seq at or below the last executed, and not that same command
    TAMPERED = "tampered"  # signed, but the arguments do not decrypt
    BAD_ARGS = "bad-arguments"


class CommandRefused(FrameError):
    """A frame the box will not execute, with the reason code it reports."""

    def __init__(self, refusal: Refusal, detail: str, command_id: str | None = None, seq: int | None = None) -> None:
        super().__init__(f"command refused ({refusal.value}): {detail}")
        self.refusal = refusal
        self.detail = detail
        self.command_id = command_id
        self.seq = seq


@dataclass(frozen=True)
class Header:
    """The clear, signed part of a frame."""

    key_id: bytes
    seq: int
    issued_at: float
    expires_at: float
    kind: Kind
    command_id: str  # 32 hex digits


@dataclass(frozen=True)
class Command:
    """A command the box has checked and opened."""

    header: Header
    args: dict[str, Any]
    issued_by: str

    @property
    def id(self) -> str:
        return self.header.command_id

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def kind(self) -> Kind:
        return self.header.kind


def _signed(box_id: str, body: bytes) -> bytes:
    return acksig.for_box(LABEL, box_id, body)


def _wrap_id(command_id: bytes, box_id: str) -> bytes:
    return _WRAP_ID + bytes([VERSION]) + command_id + acksig.box_bytes(box_id)


def _ms(t: float) -> int:
    return int(round(t * 1000))


def seal(box_id: str, box_public: bytes, signer: acksig.AckSigner, *, command_id: bytes, seq: int, kind: Kind,
         args: dict[str, Any], issued_by: str, issued_at: float, expires_at: float,
         data_key: bytes, eph_private: bytes, nonce: bytes) -> bytes:
    """The frame carrying one command to ``box_id``, whose inbound key is ``box_public`` (raw
    X25519). ``ValueError`` if a value is out of range or the arguments are too large."""
    if len(command_id) != ID_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError("the command id is 16 bytes and the nonce 12")
    if not 1 <= seq < 2**63:
        raise ValueError("seq is 1 .. 2**63-1")
    if not 0 < expires_at - issued_at <= MAX_LIFETIME_S:
        raise ValueError(f"a command expires after it is issued, within {MAX_LIFETIME_S:.0f} s")
    plain = schema.encode(schema.CommandArgs(args=args, by=issued_by))
    if len(plain) > MAX_ARGS_BYTES:
        raise ValueError(f"command arguments are {len(plain)} bytes, above {MAX_ARGS_BYTES}")
    name = Kind(kind).value.encode("ascii")
    head = _HEAD.pack(MAGIC, VERSION, signer.key_id, seq, _ms(issued_at), _ms(expires_at), len(name)) + name
    head += command_id
    eph_public, wrapped = envelope.wrap_data_key(box_public, data_key, eph_private, _wrap_id(command_id, box_id))
    clear = head + eph_public + wrapped + nonce
    body = clear + AESGCM(data_key).encrypt(nonce, plain, clear + acksig.box_bytes(box_id))
    return body + signer.sign(_signed(box_id, body))


def _parse_header(frame: bytes) -> tuple[Header, int]:
    """The header and where the ephemeral key starts, or ``CommandRefused(MALFORMED)``."""
    if len(frame) > MAX_FRAME_BYTES:
        raise CommandRefused(Refusal.MALFORMED, f"{len(frame)} bytes, above the {MAX_FRAME_BYTES}-byte limit")
    if len(frame) < MIN_FRAME_BYTES:
        raise CommandRefused(Refusal.MALFORMED, "shorter than its header")
    magic, version, kid, seq, issued_ms, expires_ms, kind_len = _HEAD.unpack_from(frame)
    if magic != MAGIC:
        raise CommandRefused(Refusal.MALFORMED, "bad magic")
    if version != VERSION:
        raise CommandRefused(Refusal.MALFORMED, f"version {version}, this box reads {VERSION}")
    at = _HEAD.size
    if len(frame) < MIN_FRAME_BYTES + kind_len:
        raise CommandRefused(Refusal.MALFORMED, "shorter than its header")
    try:
        kind = Kind(frame[at:at + kind_len].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise CommandRefused(Refusal.MALFORMED, "unknown command kind") from None
    at += kind_len
    command_id = frame[at:at + ID_BYTES].hex()
    at += ID_BYTES
    if not 1 <= seq < 2**63:
        raise CommandRefused(Refusal.MALFORMED, "seq out of range", command_id)
    return Header(kid, seq, issued_ms / 1000.0, expires_ms / 1000.0, kind, command_id), at


def check(frame: bytes, box_id: str, keyring: acksig.AckKeyring | None, now: float, last_seq: int) -> Header:
    """The frame's header if the box may act on it now, else ``CommandRefused`` with the reason.

    A frame whose ``seq`` is at or below ``last_seq`` is refused as ``REPLAYED``; the caller first
    looks the command id up among those it executed and answers a genuine redelivery with the
    stored result (``peek``), so this check is for the rest."""
    header = verify_signature(frame, box_id, keyring)  # the signer is known, and the frame is for this box id
    if now >= header.expires_at:
        raise CommandRefused(Refusal.EXPIRED, f"expired {now - header.expires_at:.0f} s ago",
                             header.command_id, header.seq)
    if header.issued_at > now + MAX_SKEW_S:
        raise CommandRefused(Refusal.FUTURE, f"issued {header.issued_at - now:.0f} s in the future",
                             header.command_id, header.seq)
    if header.seq <= last_seq:
        raise CommandRefused(Refusal.REPLAYED, f"seq {header.seq} is not above {last_seq}, the last executed",
                             header.command_id, header.seq)
    return header


def verify_signature(frame: bytes, box_id: str, keyring: acksig.AckKeyring | None) -> Header:
    """The header if a trusted key signed the frame for ``box_id``, whatever its times and seq (a
    redelivery of a command the box already ran is answered with its stored result only when
    genuine); ``CommandRefused`` (MALFORMED, NO_KEY, UNTRUSTED) otherwise."""
    header, _ = _parse_header(frame)
    if keyring is None:
        raise CommandRefused(Refusal.NO_KEY, "this box holds no command key (re-enrol or renew)",
                             header.command_id, header.seq)
    body, signature = frame[:-acksig.SIGNATURE_BYTES], frame[-acksig.SIGNATURE_BYTES:]
    try:
        keyring.verify(header.key_id, _signed(box_id, body), signature)
    except UnexpectedAckError as exc:
        raise CommandRefused(Refusal.UNTRUSTED, str(exc).replace("ack", "command"),
                             header.command_id, header.seq) from None
    return header


def peek(frame: bytes) -> Header:
    """The header, unauthenticated (to find a redelivered command's stored result, or to name a
    refused one in the report); ``CommandRefused(MALFORMED)`` if it does not parse."""
    return _parse_header(frame)[0]


def open_frame(frame: bytes, header: Header, box_id: str, box_private: bytes) -> Command:
    """Decrypt the arguments of a frame ``check`` passed; ``CommandRefused`` (TAMPERED, BAD_ARGS)."""
    _, at = _parse_header(frame)
    eph_public, wrapped = frame[at:at + 32], frame[at + 32:at + 80]
    nonce = frame[at + 80:at + 80 + NONCE_BYTES]
    clear_end = at + 80 + NONCE_BYTES
    body = frame[:-acksig.SIGNATURE_BYTES]
    command_id = bytes.fromhex(header.command_id)
    try:
        data_key = envelope.unwrap_data_key(box_private, eph_public, wrapped, _wrap_id(command_id, box_id))
        plain = AESGCM(data_key).decrypt(nonce, body[clear_end:], body[:clear_end] + acksig.box_bytes(box_id))
    except (EnvelopeTamperedError, InvalidTag, ValueError):
        raise CommandRefused(Refusal.TAMPERED, "the arguments do not decrypt with this box's key",
                             header.command_id, header.seq) from None
    try:
        sealed = schema.parse(schema.CommandArgs, plain, "command arguments", MAX_ARGS_BYTES)
    except FrameError as exc:
        raise CommandRefused(Refusal.BAD_ARGS, str(exc), header.command_id, header.seq) from None
    return Command(header, dict(sealed.args), sealed.by)


# -- the box's diagnostic bundle, sealed to the cloud ({prefix}/{box}/cmd/blob) --------------------------
#    sealed = ephemeral X25519 public (32) | wrapped data key (48) | nonce (12) | AES-256-GCM ciphertext
#    The data key is wrapped for the cloud's envelope key (as instance data is), bound to the box
#    id and command id; the cloud keeps the sealed bytes as they came and opens them only for an
#    operator's download. The box sends them in parts (``schema.CommandBlobPart``) of at most
#    ``BLOB_PART_BYTES``, each with the whole's SHA-256.
BLOB_PART_BYTES = 96 * 1024  # with its JSON and base64, under the broker's packet limit
MAX_BLOB_BYTES = 4 * 1024 * 1024  # a bundle the box cannot fit in this is cut (log tails first)
_BLOB_WRAP_ID = b"mgw/v1 command blob "
_BLOB_HEAD = 32 + 48 + NONCE_BYTES


def _blob_id(command_id: str, box_id: str) -> bytes:
    return _BLOB_WRAP_ID + bytes([VERSION]) + bytes.fromhex(command_id) + acksig.box_bytes(box_id)


def seal_blob(cloud_public: bytes, box_id: str, command_id: str, plain: bytes, *,
              data_key: bytes, eph_private: bytes, nonce: bytes) -> bytes:
    """``plain`` (the bundle) sealed for the cloud; ``ValueError`` if it would exceed ``MAX_BLOB_BYTES``."""
    if len(plain) + _BLOB_HEAD + envelope.TAG_BYTES > MAX_BLOB_BYTES:
        raise ValueError(f"a bundle of {len(plain)} bytes does not fit in {MAX_BLOB_BYTES}")
    wrap_id = _blob_id(command_id, box_id)
    eph_public, wrapped = envelope.wrap_data_key(cloud_public, data_key, eph_private, wrap_id)
    return eph_public + wrapped + nonce + AESGCM(data_key).encrypt(nonce, plain, wrap_id)


def open_blob(cloud_private: bytes, box_id: str, command_id: str, sealed: bytes) -> bytes:
    """The bundle in ``sealed``, or ``EnvelopeTamperedError`` / ``FrameError``."""
    if not _BLOB_HEAD + envelope.TAG_BYTES <= len(sealed) <= MAX_BLOB_BYTES:
        raise FrameError("command blob: size out of range")
    wrap_id = _blob_id(command_id, box_id)
    data_key = envelope.unwrap_data_key(cloud_private, sealed[:32], sealed[32:80], wrap_id)
    try:
        return AESGCM(data_key).decrypt(sealed[80:_BLOB_HEAD], sealed[_BLOB_HEAD:], wrap_id)
    except InvalidTag as exc:
        raise EnvelopeTamperedError("command blob failed authentication") from exc
