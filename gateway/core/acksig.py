"""Signed acknowledgements (wire v2): the cloud's Ed25519 ack keys, key ids, the edge's keyring.

An ack lets the edge delete data, so only the cloud may be able to make one. The cloud
signs every ack (image acks, ``gateway.core.framing``; exam-record acks, below) with
its Ed25519 private key, which never leaves the cloud; a box holds only public keys,
in a small keyring (the current key and, during a rotation, the next one). Nothing a box
stores lets anyone sign: reading its disk is not enough to forge an ack.

A key id is the first 8 bytes of SHA-256 of the raw 32-byte public key; it travels
with each signature so the edge can pick the key. No I/O here: keys come in as bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.core.errors import FrameError, KeyringError, UnexpectedAckError

KEY_BYTES = 32  # raw Ed25519 private seed and raw public key alike
KEY_ID_BYTES = 8
SIGNATURE_BYTES = 64
MAX_KEYRING_KEYS = 4  # current + next, with room for an overlap; more is a mistake
KEYRING_VERSION = 1
UTIL_ACK_VERSION = 2
UTIL_ACK_LABEL = b"mgw/v2 util-ack"
MAX_STUDY_KEY_BYTES = 255


def key_id(public_raw: bytes) -> bytes:
    """First 8 bytes of SHA-256 of a raw Ed25519 public key."""
    return hashlib.sha256(public_raw).digest()[:KEY_ID_BYTES]


def public_key_of(private_raw: bytes) -> bytes:
    """Raw 32-byte Ed25519 public key of a raw 32-byte private key (seed)."""
    return Ed25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes_raw()


class AckSigner:
    """The cloud's signing half. Its repr names the key id, never the key."""

    __slots__ = ("_key", "key_id", "public")

    def __init__(self, private_raw: bytes) -> None:
        if len(private_raw) != KEY_BYTES:
            raise ValueError("an Ed25519 private key is 32 raw bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(private_raw)
        self.public: bytes = self._key.public_key().public_bytes_raw()
        self.key_id: bytes = key_id(self.public)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"AckSigner(key_id={self.key_id.hex()})"


@dataclass(frozen=True)
class AckKeyring:
    """The public keys an edge accepts acks from, in order (current first). Immutable."""

    publics: tuple[bytes, ...]
    _by_id: Mapping[bytes, Ed25519PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.publics) <= MAX_KEYRING_KEYS:
            raise KeyringError(f"a keyring holds 1 to {MAX_KEYRING_KEYS} keys, not {len(self.publics)}")
        by_id: dict[bytes, Ed25519PublicKey] = {}
        for raw in self.publics:
            if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
                raise KeyringError("an Ed25519 public key is 32 raw bytes")
            try:
                by_id[key_id(raw)] = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError as exc:
                raise KeyringError("not an Ed25519 public key") from exc
        if len(by_id) != len(self.publics):
            raise KeyringError("the keyring lists a key twice")
        object.__setattr__(self, "_by_id", by_id)

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        return tuple(key_id(raw) for raw in self.publics)

    def verify(self, kid: bytes, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is the keyring key ``kid``'s over ``message``, else ``UnexpectedAckError``."""
        public = self._by_id.get(bytes(kid))
        if public is None:
            raise UnexpectedAckError(f"ack signed by key {bytes(kid).hex()}, which this box does not trust")
        try:
            public.verify(bytes(signature), message)
        except InvalidSignature as exc:
            raise UnexpectedAckError("ack signature does not verify (forged, altered, or not for this box)") from exc

    def to_doc(self) -> dict[str, Any]:
        """The JSON form (enrolment answer, the edge's keyring file)."""
        return {"v": KEYRING_VERSION, "keys": [
            {"id": key_id(raw).hex(), "public": base64.b64encode(raw).decode()} for raw in self.publics]}

    @classmethod
    def from_doc(cls, doc: object) -> AckKeyring:
        """Parse ``to_doc``'s form strictly; ``KeyringError`` names what is wrong."""
        if not isinstance(doc, dict) or doc.get("v") != KEYRING_VERSION or not isinstance(doc.get("keys"), list):
            raise KeyringError(f"not an ack keyring of version {KEYRING_VERSION}")
        publics = []
        for entry in doc["keys"][:MAX_KEYRING_KEYS + 1]:
            if not isinstance(entry, dict) or not isinstance(entry.get("public"), str) \
                    or not isinstance(entry.get("id"), str):
                raise KeyringError("each keyring entry needs 'id' and 'public' strings")
            try:
                raw = base64.b64decode(entry["public"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise KeyringError("a keyring public key is not base64") from exc
            if key_id(raw).hex() != entry["id"]:
                raise KeyringError(f"keyring entry {entry['id'][:16]!r} does not match its public key")
            publics.append(raw)
        return cls(tuple(publics))


# -- what a signature covers: a label, then the box id it is for ----------------------------------


def box_bytes(box_id: str) -> bytes:
    """The box id as signed bytes (UTF-8, 1 to 65535 bytes); ``ValueError`` otherwise."""
    raw = box_id.encode("utf-8")
    if not 0 < len(raw) <= 0xFFFF:
        raise ValueError("box id out of range")
    return raw


def for_box(label: bytes, box_id: str, body: bytes) -> bytes:
    """``label + len(box id) (2, big-endian) + box id + body``: what a frame's signature covers, so a
    frame made for one box verifies for no other."""
    box = box_bytes(box_id)
    return label + struct.pack(">H", len(box)) + box + body


# -- exam-record acks ({prefix}/{box}/util/ack, JSON) ------------------------------------------


def util_ack_message(box_id: str, study_key: str, revision: int) -> bytes:
    """What the cloud signs for an exam-record ack: label, box id, study key, revision."""
    box, key = box_id.encode("utf-8"), study_key.encode("utf-8")
    if not 0 <= revision < 2**32 or len(key) > MAX_STUDY_KEY_BYTES or len(box) > 0xFFFF:
        raise ValueError("revision, study key or box id out of range")
    return UTIL_ACK_LABEL + struct.pack(">H", len(box)) + box + struct.pack(">H", len(key)) + key \
        + struct.pack(">I", revision)


def sign_util_ack(signer: AckSigner, box_id: str, study_key: str, revision: int) -> dict[str, Any]:
    signature = signer.sign(util_ack_message(box_id, study_key, revision))
    return {"v": UTIL_ACK_VERSION, "study_key": study_key, "revision": revision,
            "key_id": signer.key_id.hex(), "sig": signature.hex()}


def verify_util_ack(doc: object, box_id: str, keyring: AckKeyring) -> tuple[str, int]:
    """``(study_key, revision)`` of a signed exam-record ack, or ``FrameError``/``UnexpectedAckError``."""
    if not isinstance(doc, dict) or doc.get("v") != UTIL_ACK_VERSION:
        raise FrameError(f"not an exam-record ack of version {UTIL_ACK_VERSION}")
    study_key, revision, kid, sig = (doc.get(k) for k in ("study_key", "revision", "key_id", "sig"))
    if not isinstance(study_key, str) or type(revision) is not int or not isinstance(kid, str) \
            or not isinstance(sig, str):
        raise FrameError("exam-record ack lacks study_key, revision, key_id or sig")
    try:
        kid_raw, sig_raw = bytes.fromhex(kid), bytes.fromhex(sig)
        message = util_ack_message(box_id, study_key, revision)
    except ValueError as exc:
        raise FrameError("exam-record ack has a bad field") from exc
    if len(kid_raw) != KEY_ID_BYTES or len(sig_raw) != SIGNATURE_BYTES:
        raise FrameError("exam-record ack key id or signature has the wrong length")
    keyring.verify(kid_raw, message, sig_raw)
    return study_key, revision
