"""The worklist feed on the wire (docs/protocol.md, "Worklist feed"): cloud -> box, sealed and signed; pure.

A box's worklist carries patient names and IDs, so it crosses the broker, and rests in the
broker's retained store, only encrypted to that box: the cloud wraps a fresh data key for the
box's own X25519 worklist key (``envelope.wrap_data_key``, the same ECIES the box uses towards
the cloud) and seals the zlib-compressed ``schema.WorklistUpdate`` with AES-256-GCM. The cloud
signs the whole frame with its Ed25519 ack key (``acksig``), so a box accepts a worklist only from
the cloud; the box id is in the signed bytes, the wrap and the cipher's associated data, so a
frame made for one box opens on no other.

Frame (all integers big-endian)::

    magic "MGWW" | version 1 (1 byte) | seq (8) | key id (8) | ephemeral X25519 public (32)
    | wrapped data key (48) | nonce (12) | ciphertext (AES-256-GCM, tag last) | Ed25519 signature (64)

The signature covers ``LABEL + len(box id) (2) + box id + every byte before it``. The plaintext
is zlib of the update's JSON; it is inflated at most to ``schema.MAX_WORKLIST_BYTES`` (a bomb is
refused by the bytes produced, not by a length field), then parsed strictly, and its ``box_id``
and ``seq`` must be the frame's.

The other direction carries no patient data: the box reports a step's performed status by the
random ``ref`` the cloud gave the entry (``schema.WorklistStatus``), and the cloud answers with a
signed acknowledgement (``sign_status_ack``) so the box can forget it.

No I/O here: keys, randomness and the clock come in as arguments.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core import acksig, envelope, schema
from gateway.core.errors import EnvelopeTamperedError, FrameError

MAGIC = b"MGWW"
VERSION = 1
LABEL = b"mgw/v1 worklist"
STATUS_ACK_VERSION = 1
STATUS_ACK_LABEL = b"mgw/v1 worklist-status-ack"
NONCE_BYTES = 12
_HEAD = struct.Struct(">4sBQ8s32s48s12s")  # magic, version, seq, key id, eph public, wrapped key, nonce
HEAD_BYTES = _HEAD.size
MIN_FRAME_BYTES = HEAD_BYTES + envelope.TAG_BYTES + acksig.SIGNATURE_BYTES
MAX_FRAME_BYTES = 120 * 1024  # under the broker's packet limit (core.framing.MAX_PACKET_BYTES)
_WRAP_ID = b"mgw/v1 worklist wrap "


def _signed(box_id: str, body: bytes) -> bytes:
    return acksig.for_box(LABEL, box_id, body)


def _wrap_id(seq: int, box_id: str) -> bytes:
    return _WRAP_ID + struct.pack(">BQ", VERSION, seq) + acksig.box_bytes(box_id)


def encode_update(update: schema.WorklistUpdate) -> bytes:
    """The update's JSON, compressed: what the frame seals."""
    return zlib.compress(schema.encode(update), 9)


def seal(update: schema.WorklistUpdate, box_public: bytes, signer: acksig.AckSigner, *,
         data_key: bytes, eph_private: bytes, nonce: bytes) -> bytes:
    """The frame carrying ``update`` to its box (``update.box_id``), whose worklist key is
    ``box_public`` (raw X25519). ``ValueError`` if it would exceed ``MAX_FRAME_BYTES``: the caller
    sends fewer entries."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("the nonce is 12 bytes")
    packed = encode_update(update)
    if len(packed) + MIN_FRAME_BYTES > MAX_FRAME_BYTES:
        raise ValueError(f"worklist of {len(update.ops)} operations is {len(packed)} bytes packed, above the frame")
    eph_public, wrapped = envelope.wrap_data_key(box_public, data_key, eph_private, _wrap_id(update.seq, update.box_id))
    head = _HEAD.pack(MAGIC, VERSION, update.seq, signer.key_id, eph_public, wrapped, nonce)
    body = head + AESGCM(data_key).encrypt(nonce, packed, head + acksig.box_bytes(update.box_id))
    return body + signer.sign(_signed(update.box_id, body))


def peek_seq(frame: bytes) -> int:
    """The frame's sequence number, unauthenticated (to skip an old frame before any crypto)."""
    if len(frame) < MIN_FRAME_BYTES or frame[:4] != MAGIC:
        raise FrameError("worklist frame: not a worklist frame")
    return int(_HEAD.unpack_from(frame)[2])


def open_frame(frame: bytes, box_id: str, box_private: bytes, keyring: acksig.AckKeyring) -> schema.WorklistUpdate:
    """The update in ``frame`` for this box, or ``FrameError`` (malformed, too large, not this
    box's) / ``UnexpectedAckError`` (not signed by a key the box trusts) /
    ``EnvelopeTamperedError`` (does not decrypt)."""
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameError(f"worklist frame: {len(frame)} bytes, above the {MAX_FRAME_BYTES}-byte limit")
    if len(frame) < MIN_FRAME_BYTES:
        raise FrameError("worklist frame: shorter than its header")
    magic, version, seq, kid, eph_public, wrapped, nonce = _HEAD.unpack_from(frame)
    if magic != MAGIC:
        raise FrameError("worklist frame: bad magic")
    if version != VERSION:
        raise FrameError(f"worklist frame: version {version}, this box reads {VERSION}")
    body, signature = frame[:-acksig.SIGNATURE_BYTES], frame[-acksig.SIGNATURE_BYTES:]
    keyring.verify(kid, _signed(box_id, body), signature)  # before any other work: forged frames cost nothing
    head = body[:HEAD_BYTES]
    data_key = envelope.unwrap_data_key(box_private, eph_public, wrapped, _wrap_id(seq, box_id))
    try:
        packed = AESGCM(data_key).decrypt(nonce, body[HEAD_BYTES:], head + acksig.box_bytes(box_id))
    except InvalidTag as exc:
        raise EnvelopeTamperedError("worklist frame failed authentication") from exc
    update = schema.parse(schema.WorklistUpdate, _inflate(packed), "worklist", schema.MAX_WORKLIST_BYTES)
    if update.box_id != box_id or update.seq != seq:
        raise FrameError("worklist frame: the update's box id or seq is not the frame's")
    return update


def _inflate(packed: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(packed, schema.MAX_WORKLIST_BYTES + 1)
    except zlib.error as exc:
        raise FrameError(f"worklist frame: not zlib ({exc})") from exc
    if len(plain) > schema.MAX_WORKLIST_BYTES or inflater.unconsumed_tail:
        raise FrameError(f"worklist frame: inflates above {schema.MAX_WORKLIST_BYTES} bytes")
    if not inflater.eof:
        raise FrameError("worklist frame: truncated zlib stream")
    return plain


# -- the box's status reports and their acks -------------------------------------------------------------
def status_ack_message(box_id: str, ref: str, status: str) -> bytes:
    box, r, s = acksig.box_bytes(box_id), ref.encode("ascii"), status.encode("ascii")
    if len(r) > 255 or len(s) > 255:
        raise ValueError("ref or status too long")
    return STATUS_ACK_LABEL + struct.pack(">H", len(box)) + box + bytes([len(r)]) + r + bytes([len(s)]) + s


def sign_status_ack(signer: acksig.AckSigner, box_id: str, ref: str, status: str) -> dict[str, Any]:
    """The cloud's answer to a ``schema.WorklistStatus``: the box may forget the report."""
    signature = signer.sign(status_ack_message(box_id, ref, status))
    return {"v": STATUS_ACK_VERSION, "ref": ref, "status": status, "key_id": signer.key_id.hex(),
            "sig": signature.hex()}


def verify_status_ack(doc: object, box_id: str, keyring: acksig.AckKeyring) -> tuple[str, str]:
    """``(ref, status)`` of a signed status ack, or ``FrameError``/``UnexpectedAckError``."""
    if not isinstance(doc, dict) or doc.get("v") != STATUS_ACK_VERSION:
        raise FrameError(f"not a worklist status ack of version {STATUS_ACK_VERSION}")
    ref, status, kid, sig = (doc.get(k) for k in ("ref", "status", "key_id", "sig"))
    if not isinstance(ref, str) or not isinstance(status, str) or not isinstance(kid, str) \
            or not isinstance(sig, str):
        raise FrameError("worklist status ack lacks ref, status, key_id or sig")
    try:
        kid_raw, sig_raw = bytes.fromhex(kid), bytes.fromhex(sig)
        message = status_ack_message(box_id, ref, status)
    except (ValueError, UnicodeEncodeError) as exc:
        raise FrameError("worklist status ack has a bad field") from exc
    if len(kid_raw) != acksig.KEY_ID_BYTES or len(sig_raw) != acksig.SIGNATURE_BYTES:
        raise FrameError("worklist status ack key id or signature has the wrong length")
    keyring.verify(kid_raw, message, sig_raw)
    return ref, status
