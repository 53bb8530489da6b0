"""Properties of wire format v2 (gateway.core.framing): round trips and the h11 fuzz invariant.

The fuzz invariant (h11 ``fuzz/afl-server.py``): whatever bytes arrive, ``parse_chunk``
returns a ``ChunkFrame`` or raises ``FrameError``, and ``parse_ack`` returns an
``AckFrame`` or raises ``FrameError`` / ``UnexpectedAckError``; never any other exception.
Acks are Ed25519-signed (``gateway.core.acksig``): any bit flip, another key or a key the
keyring does not hold is an ``UnexpectedAckError`` (or a ``FrameError`` for header bits).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.acksig import AckKeyring, AckSigner
from gateway.core.envelope import PUBLIC_KEY_BYTES, TAG_BYTES, WRAPPED_KEY_BYTES
from gateway.core.errors import FrameError, UnexpectedAckError, UnsupportedVersionError
from gateway.core.framing import (
    ACK_MAGIC,
    ACK_SIGNATURE_BYTES,
    CHUNK_HEADER_BYTES,
    CHUNK_MAGIC,
    FLAG_FINAL,
    MAX_ACK_RANGES,
    MAX_FRAME_BYTES,
    SHA256_BYTES,
    TRANSFER_ID_BYTES,
    WIRE_VERSION,
    AckFrame,
    AckKind,
    ChunkFrame,
    RejectReason,
    chunk_aad,
    from_ranges,
    parse_ack,
    parse_chunk,
    peek_ack_transfer_id,
    to_ranges,
)

U32 = 2**32 - 1
MAX_CIPHERTEXT_BYTES = MAX_FRAME_BYTES - CHUNK_HEADER_BYTES

transfer_ids = st.binary(min_size=TRANSFER_ID_BYTES, max_size=TRANSFER_ID_BYTES)
keys = st.binary(min_size=32, max_size=32).map(AckSigner)
box_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
any_box_ids = st.text(max_size=40)  # the signed input carries any UTF-8 text
seqs = st.integers(min_value=0, max_value=U32)

chunk_frames = st.builds(
    ChunkFrame,
    transfer_id=transfer_ids,
    seq=seqs,
    final=st.booleans(),
    eph_public=st.binary(min_size=PUBLIC_KEY_BYTES, max_size=PUBLIC_KEY_BYTES),
    wrapped_key=st.binary(min_size=WRAPPED_KEY_BYTES, max_size=WRAPPED_KEY_BYTES),
    ciphertext=st.binary(min_size=TAG_BYTES, max_size=4096),
)


@st.composite
def ack_ranges(draw: st.DrawFn) -> tuple[int, int]:
    start = draw(st.integers(min_value=0, max_value=U32 - 1))
    stop = draw(st.integers(min_value=start + 1, max_value=U32))
    return start, stop


@st.composite
def ack_frames(draw: st.DrawFn) -> AckFrame:
    kind = draw(st.sampled_from(AckKind))
    return AckFrame(
        kind=kind,
        transfer_id=draw(transfer_ids),
        ranges=tuple(draw(st.lists(ack_ranges(), max_size=24))),
        sha256=draw(st.binary(min_size=32, max_size=32)) if kind is AckKind.STORED else b"",
        reason=draw(st.sampled_from(RejectReason)) if kind is AckKind.REJECTED else RejectReason.NONE,
    )


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


SIGNER = AckSigner(bytes(32))
KEYRING = AckKeyring((SIGNER.public,))


def ring(*signers: AckSigner) -> AckKeyring:
    return AckKeyring(tuple(s.public for s in signers))


def ack_signed_input(box_id: str, body: bytes) -> bytes:
    """What the ack signature covers, written out from the module docstring (not the helper)."""
    box = box_id.encode("utf-8")
    return b"mgw/v2 ack" + struct.pack(">H", len(box)) + box + body


def ack_body(kind: int, reason: int, tid: bytes, ranges: list[tuple[int, int]], sha: bytes,
             kid: bytes = SIGNER.key_id) -> bytes:
    head = ACK_MAGIC + struct.pack(">BBH", WIRE_VERSION, kind, reason) + tid + kid + struct.pack(">H", len(ranges))
    return head + b"".join(struct.pack(">II", a, b) for a, b in ranges) + sha


def signed(body: bytes, box_id: str = "b", signer: AckSigner = SIGNER) -> bytes:
    return body + signer.sign(ack_signed_input(box_id, body))


def parse_chunk_or_frame_error(data: bytes) -> ChunkFrame | None:
    """The fuzz invariant for chunks; anything other than FrameError escapes and fails the test."""
    try:
        frame = parse_chunk(data)
    except FrameError:
        return None
    assert isinstance(frame, ChunkFrame)
    assert frame.encode() == bytes(data), "a frame that parses must re-encode to the same bytes"
    return frame


def parse_ack_or_error(data: bytes, box_id: str, signer: AckSigner) -> AckFrame | None:
    """The fuzz invariant for acks."""
    try:
        ack = parse_ack(data, box_id, ring(signer))
    except (FrameError, UnexpectedAckError):
        return None
    assert isinstance(ack, AckFrame)
    assert ack.encode(box_id, signer) == bytes(data), "an ack that verifies must re-encode to the same bytes"
    return ack


# --- chunk frames: round trip -------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(frame=chunk_frames)
def test_parse_chunk_returns_the_same_frame_when_given_any_encoded_frame(frame: ChunkFrame) -> None:
    data = frame.encode()
    assert len(data) == CHUNK_HEADER_BYTES + len(frame.ciphertext)
    assert data[:4] == CHUNK_MAGIC and data[4] == WIRE_VERSION
    assert parse_chunk(data) == frame


@settings(max_examples=100, deadline=None)
@given(frame=chunk_frames)
def test_chunk_header_places_each_field_at_its_documented_offset_when_encoded(frame: ChunkFrame) -> None:
    data = frame.encode()
    assert CHUNK_HEADER_BYTES == 108
    assert data[5] == (FLAG_FINAL if frame.final else 0)
    assert data[6:8] == b"\x00\x00"
    assert data[8:24] == frame.transfer_id
    assert int.from_bytes(data[24:28], "big") == frame.seq
    assert data[28:60] == frame.eph_public
    assert data[60:108] == frame.wrapped_key
    assert data[108:] == frame.ciphertext
    assert frame.header() == data[:CHUNK_HEADER_BYTES]


@settings(max_examples=50, deadline=None)
@given(frame=chunk_frames, box_id=any_box_ids)
def test_chunk_aad_ends_with_the_exact_header_when_built_for_a_box(frame: ChunkFrame, box_id: str) -> None:
    box = box_id.encode()
    aad = chunk_aad(box_id, frame.header())
    assert aad == b"mgw/v1 chunk" + len(box).to_bytes(2, "big") + box + frame.header()


def test_parse_chunk_accepts_frame_when_length_is_exactly_the_bounds() -> None:
    base = ChunkFrame(bytes(16), 1, True, bytes(32), bytes(48), b"")
    shortest = base.header() + bytes(TAG_BYTES)
    longest = base.header() + bytes(MAX_CIPHERTEXT_BYTES)
    assert parse_chunk(shortest).ciphertext == bytes(TAG_BYTES)
    assert len(parse_chunk(longest).encode()) == MAX_FRAME_BYTES


def test_parse_chunk_raises_frame_error_when_length_is_just_outside_the_bounds() -> None:
    base = ChunkFrame(bytes(16), 1, True, bytes(32), bytes(48), b"")
    with pytest.raises(FrameError, match="too short"):
        parse_chunk(base.header() + bytes(TAG_BYTES - 1))
    with pytest.raises(FrameError, match="too long"):
        parse_chunk(base.header() + bytes(MAX_CIPHERTEXT_BYTES + 1))


def test_parse_chunk_raises_frame_error_when_any_fixed_header_bit_is_flipped() -> None:
    """Magic, version, the flag bits other than FINAL and the reserved bytes are all checked."""
    data = ChunkFrame(bytes(range(16)), 7, False, bytes(32), bytes(48), bytes(TAG_BYTES)).encode()
    final_bit = 5 * 8  # byte 5, bit 0
    for bit in range(8 * 8):
        if bit == final_bit:
            continue
        with pytest.raises(FrameError):
            parse_chunk(flip_bit(data, bit))
    assert parse_chunk(flip_bit(data, final_bit)).final is True


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_parse_chunk_raises_unsupported_version_error_when_the_version_is_not_2(version: int) -> None:
    """A v1 box's chunk is refused with its own error, so the cloud can route and count it."""
    data = bytearray(ChunkFrame(bytes(16), 0, True, bytes(32), bytes(48), bytes(TAG_BYTES)).encode())
    data[4] = version
    with pytest.raises(UnsupportedVersionError, match="upgrade the box") as caught:
        parse_chunk(bytes(data))
    assert isinstance(caught.value, FrameError) and caught.value.version == version


# --- chunk frames: the fuzz invariant -----------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=512),
        st.binary(min_size=100, max_size=600).map(lambda b: CHUNK_MAGIC + b),
        st.binary(min_size=100, max_size=600).map(lambda b: CHUNK_MAGIC + bytes([WIRE_VERSION]) + b),
    )
)
def test_parse_chunk_returns_frame_or_raises_frame_error_when_bytes_are_arbitrary(data: bytes) -> None:
    parse_chunk_or_frame_error(data)


@st.composite
def mutated_chunks(draw: st.DrawFn) -> bytes:
    data = draw(chunk_frames).encode()
    op = draw(st.sampled_from(["flip", "flip_header", "truncate", "extend", "splice"]))
    if op == "flip":
        return flip_bit(data, draw(st.integers(0, len(data) * 8 - 1)))
    if op == "flip_header":
        return flip_bit(data, draw(st.integers(0, CHUNK_HEADER_BYTES * 8 - 1)))
    if op == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if op == "extend":
        return data + draw(st.binary(min_size=1, max_size=256))
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(max_size=16)) + data[at + draw(st.integers(0, 16)):]


@settings(max_examples=250, deadline=None)
@given(data=mutated_chunks())
def test_parse_chunk_returns_frame_or_raises_frame_error_when_a_valid_frame_is_mutated(data: bytes) -> None:
    parse_chunk_or_frame_error(data)


# --- ack frames: round trip ---------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(ack=ack_frames(), box_id=any_box_ids, key=keys)
def test_parse_ack_returns_the_same_ack_when_given_any_encoded_ack(ack: AckFrame, box_id: str, key: AckSigner) -> None:
    data = ack.encode(box_id, key)
    sha_bytes = SHA256_BYTES if ack.kind is AckKind.STORED else 0
    assert len(data) == 34 + 8 * len(ack.ranges) + sha_bytes + ACK_SIGNATURE_BYTES
    assert parse_ack(data, box_id, ring(key)) == ack
    assert peek_ack_transfer_id(data) == ack.transfer_id


@settings(max_examples=60, deadline=None)
@given(ack=ack_frames(), box_id=any_box_ids, key=keys)
def test_ack_places_each_field_at_its_documented_offset_when_encoded(
    ack: AckFrame, box_id: str, key: AckSigner
) -> None:
    data = ack.encode(box_id, key)
    sha = ack.sha256 if ack.kind is AckKind.STORED else b""
    body = ack_body(ack.kind, ack.reason, ack.transfer_id, list(ack.ranges), sha, key.key_id)
    assert data == signed(body, box_id, key)  # Ed25519 is deterministic
    assert data[24:32] == key.key_id


def test_parse_ack_accepts_the_largest_ack_when_it_has_max_ranges() -> None:
    ranges = tuple((2 * i, 2 * i + 1) for i in range(MAX_ACK_RANGES))
    ack = AckFrame(AckKind.PROGRESS, bytes(16), ranges)
    assert parse_ack(ack.encode("b", SIGNER), "b", KEYRING).ranges == ranges


def test_ack_encode_raises_value_error_when_ranges_exceed_the_maximum() -> None:
    ranges = tuple((2 * i, 2 * i + 1) for i in range(MAX_ACK_RANGES + 1))
    with pytest.raises(ValueError, match="too many ranges"):
        AckFrame(AckKind.PROGRESS, bytes(16), ranges).encode("b", SIGNER)


def test_ack_encode_raises_value_error_when_a_stored_ack_lacks_the_sha256() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        AckFrame(AckKind.STORED, bytes(16), ((0, 1),), b"").encode("b", SIGNER)


def test_parse_ack_raises_frame_error_when_range_count_exceeds_the_maximum() -> None:
    body = ack_body(AckKind.PROGRESS, 0, bytes(16), [], b"")[:-2] + struct.pack(">H", MAX_ACK_RANGES + 1)
    data = signed(body + bytes(8 * (MAX_ACK_RANGES + 1)))
    with pytest.raises(FrameError, match="ranges"):
        parse_ack(data, "b", KEYRING)


@pytest.mark.parametrize("ranges", [[(5, 5)], [(6, 5)], [(0, 1), (9, 2)]])
def test_parse_ack_raises_frame_error_when_a_range_is_empty_or_inverted(ranges: list[tuple[int, int]]) -> None:
    data = signed(ack_body(AckKind.PROGRESS, 0, bytes(16), ranges, b""))
    with pytest.raises(FrameError, match="range"):
        parse_ack(data, "b", KEYRING)


@pytest.mark.parametrize("kind, reason", [(0, 0), (4, 0), (255, 0), (3, 5), (3, 0xFFFF)])
def test_parse_ack_raises_frame_error_when_kind_or_reason_is_unknown(kind: int, reason: int) -> None:
    data = signed(ack_body(kind, reason, bytes(16), [], b""))
    with pytest.raises(FrameError, match="unknown ack kind"):
        parse_ack(data, "b", KEYRING)


@pytest.mark.parametrize("extra", [-1, 1, 8])
def test_parse_ack_raises_frame_error_when_length_disagrees_with_the_header(extra: int) -> None:
    good = AckFrame(AckKind.PROGRESS, bytes(16), ((0, 4),)).encode("b", SIGNER)
    bad = good[:extra] if extra < 0 else good + bytes(extra)
    with pytest.raises(FrameError, match="header says"):
        parse_ack(bad, "b", KEYRING)


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_parse_ack_raises_unsupported_version_error_when_the_version_is_not_2(version: int) -> None:
    data = bytearray(AckFrame(AckKind.STORED, bytes(16), sha256=bytes(32)).encode("b", SIGNER))
    data[4] = version
    with pytest.raises(UnsupportedVersionError) as caught:
        parse_ack(bytes(data), "b", KEYRING)
    assert caught.value.version == version


# --- ack frames: authentication -----------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(ack=ack_frames(), box_id=box_ids, key=keys)
def test_parse_ack_fails_when_any_bit_is_flipped(ack: AckFrame, box_id: str, key: AckSigner) -> None:
    data = ack.encode(box_id, key)
    for bit in range(len(data) * 8):
        byte = bit // 8
        # magic, version, kind, reason and n may fail the layout checks first; every other bit
        # (transfer id, key id, ranges, hash, signature) is caught by the signature alone
        layout = byte < 8 or 32 <= byte < 34
        expected: Any = (FrameError, UnexpectedAckError) if layout else UnexpectedAckError
        with pytest.raises(expected):
            parse_ack(flip_bit(data, bit), box_id, ring(key))


@settings(max_examples=60, deadline=None)
@given(ack=ack_frames(), box_a=box_ids, box_b=box_ids, key=keys)
def test_parse_ack_raises_unexpected_ack_error_when_signed_for_another_box(
    ack: AckFrame, box_a: str, box_b: str, key: AckSigner
) -> None:
    if box_a == box_b:
        box_b = box_a + "-x"
    with pytest.raises(UnexpectedAckError, match="signature"):
        parse_ack(ack.encode(box_a, key), box_b, ring(key))


@settings(max_examples=60, deadline=None)
@given(ack=ack_frames(), box_id=box_ids, key_a=keys, key_b=keys)
def test_parse_ack_raises_unexpected_ack_error_when_signed_by_a_key_the_keyring_lacks(
    ack: AckFrame, box_id: str, key_a: AckSigner, key_b: AckSigner
) -> None:
    if key_a.public == key_b.public:
        key_b = AckSigner(bytes(b ^ 1 for b in bytes(32)))
    with pytest.raises(UnexpectedAckError, match="does not trust"):
        parse_ack(ack.encode(box_id, key_a), box_id, ring(key_b))


@settings(max_examples=60, deadline=None)
@given(ack=ack_frames(), box_id=box_ids, key_a=keys, key_b=keys)
def test_parse_ack_raises_unexpected_ack_error_when_another_key_signs_under_a_trusted_key_id(
    ack: AckFrame, box_id: str, key_a: AckSigner, key_b: AckSigner
) -> None:
    """A forger who copies a trusted key id into the frame still cannot make the signature."""
    if key_a.public == key_b.public:
        return
    data = ack.encode(box_id, key_b)
    body = data[:24] + key_a.key_id + data[32:-ACK_SIGNATURE_BYTES]
    with pytest.raises(UnexpectedAckError, match="signature"):
        parse_ack(body + key_b.sign(ack_signed_input(box_id, body)), box_id, ring(key_a))


def test_parse_ack_accepts_either_key_when_the_keyring_holds_current_and_next() -> None:
    current, nxt = AckSigner(bytes(32)), AckSigner(bytes(range(32)))
    ack = AckFrame(AckKind.STORED, bytes(16), sha256=bytes(32))
    both = ring(current, nxt)
    assert parse_ack(ack.encode("b", current), "b", both) == ack
    assert parse_ack(ack.encode("b", nxt), "b", both) == ack
    with pytest.raises(UnexpectedAckError):
        parse_ack(ack.encode("b", nxt), "b", ring(current))


# --- ack frames: the fuzz invariant -------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=256),
        st.binary(min_size=40, max_size=300).map(lambda b: ACK_MAGIC + bytes([WIRE_VERSION]) + b),
        st.binary(min_size=40, max_size=300).map(lambda b: ACK_MAGIC + bytes([WIRE_VERSION]) + b[:26]
                                                 + SIGNER.key_id + b[26:]),
    ),
    box_id=any_box_ids,
)
def test_parse_ack_returns_or_raises_frame_or_ack_error_when_bytes_are_arbitrary(data: bytes, box_id: str) -> None:
    parse_ack_or_error(data, box_id, SIGNER)
    try:
        assert peek_ack_transfer_id(data) == data[8:24]
    except FrameError:
        pass


@st.composite
def signed_ack_bytes(draw: st.DrawFn) -> tuple[bytes, str, AckSigner]:
    """Arbitrary ack-shaped bodies carrying a VALID signature, to reach the checks after it."""
    box_id, key = draw(box_ids), draw(keys)
    kind = draw(st.integers(0, 255) | st.sampled_from(AckKind))
    reason = draw(st.integers(0, 0xFFFF) | st.sampled_from(RejectReason))
    n = draw(st.integers(0, 6))
    declared = draw(st.integers(0, 8) | st.just(n))
    ranges = [(draw(st.integers(0, U32)), draw(st.integers(0, U32))) for _ in range(n)]
    sha = draw(st.binary(max_size=40))
    body = ack_body(kind, reason, draw(transfer_ids), ranges, sha, key.key_id)
    body = body[:32] + struct.pack(">H", declared) + body[34:]
    return signed(body, box_id, key), box_id, key


@settings(max_examples=250, deadline=None)
@given(case=signed_ack_bytes())
def test_parse_ack_returns_or_raises_frame_error_when_an_authentic_body_is_malformed(
    case: tuple[bytes, str, AckSigner],
) -> None:
    data, box_id, key = case
    parse_ack_or_error(data, box_id, key)


@st.composite
def mutated_acks(draw: st.DrawFn) -> tuple[bytes, str, AckSigner]:
    box_id, key = draw(box_ids), draw(keys)
    data = draw(ack_frames()).encode(box_id, key)
    op = draw(st.sampled_from(["flip", "truncate", "extend"]))
    if op == "flip":
        data = flip_bit(data, draw(st.integers(0, len(data) * 8 - 1)))
    elif op == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    else:
        data = data + draw(st.binary(min_size=1, max_size=64))
    return data, box_id, key


@settings(max_examples=150, deadline=None)
@given(case=mutated_acks())
def test_parse_ack_raises_frame_or_ack_error_when_a_valid_ack_is_mutated(
    case: tuple[bytes, str, AckSigner],
) -> None:
    data, box_id, key = case
    with pytest.raises((FrameError, UnexpectedAckError)):
        parse_ack(data, box_id, ring(key))


# --- ranges -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(seqs=st.sets(st.integers(0, 200) | st.integers(0, U32 - 1), max_size=80))
def test_from_ranges_returns_the_same_set_when_given_to_ranges_output(seqs: set[int]) -> None:
    ranges = to_ranges(seqs)
    assert from_ranges(ranges) == seqs
    assert all(start < stop for start, stop in ranges)
    # canonical: sorted, disjoint and never adjacent, so the ranges are as few as possible
    assert all(prev[1] < nxt[0] for prev, nxt in zip(ranges, ranges[1:]))
    assert to_ranges(frozenset(seqs)) == ranges


@settings(max_examples=100, deadline=None)
@given(seqs=st.sets(st.integers(0, 500), max_size=60), box_id=box_ids)
def test_parse_ack_returns_the_staged_set_when_ranges_come_from_to_ranges(seqs: set[int], box_id: str) -> None:
    ack = AckFrame(AckKind.PROGRESS, bytes(16), to_ranges(seqs))
    assert from_ranges(parse_ack(ack.encode(box_id, SIGNER), box_id, KEYRING).ranges) == seqs


def test_to_ranges_returns_no_ranges_when_the_set_is_empty() -> None:
    assert to_ranges(set()) == ()
    assert from_ranges(()) == set()


def test_to_ranges_merges_runs_when_seqs_are_consecutive() -> None:
    assert to_ranges({0, 1, 2, 5, 7, 8}) == ((0, 3), (5, 6), (7, 9))


# --- encoders must not silently corrupt; the parser must enforce the documented format ----


_GOOD_CHUNK: dict[str, Any] = dict(
    transfer_id=bytes(16), seq=1, final=False, eph_public=bytes(32), wrapped_key=bytes(48), ciphertext=bytes(16)
)


@pytest.mark.parametrize(
    "field, value",
    [
        ("transfer_id", bytes(15)),
        ("transfer_id", bytes(17)),
        ("eph_public", bytes(31)),
        ("wrapped_key", bytes(49)),
    ],
    ids=["transfer-id-15", "transfer-id-17", "eph-public-31", "wrapped-key-49"],
)
def test_chunk_frame_raises_value_error_when_a_fixed_size_field_has_the_wrong_length(
    field: str, value: bytes
) -> None:
    """struct's ``16s`` pads short and truncates long values: the frame would carry other bytes
    than the caller gave, and the cloud would reject the object only much later. Building or
    encoding such a frame must fail at once."""
    with pytest.raises(ValueError):
        ChunkFrame(**{**_GOOD_CHUNK, field: value}).encode()


@pytest.mark.parametrize(
    "ack",
    [
        AckFrame(AckKind.PROGRESS, bytes(15)),
        AckFrame(AckKind.PROGRESS, bytes(16), sha256=bytes(32)),
        AckFrame(AckKind.PROGRESS, bytes(16), ranges=((5, 5),)),
        AckFrame(AckKind.PROGRESS, bytes(16), reason=RejectReason.INTEGRITY),
    ],
    ids=["short-transfer-id", "sha-on-progress", "empty-range", "reason-on-progress"],
)
def test_ack_encode_raises_value_error_when_the_ack_would_not_parse_back_equal(ack: AckFrame) -> None:
    """Every ack the cloud can encode must parse back to itself on the edge; these do not."""
    with pytest.raises(ValueError):
        ack.encode("b", SIGNER)


@pytest.mark.parametrize("kind", [AckKind.PROGRESS, AckKind.STORED], ids=lambda kind: kind.name)
def test_parse_ack_raises_frame_error_when_a_non_rejected_ack_carries_a_reason(kind: AckKind) -> None:
    """The format says 'reason RejectReason (0 unless REJECTED)'; the parser does not enforce it."""
    sha = bytes(32) if kind is AckKind.STORED else b""
    data = signed(ack_body(kind, RejectReason.INTEGRITY, bytes(16), [], sha))
    with pytest.raises(FrameError):
        parse_ack(data, "b", KEYRING)
