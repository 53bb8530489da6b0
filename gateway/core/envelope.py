"""Envelope encryption to the cloud's X25519 key (format version 1).

Per object: a fresh random 256-bit data key (DEK) encrypts every chunk with
AES-256-GCM. The DEK is wrapped for the cloud with ECIES: an ephemeral X25519
key agreement, HKDF-SHA256 to a key-encryption key, AES-256-GCM. The transfer
id is bound into the wrap and each chunk's associated data carries the whole
frame header (box id, transfer id, chunk index, final flag), so chunks cannot
be reordered, swapped between transfers or boxes, truncated or altered.

Randomness is passed in: this module does no I/O and reads no clock.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.core.errors import EnvelopeTamperedError

ENVELOPE_VERSION = 1
KEY_BYTES = 32
TAG_BYTES = 16
PUBLIC_KEY_BYTES = 32
WRAPPED_KEY_BYTES = KEY_BYTES + TAG_BYTES
_WRAP_NONCE = bytes(12)  # the KEK is unique per ephemeral key, so a fixed nonce is safe
_WRAP_INFO = b"mgw/v1 key-wrap "
_WRAP_AAD = b"mgw/v1 dek "


def public_key_of(private_raw: bytes) -> bytes:
    """Raw 32-byte X25519 public key for a raw 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes_raw()


def _kek(shared: bytes, eph_public: bytes, cloud_public: bytes, transfer_id: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=eph_public + cloud_public,
        info=_WRAP_INFO + transfer_id,
    )
    return hkdf.derive(shared)


def wrap_data_key(
    cloud_public: bytes, data_key: bytes, eph_private: bytes, transfer_id: bytes
) -> tuple[bytes, bytes]:
    """Return ``(eph_public, wrapped_key)`` that only the cloud can unwrap."""
    if len(data_key) != KEY_BYTES:
        raise ValueError("data key must be 32 bytes")
    eph = X25519PrivateKey.from_private_bytes(eph_private)
    eph_public = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(cloud_public))
    kek = _kek(shared, eph_public, cloud_public, transfer_id)
    wrapped = AESGCM(kek).encrypt(_WRAP_NONCE, data_key, _WRAP_AAD + transfer_id)
    return eph_public, wrapped


def unwrap_data_key(
    cloud_private: bytes, eph_public: bytes, wrapped_key: bytes, transfer_id: bytes
) -> bytes:
    """Recover the data key, or raise ``EnvelopeTamperedError``."""
    priv = X25519PrivateKey.from_private_bytes(cloud_private)
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_public))
    except ValueError as exc:  # all-zero shared secret from a low-order point
        raise EnvelopeTamperedError("ephemeral key is not a valid X25519 point") from exc
    kek = _kek(shared, eph_public, priv.public_key().public_bytes_raw(), transfer_id)
    try:
        return AESGCM(kek).decrypt(_WRAP_NONCE, wrapped_key, _WRAP_AAD + transfer_id)
    except InvalidTag as exc:
        raise EnvelopeTamperedError("data key does not unwrap for this transfer") from exc


def chunk_nonce(seq: int) -> bytes:
    """Deterministic 96-bit nonce; unique because each DEK seals one object once."""
    return b"\x00\x00\x00\x00" + seq.to_bytes(8, "big")


def seal_chunk(data_key: bytes, seq: int, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(data_key).encrypt(chunk_nonce(seq), plaintext, aad)


def open_chunk(data_key: bytes, seq: int, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(data_key).decrypt(chunk_nonce(seq), ciphertext, aad)
    except InvalidTag as exc:
        raise EnvelopeTamperedError(f"chunk {seq} failed authentication") from exc
