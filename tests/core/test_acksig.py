"""Properties of the cloud's ack signatures (gateway.core.acksig): keys, keyring, exam-record acks.

Ack frames themselves (wire v2) are in test_framing.py; the fixed vectors in test_golden.py.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.acksig import (
    KEY_ID_BYTES,
    MAX_KEYRING_KEYS,
    SIGNATURE_BYTES,
    AckKeyring,
    AckSigner,
    key_id,
    public_key_of,
    sign_util_ack,
    util_ack_message,
    verify_util_ack,
)
from gateway.core.errors import FrameError, KeyringError, PeerError, UnexpectedAckError

seeds = st.binary(min_size=32, max_size=32)
box_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
study_keys = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)
revisions = st.integers(0, 2**32 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def flip_hex(text: str, bit: int) -> str:
    raw = bytearray(bytes.fromhex(text))
    raw[bit // 8] ^= 1 << (bit % 8)
    return raw.hex()


@settings(max_examples=50, deadline=None)
@given(seed=seeds, message=st.binary(max_size=300))
def test_keyring_verifies_a_signature_when_made_by_its_signer(seed: bytes, message: bytes) -> None:
    signer = AckSigner(seed)
    signature = signer.sign(message)
    assert len(signature) == SIGNATURE_BYTES and len(signer.key_id) == KEY_ID_BYTES
    assert signer.key_id == hashlib.sha256(signer.public).digest()[:8] == key_id(public_key_of(seed))
    AckKeyring((signer.public,)).verify(signer.key_id, message, signature)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, message=st.binary(min_size=1, max_size=64))
def test_keyring_raises_unexpected_ack_error_when_any_bit_of_signature_or_message_flips(
    seed: bytes, message: bytes
) -> None:
    signer = AckSigner(seed)
    keyring, signature = AckKeyring((signer.public,)), signer.sign(message)
    for bit in range(SIGNATURE_BYTES * 8):
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(UnexpectedAckError):
            keyring.verify(signer.key_id, message, bytes(flipped))
    for bit in range(len(message) * 8):
        changed = bytearray(message)
        changed[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(UnexpectedAckError):
            keyring.verify(signer.key_id, bytes(changed), signature)


@settings(max_examples=50, deadline=None)
@given(seed_a=seeds, seed_b=seeds)
def test_keyring_raises_unexpected_ack_error_when_the_key_is_not_in_it(seed_a: bytes, seed_b: bytes) -> None:
    a, b = AckSigner(seed_a), AckSigner(seed_b)
    if a.public == b.public:
        return
    with pytest.raises(UnexpectedAckError, match="does not trust"):
        AckKeyring((b.public,)).verify(a.key_id, b"m", a.sign(b"m"))
    with pytest.raises(UnexpectedAckError, match="signature"):
        AckKeyring((b.public,)).verify(b.key_id, b"m", a.sign(b"m"))


def test_signer_repr_names_the_key_id_when_printed_never_the_key() -> None:
    seed = bytes(range(32))
    text = repr(AckSigner(seed)) + str(AckSigner(seed))
    assert AckSigner(seed).key_id.hex() in text
    assert seed.hex() not in text and base64.b64encode(seed).decode() not in text


@settings(max_examples=30, deadline=None)
@given(seeds_=st.lists(seeds, min_size=1, max_size=MAX_KEYRING_KEYS, unique=True))
def test_keyring_doc_parses_back_equal_when_written_by_to_doc(seeds_: list[bytes]) -> None:
    keyring = AckKeyring(tuple(AckSigner(s).public for s in seeds_))
    assert AckKeyring.from_doc(copy.deepcopy(keyring.to_doc())) == keyring
    assert keyring.key_ids == tuple(AckSigner(s).key_id for s in seeds_)


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(v=2),
    lambda d: d.update(keys=[]),
    lambda d: d.update(keys="x"),
    lambda d: d["keys"][0].update(id="00" * 8),
    lambda d: d["keys"][0].update(public="not base64!"),
    lambda d: d["keys"][0].update(public=base64.b64encode(bytes(31)).decode()),
    lambda d: d["keys"].append(d["keys"][0]),
    lambda d: d["keys"].extend([d["keys"][0]] * MAX_KEYRING_KEYS),
    lambda d: d["keys"][0].pop("id"),
], ids=["version", "empty", "not-a-list", "id-mismatch", "bad-base64", "short-key", "duplicate", "too-many",
        "no-id"])
def test_keyring_from_doc_raises_keyring_error_when_the_doc_is_wrong(mutate: Any) -> None:
    doc = AckKeyring((AckSigner(bytes(32)).public,)).to_doc()
    mutate(doc)
    with pytest.raises(KeyringError):
        AckKeyring.from_doc(doc)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_keyring_from_doc_returns_or_raises_keyring_error_when_the_doc_is_arbitrary(doc: object) -> None:
    try:
        AckKeyring.from_doc(doc)
    except KeyringError:
        pass


# --- exam-record acks -----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(seed=seeds, box_id=box_ids, study_key=study_keys, revision=revisions)
def test_verify_util_ack_returns_the_study_and_revision_when_signed_by_a_trusted_key(
    seed: bytes, box_id: str, study_key: str, revision: int
) -> None:
    signer = AckSigner(seed)
    doc = sign_util_ack(signer, box_id, study_key, revision)
    assert verify_util_ack(doc, box_id, AckKeyring((signer.public,))) == (study_key, revision)


@settings(max_examples=30, deadline=None)
@given(box_id=box_ids, study_key=study_keys, revision=revisions)
def test_verify_util_ack_refuses_when_anything_it_covers_is_changed(
    box_id: str, study_key: str, revision: int
) -> None:
    signer = AckSigner(bytes(32))
    keyring, doc = AckKeyring((signer.public,)), sign_util_ack(signer, box_id, study_key, revision)
    for changed in ({**doc, "study_key": study_key + "0"}, {**doc, "revision": revision ^ 1},
                    {**doc, "sig": flip_hex(doc["sig"], 0)}, {**doc, "sig": flip_hex(doc["sig"], 511)}):
        with pytest.raises(UnexpectedAckError):
            verify_util_ack(changed, box_id, keyring)
    with pytest.raises(UnexpectedAckError):
        verify_util_ack(doc, box_id + "-x", keyring)
    with pytest.raises(UnexpectedAckError, match="does not trust"):
        verify_util_ack({**doc, "key_id": flip_hex(doc["key_id"], 3)}, box_id, keyring)


def test_verify_util_ack_raises_frame_error_when_the_ack_is_the_unsigned_version_1() -> None:
    keyring = AckKeyring((AckSigner(bytes(32)).public,))
    with pytest.raises(FrameError, match="version 2"):
        verify_util_ack({"v": 1, "study_key": "ab", "revision": 3}, "box", keyring)


@settings(max_examples=300, deadline=None)
@given(doc=json_values | st.fixed_dictionaries(
    {"v": st.just(2), "study_key": st.text(max_size=300), "revision": st.integers() | st.booleans(),
     "key_id": st.text(max_size=20), "sig": st.text(alphabet="0123456789abcdef ", max_size=140)}))
def test_verify_util_ack_returns_or_raises_frame_or_ack_error_when_the_doc_is_arbitrary(doc: object) -> None:
    keyring = AckKeyring((AckSigner(bytes(32)).public,))
    try:
        verify_util_ack(doc, "box", keyring)
    except (FrameError, UnexpectedAckError):
        return
    raise AssertionError("an arbitrary document verified")


def test_util_ack_message_is_domain_separated_when_compared_with_an_ack_frame_input() -> None:
    message = util_ack_message("box", "ab", 7)
    assert message == b"mgw/v2 util-ack" + b"\x00\x03box" + b"\x00\x02ab" + b"\x00\x00\x00\x07"
    assert not message.startswith(b"mgw/v2 ack")


def test_signature_errors_are_peer_errors_when_raised() -> None:
    assert issubclass(UnexpectedAckError, PeerError) and issubclass(KeyringError, PeerError)


def test_signer_is_plain_rfc8032_ed25519_when_given_the_rfc_test_1_key() -> None:
    """RFC 8032 section 7.1, TEST 1: a compatible cloud or edge may use any Ed25519 library."""
    signer = AckSigner(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert signer.public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert signer.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b")
