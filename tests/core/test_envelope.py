"""Properties of the envelope (gateway.core.envelope): key wrap to the cloud and chunk AEAD.

Object-level sealing (``seal_object`` / ``open_object``) is in test_transfer.py.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import envelope
from gateway.core.envelope import (
    PUBLIC_KEY_BYTES,
    TAG_BYTES,
    WRAPPED_KEY_BYTES,
    chunk_nonce,
    open_chunk,
    public_key_of,
    seal_chunk,
    unwrap_data_key,
    wrap_data_key,
)
from gateway.core.errors import EnvelopeTamperedError, PeerError

keys32 = st.binary(min_size=32, max_size=32)
transfer_ids = st.binary(min_size=16, max_size=16)
seqs = st.integers(min_value=0, max_value=2**32 - 1)

# X25519 points of small order (libsodium's blocklist): a shared secret with them is all zero.
LOW_ORDER_POINTS = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
]


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def other(key: bytes) -> bytes:
    return bytes(b ^ 0x5A for b in key)


# --- key wrap -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(cloud_private=keys32, eph_private=keys32, data_key=keys32, transfer_id=transfer_ids)
def test_unwrap_returns_the_data_key_when_given_the_cloud_private_key(
    cloud_private: bytes, eph_private: bytes, data_key: bytes, transfer_id: bytes
) -> None:
    eph_public, wrapped = wrap_data_key(public_key_of(cloud_private), data_key, eph_private, transfer_id)
    assert len(eph_public) == PUBLIC_KEY_BYTES and len(wrapped) == WRAPPED_KEY_BYTES
    assert eph_public == public_key_of(eph_private)
    assert data_key not in wrapped
    assert unwrap_data_key(cloud_private, eph_public, wrapped, transfer_id) == data_key


@settings(max_examples=60, deadline=None)
@given(cloud_private=keys32, wrong_private=keys32, eph_private=keys32, data_key=keys32, transfer_id=transfer_ids)
def test_unwrap_raises_envelope_tampered_error_when_the_cloud_private_key_is_wrong(
    cloud_private: bytes, wrong_private: bytes, eph_private: bytes, data_key: bytes, transfer_id: bytes
) -> None:
    if public_key_of(wrong_private) == public_key_of(cloud_private):
        wrong_private = other(cloud_private)
    eph_public, wrapped = wrap_data_key(public_key_of(cloud_private), data_key, eph_private, transfer_id)
    with pytest.raises(EnvelopeTamperedError, match="does not unwrap"):
        unwrap_data_key(wrong_private, eph_public, wrapped, transfer_id)


@settings(max_examples=60, deadline=None)
@given(cloud_private=keys32, eph_private=keys32, data_key=keys32, tid_a=transfer_ids, tid_b=transfer_ids)
def test_unwrap_raises_envelope_tampered_error_when_the_transfer_id_differs(
    cloud_private: bytes, eph_private: bytes, data_key: bytes, tid_a: bytes, tid_b: bytes
) -> None:
    if tid_a == tid_b:
        tid_b = other(tid_a)
    eph_public, wrapped = wrap_data_key(public_key_of(cloud_private), data_key, eph_private, tid_a)
    with pytest.raises(EnvelopeTamperedError):
        unwrap_data_key(cloud_private, eph_public, wrapped, tid_b)


@settings(max_examples=5, deadline=None)
@given(cloud_private=keys32, eph_private=keys32, data_key=keys32, transfer_id=transfer_ids)
def test_unwrap_raises_envelope_tampered_error_when_any_bit_of_the_wrapped_key_or_eph_key_is_flipped(
    cloud_private: bytes, eph_private: bytes, data_key: bytes, transfer_id: bytes
) -> None:
    eph_public, wrapped = wrap_data_key(public_key_of(cloud_private), data_key, eph_private, transfer_id)
    for bit in range(WRAPPED_KEY_BYTES * 8):
        with pytest.raises(EnvelopeTamperedError):
            unwrap_data_key(cloud_private, eph_public, flip_bit(wrapped, bit), transfer_id)
    # X25519 ignores bit 255 of a public key (RFC 7748), but the HKDF salt binds the raw bytes
    for bit in range(PUBLIC_KEY_BYTES * 8):
        with pytest.raises(EnvelopeTamperedError):
            unwrap_data_key(cloud_private, flip_bit(eph_public, bit), wrapped, transfer_id)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_unwrap_raises_envelope_tampered_error_when_the_eph_key_has_small_order(point: str) -> None:
    with pytest.raises(EnvelopeTamperedError, match="not a valid X25519 point"):
        unwrap_data_key(bytes(range(32)), bytes.fromhex(point), bytes(WRAPPED_KEY_BYTES), bytes(16))


def test_wrap_raises_value_error_when_the_data_key_is_not_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        wrap_data_key(public_key_of(bytes(32)), bytes(31), bytes(32), bytes(16))


@settings(max_examples=30, deadline=None)
@given(private=keys32)
def test_public_key_of_matches_cryptography_when_given_any_private_key(private: bytes) -> None:
    expected = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    assert public_key_of(private) == expected


@settings(max_examples=30, deadline=None)
@given(cloud_private=keys32, eph_private=keys32, data_key=keys32, transfer_id=transfer_ids)
def test_wrap_returns_the_same_bytes_when_inputs_are_the_same(
    cloud_private: bytes, eph_private: bytes, data_key: bytes, transfer_id: bytes
) -> None:
    """All randomness is passed in: the same inputs give the same wrap (golden vectors rely on it)."""
    cloud_public = public_key_of(cloud_private)
    first = wrap_data_key(cloud_public, data_key, eph_private, transfer_id)
    assert wrap_data_key(cloud_public, data_key, eph_private, transfer_id) == first


# --- chunk AEAD ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(data_key=keys32, seq=seqs, plaintext=st.binary(max_size=2048), aad=st.binary(max_size=200))
def test_open_chunk_returns_the_plaintext_when_key_seq_and_aad_match(
    data_key: bytes, seq: int, plaintext: bytes, aad: bytes
) -> None:
    sealed = seal_chunk(data_key, seq, plaintext, aad)
    assert len(sealed) == len(plaintext) + TAG_BYTES
    assert open_chunk(data_key, seq, sealed, aad) == plaintext


@settings(max_examples=100, deadline=None)
@given(data_key=keys32, seq=seqs, other_seq=seqs, plaintext=st.binary(max_size=256), aad=st.binary(max_size=64))
def test_open_chunk_raises_envelope_tampered_error_when_the_seq_differs(
    data_key: bytes, seq: int, other_seq: int, plaintext: bytes, aad: bytes
) -> None:
    if seq == other_seq:
        other_seq = seq ^ 1
    sealed = seal_chunk(data_key, seq, plaintext, aad)
    with pytest.raises(EnvelopeTamperedError, match=f"chunk {other_seq}"):
        open_chunk(data_key, other_seq, sealed, aad)


@settings(max_examples=100, deadline=None)
@given(
    data_key=keys32,
    seq=seqs,
    plaintext=st.binary(max_size=256),
    aad=st.binary(max_size=64),
    extra=st.binary(max_size=8),
)
def test_open_chunk_raises_envelope_tampered_error_when_the_aad_or_key_differs(
    data_key: bytes, seq: int, plaintext: bytes, aad: bytes, extra: bytes
) -> None:
    sealed = seal_chunk(data_key, seq, plaintext, aad)
    with pytest.raises(EnvelopeTamperedError):
        open_chunk(data_key, seq, sealed, aad + extra + b"x")
    with pytest.raises(EnvelopeTamperedError):
        open_chunk(other(data_key), seq, sealed, aad)


@settings(max_examples=10, deadline=None)
@given(data_key=keys32, seq=seqs, plaintext=st.binary(max_size=64), aad=st.binary(max_size=64))
def test_open_chunk_raises_envelope_tampered_error_when_any_bit_of_the_ciphertext_is_flipped(
    data_key: bytes, seq: int, plaintext: bytes, aad: bytes
) -> None:
    sealed = seal_chunk(data_key, seq, plaintext, aad)
    for bit in range(len(sealed) * 8):
        with pytest.raises(EnvelopeTamperedError):
            open_chunk(data_key, seq, flip_bit(sealed, bit), aad)


@settings(max_examples=50, deadline=None)
@given(data_key=keys32, seq=seqs, sealed=st.binary(max_size=64), aad=st.binary(max_size=64))
def test_open_chunk_raises_only_peer_errors_when_the_ciphertext_is_arbitrary(
    data_key: bytes, seq: int, sealed: bytes, aad: bytes
) -> None:
    """Shorter than a tag, empty or random: all are EnvelopeTamperedError, never InvalidTag or ValueError."""
    with pytest.raises(EnvelopeTamperedError):
        open_chunk(data_key, seq, sealed, aad)


@settings(max_examples=200, deadline=None)
@given(a=seqs, b=seqs)
def test_chunk_nonce_differs_when_seqs_differ(a: int, b: int) -> None:
    assert len(chunk_nonce(a)) == 12
    assert (chunk_nonce(a) == chunk_nonce(b)) == (a == b)


def test_envelope_errors_are_peer_errors_when_raised_for_tampering() -> None:
    """Who broke the contract: the other side, so the error sits under PeerError (docs/development.md, "Errors")."""
    assert issubclass(EnvelopeTamperedError, PeerError)
    assert envelope.ENVELOPE_VERSION == 1
