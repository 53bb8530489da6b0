"""Properties of one object on the wire (gateway.core.transfer): seal_object on the edge, open_object in the cloud.

``open_object(seal_object(x)) == x`` for any payload and codec, and any change an attacker or a
broken broker can make (a flipped bit, a dropped, reordered, duplicated or foreign chunk, a
wrong key) is detected as ``EnvelopeTamperedError`` or ``FrameError``; a manifest that lies
about the payload is an ``IntegrityError``. Nothing wrong is ever yielded before the error.

Some tests seal hand-made plaintexts with a valid key (``seal_plaintexts``): that is what a
compromised or buggy box could send, and the cloud must still fail with our errors only.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections.abc import Iterable
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.codec import Codec
from gateway.core.envelope import public_key_of, seal_chunk
from gateway.core.errors import EnvelopeTamperedError, FrameError, IntegrityError
from gateway.core.framing import (
    CHUNK_HEADER_BYTES,
    FLAG_FINAL,
    MAX_FRAME_BYTES,
    MIN_FRAME_BYTES,
    ChunkFrame,
    chunk_aad,
    parse_chunk,
)
from gateway.core.instance import InstanceIdentity
from gateway.core.transfer import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ObjectKeys,
    open_manifest,
    open_object,
    payload_bytes_per_frame,
    seal_object,
    unwrap_key,
    verify_chunk,
)

BOX = "box-a"
CLOUD_PRIVATE = hashlib.sha256(b"test cloud private key").digest()
PIECE = payload_bytes_per_frame(MIN_FRAME_BYTES)  # 1024 payload bytes per minimal frame
NO_LIMIT = 1 << 40
CODECS = [Codec.IDENTITY, Codec.ZSTD]


def pseudo_random(n: int, seed: bytes = b"payload") -> bytes:
    """Incompressible but reproducible bytes."""
    return hashlib.shake_256(seed).digest(n)


def make_keys(seed: bytes, *, transfer_id: bytes | None = None, data_key: bytes | None = None) -> ObjectKeys:
    def h(label: bytes) -> bytes:
        return hashlib.sha256(label + seed).digest()

    return ObjectKeys.create(
        public_key_of(CLOUD_PRIVATE),
        transfer_id if transfer_id is not None else h(b"transfer")[:16],
        data_key if data_key is not None else h(b"data key"),
        h(b"ephemeral"),
    )


KEYS = make_keys(b"object a")


def manifest_for(payload: bytes, codec: Codec, /, **overrides: Any) -> Manifest:
    """The manifest of ``payload``; ``overrides`` may name the manifest's own fields (codec,
    item_id) and its identity's."""
    manifest: dict[str, Any] = dict(codec=int(codec), item_id=7)
    identity: dict[str, Any] = dict(
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        study_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    for name, value in overrides.items():
        (manifest if name in manifest else identity)[name] = value
    return Manifest(InstanceIdentity(**identity), **manifest)


def seal(
    payload: bytes,
    codec: Codec = Codec.IDENTITY,
    *,
    box_id: str = BOX,
    keys: ObjectKeys = KEYS,
    max_frame_bytes: int = MIN_FRAME_BYTES,
    pieces: Iterable[bytes] | None = None,
    **manifest_overrides: Any,
) -> list[bytes]:
    manifest = manifest_for(payload, codec, **manifest_overrides)
    source = [payload] if pieces is None else pieces
    return list(seal_object(box_id, keys, manifest, source, max_frame_bytes))


def seal_plaintexts(plaintexts: list[bytes], *, box_id: str = BOX, keys: ObjectKeys = KEYS) -> list[bytes]:
    """Seal arbitrary chunk plaintexts (0 = manifest) with a valid key, as a rogue box could."""
    frames = []
    for seq, plaintext in enumerate(plaintexts):
        final = seq == len(plaintexts) - 1
        header = ChunkFrame(keys.transfer_id, seq, final, keys.eph_public, keys.wrapped_key, b"").header()
        frames.append(header + seal_chunk(keys.data_key, seq, plaintext, chunk_aad(box_id, header)))
    return frames


def restore(
    frames: list[bytes], *, box_id: str = BOX, cloud_private: bytes = CLOUD_PRIVATE, max_object_bytes: int = NO_LIMIT
) -> tuple[Manifest, bytes]:
    """What an ingest worker does: parse, unwrap the key from the first chunk, open."""
    parsed = [parse_chunk(frame) for frame in frames]
    data_key = unwrap_key(cloud_private, parsed[0])
    it = open_object(box_id, data_key, parsed, max_object_bytes)
    manifest = next(it)
    assert isinstance(manifest, Manifest)
    out = b"".join(piece for piece in it if isinstance(piece, bytes))
    return manifest, out


def assert_detected(
    frames: list[bytes],
    original: bytes,
    errors: tuple[type[Exception], ...] = (EnvelopeTamperedError, FrameError),
    box_id: str = BOX,
) -> Exception:
    """Opening fails with one of ``errors``, and whatever was yielded before is a true prefix."""
    yielded = bytearray()
    with pytest.raises(errors) as info:
        parsed = [parse_chunk(frame) for frame in frames]
        data_key = unwrap_key(CLOUD_PRIVATE, parsed[0])
        for piece in open_object(box_id, data_key, parsed, NO_LIMIT):
            if isinstance(piece, bytes):
                yielded += piece
    assert original.startswith(bytes(yielded)), "wrong bytes were yielded before the error"
    return info.value


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    boundary = st.sampled_from([0, 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE - 1, 2 * PIECE, 2 * PIECE + 1])
    return draw(
        st.one_of(
            st.binary(max_size=3 * PIECE),
            (st.integers(0, 4 * PIECE + 64) | boundary).map(pseudo_random),
            st.builds(
                lambda unit, n: (unit * n)[: 6 * PIECE], st.binary(min_size=1, max_size=16), st.integers(0, 6000)
            ),
        )
    )


@st.composite
def split(draw: st.DrawFn, payload: bytes) -> list[bytes]:
    """Cut ``payload`` into the pieces the caller feeds seal_object (any boundaries, empty ones too)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=6)))
    bounds = [0, *cuts, len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:])]


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_open_returns_the_original_when_sealed_with_any_payload(codec: Codec, data: st.DataObject) -> None:
    payload = data.draw(payloads())
    frames = seal(payload, codec, pieces=data.draw(split(payload)))
    manifest, restored = restore(frames)
    assert restored == payload
    assert manifest == manifest_for(payload, codec)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("size", [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE, 3 * PIECE + 1])
def test_open_returns_the_original_when_payload_size_is_near_a_frame_boundary(codec: Codec, size: int) -> None:
    payload = pseudo_random(size)
    assert restore(seal(payload, codec))[1] == payload


def test_open_returns_the_original_when_the_compressed_stream_fills_its_last_frame_exactly() -> None:
    """Search sizes whose zstd stream is an exact multiple of a frame's payload (no short final frame)."""
    exact = []
    for size in [*range(PIECE - 40, PIECE + 8), *range(2 * PIECE - 40, 2 * PIECE + 8)]:
        frames = seal(pseudo_random(size), Codec.ZSTD)
        if len(frames[-1]) == MIN_FRAME_BYTES:
            exact.append(size)
            assert restore(frames)[1] == pseudo_random(size)
    assert len(exact) >= 2, "no size filled the last frame exactly; widen the search"


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@settings(max_examples=40, deadline=None)
@given(payload=payloads())
def test_seal_emits_numbered_full_frames_with_one_final_last_when_payload_spans_chunks(
    codec: Codec, payload: bytes
) -> None:
    raw = seal(payload, codec)
    frames = [parse_chunk(frame) for frame in raw]
    assert [frame.seq for frame in frames] == list(range(len(frames)))
    assert [frame.final for frame in frames] == [False] * (len(frames) - 1) + [True]
    assert len(frames) >= 2  # the manifest, then at least one (possibly empty) payload chunk
    assert {(f.transfer_id, f.eph_public, f.wrapped_key) for f in frames} == {
        (KEYS.transfer_id, KEYS.eph_public, KEYS.wrapped_key)
    }
    # payload frames but the last are exactly max_frame_bytes: the edge finds chunk n by arithmetic
    assert all(len(frame) == MIN_FRAME_BYTES for frame in raw[1:-1])
    assert all(len(frame) <= MIN_FRAME_BYTES for frame in raw)
    if codec is Codec.IDENTITY:
        assert sum(len(frame) - CHUNK_HEADER_BYTES - 16 for frame in raw[1:]) == len(payload)


def test_seal_emits_frames_up_to_the_largest_frame_when_max_frame_bytes_is_the_maximum() -> None:
    payload = pseudo_random(300_000)
    frames = seal(payload, max_frame_bytes=MAX_FRAME_BYTES)
    assert [len(frame) for frame in frames[1:-1]] == [MAX_FRAME_BYTES, MAX_FRAME_BYTES]
    assert restore(frames)[1] == payload


@pytest.mark.parametrize("max_frame_bytes", [MIN_FRAME_BYTES - 1, MAX_FRAME_BYTES + 1, 0])
def test_payload_bytes_per_frame_raises_value_error_when_frame_size_is_out_of_range(max_frame_bytes: int) -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        payload_bytes_per_frame(max_frame_bytes)


def test_seal_raises_value_error_when_the_manifest_does_not_fit_one_frame() -> None:
    with pytest.raises(ValueError, match="manifest too large"):
        seal(b"x", sop_instance_uid="1." * PIECE)


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(max_size=200))
def test_open_yields_the_manifest_first_when_an_object_opens(payload: bytes) -> None:
    parsed = [parse_chunk(frame) for frame in seal(payload)]
    first = next(open_object(BOX, KEYS.data_key, parsed, NO_LIMIT))
    assert first == manifest_for(payload, Codec.IDENTITY)
    assert open_manifest(BOX, parsed[0], KEYS.data_key) == first


# --- bit flips ----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_open_raises_when_any_single_bit_of_any_frame_is_flipped(codec: Codec) -> None:
    """Exhaustive over every bit of a small object: header, ciphertext and tag of every frame."""
    payload = b"small DICOM-ish payload \x00\x01\x02\x03"
    frames = seal(payload, codec)
    for index, frame in enumerate(frames):
        for bit in range(len(frame) * 8):
            mutated = list(frames)
            mutated[index] = flip_bit(frame, bit)
            assert_detected(mutated, payload)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_open_raises_when_one_bit_of_a_many_chunk_object_is_flipped(codec: Codec, data: st.DataObject) -> None:
    payload = data.draw(st.integers(PIECE, 4 * PIECE).map(pseudo_random))
    frames = seal(payload, codec)
    index = data.draw(st.integers(0, len(frames) - 1))
    bit = data.draw(st.integers(0, CHUNK_HEADER_BYTES * 8 - 1) | st.integers(0, len(frames[index]) * 8 - 1))
    frames[index] = flip_bit(frames[index], bit)
    assert_detected(frames, payload)


# --- dropped, reordered, duplicated and truncated chunks ----------------------------------

MULTI = pseudo_random(3 * PIECE + 100)  # manifest + 4 payload chunks with IDENTITY


def test_open_raises_frame_error_when_any_one_chunk_is_dropped() -> None:
    frames = seal(MULTI)
    assert len(frames) == 5
    for index in range(len(frames)):
        assert_detected(frames[:index] + frames[index + 1:], MULTI, (FrameError,))


def test_open_raises_frame_error_when_the_final_chunk_is_missing_at_any_length() -> None:
    frames = seal(MULTI)
    for keep in range(1, len(frames)):
        error = assert_detected(frames[:keep], MULTI, (FrameError,))
        assert "FINAL" in str(error)


def test_open_raises_frame_error_when_there_are_no_chunks() -> None:
    with pytest.raises(FrameError, match="no chunks"):
        next(open_object(BOX, KEYS.data_key, [], NO_LIMIT))


def test_open_raises_frame_error_when_two_neighbouring_chunks_are_swapped() -> None:
    frames = seal(MULTI)
    for index in range(len(frames) - 1):
        swapped = list(frames)
        swapped[index], swapped[index + 1] = swapped[index + 1], swapped[index]
        assert_detected(swapped, MULTI, (FrameError,))


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(5)))
def test_open_raises_frame_error_when_chunks_arrive_in_any_other_order(order: list[int]) -> None:
    frames = seal(MULTI)
    if order == sorted(order):
        order = [1, 0, 2, 3, 4]
    assert_detected([frames[i] for i in order], MULTI, (FrameError,))


def test_open_raises_frame_error_when_any_chunk_is_duplicated() -> None:
    frames = seal(MULTI)
    for index in range(len(frames)):
        duplicated = frames[: index + 1] + [frames[index]] + frames[index + 1:]
        assert_detected(duplicated, MULTI, (FrameError,))
    error = assert_detected(frames + [frames[-1]], MULTI, (FrameError,))
    assert "out of order" in str(error)


def test_open_raises_envelope_tampered_error_when_a_middle_chunk_is_relabelled_final() -> None:
    """Truncation by setting FINAL early: the flag is in the associated data, so it fails."""
    frames = seal(MULTI)
    forged = bytearray(frames[2])
    forged[5] |= FLAG_FINAL
    assert_detected(frames[:2] + [bytes(forged)], MULTI, (EnvelopeTamperedError,))


# --- chunks from elsewhere ----------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_open_raises_when_a_chunk_comes_from_another_object(codec: Codec) -> None:
    other_payload = pseudo_random(len(MULTI), seed=b"other object")
    mine = seal(MULTI, codec)
    theirs = seal(other_payload, codec, keys=make_keys(b"object b"))
    assert len(mine) == len(theirs)
    for index in range(1, len(mine)):
        mixed = list(mine)
        mixed[index] = theirs[index]
        assert_detected(mixed, MULTI, (EnvelopeTamperedError, FrameError))
    # and the other way round: their manifest (and so their key) first, then our chunks
    assert_detected([theirs[0], *mine[1:]], other_payload, (EnvelopeTamperedError, FrameError))


def test_open_raises_before_yielding_when_a_chunk_comes_from_another_transfer_with_the_same_key() -> None:
    """Defence in depth: if a box ever reused a data key, a chunk of another transfer carries a
    header (its own transfer id) that verifies under that key. Only a check that every chunk
    belongs to the manifest's transfer stops it; without one the foreign bytes are yielded and
    the object fails only at the final hash (or passes, when the foreign chunk is identical)."""
    keys_1 = make_keys(b"shared", transfer_id=b"\x01" * 16)
    keys_2 = make_keys(b"shared", transfer_id=b"\x02" * 16)
    assert keys_1.data_key == keys_2.data_key
    other_payload = pseudo_random(len(MULTI), seed=b"other transfer")
    first, second = seal(MULTI, keys=keys_1), seal(other_payload, keys=keys_2)
    for index in range(1, len(first)):
        mixed = list(first)
        mixed[index] = second[index]
        assert_detected(mixed, MULTI, (EnvelopeTamperedError, FrameError))


def test_open_raises_envelope_tampered_error_when_a_chunk_comes_from_another_box() -> None:
    for_a = seal(MULTI, box_id="box-a")
    for_b = seal(MULTI, box_id="box-b")
    for index in range(len(for_a)):
        mixed = list(for_a)
        mixed[index] = for_b[index]
        assert_detected(mixed, MULTI, (EnvelopeTamperedError,), box_id="box-a")


@settings(max_examples=30, deadline=None)
@given(box_a=st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True), payload=st.binary(max_size=300))
def test_open_raises_envelope_tampered_error_when_opened_for_another_box_id(box_a: str, payload: bytes) -> None:
    frames = seal(payload, box_id=box_a)
    assert_detected(frames, payload, (EnvelopeTamperedError,), box_id=box_a + "x")


def test_unwrap_key_raises_envelope_tampered_error_when_the_cloud_private_key_is_wrong() -> None:
    frame = parse_chunk(seal(b"payload")[0])
    with pytest.raises(EnvelopeTamperedError):
        unwrap_key(hashlib.sha256(b"another cloud").digest(), frame)
    assert unwrap_key(CLOUD_PRIVATE, frame) == KEYS.data_key


def test_verify_chunk_raises_envelope_tampered_error_when_the_data_key_is_wrong() -> None:
    frame = parse_chunk(seal(b"payload")[1])
    with pytest.raises(EnvelopeTamperedError):
        verify_chunk(BOX, frame, make_keys(b"object b").data_key)


# --- manifests that lie, and rogue streams ------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_open_raises_integrity_error_when_the_manifest_hash_is_wrong(codec: Codec) -> None:
    frames = seal(MULTI, codec, sha256=hashlib.sha256(b"something else").hexdigest())
    assert_detected(frames, MULTI, (IntegrityError,))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("delta", [1, 1000])
def test_open_raises_integrity_error_when_the_manifest_size_is_larger_than_the_payload(
    codec: Codec, delta: int
) -> None:
    frames = seal(MULTI, codec, size=len(MULTI) + delta)
    assert_detected(frames, MULTI, (IntegrityError,))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@pytest.mark.parametrize("size", [0, 1, len(MULTI) - 1])
def test_open_raises_integrity_error_when_the_manifest_size_is_smaller_than_the_payload(
    codec: Codec, size: int
) -> None:
    frames = seal(MULTI, codec, size=size)
    error = assert_detected(frames, MULTI, (IntegrityError,))
    assert "expands beyond" in str(error)


def test_open_raises_integrity_error_when_the_declared_size_is_above_the_limit() -> None:
    frames = [parse_chunk(frame) for frame in seal(MULTI)]
    with pytest.raises(IntegrityError, match="above the limit"):
        next(open_object(BOX, KEYS.data_key, frames, len(MULTI) - 1))
    assert restore(seal(MULTI), max_object_bytes=len(MULTI))[1] == MULTI


def test_open_raises_integrity_error_when_a_zstd_bomb_declares_a_small_size() -> None:
    zeros = (bytes(1 << 20) for _ in range(8))  # 8 MiB of zeros compress to a few hundred bytes
    frames = seal(bytes(1000), Codec.ZSTD, pieces=zeros)
    assert len(frames) == 2
    error = assert_detected(frames, bytes(1000), (IntegrityError,))
    assert "expands beyond the declared 1000 bytes" in str(error)


def test_open_keeps_memory_bounded_when_one_chunk_decompresses_to_far_more_than_declared() -> None:
    """A single 128 KiB chunk of zstd can expand ~30000-fold (RLE blocks). The size check in
    ``Decompressor.feed`` runs only after zstd has produced the whole chunk's output, so a
    rogue box makes the cloud allocate gigabytes before IntegrityError. Here 64 MiB must never
    be materialised for an object that declares 1000 bytes."""
    zeros = (bytes(1 << 20) for _ in range(64))
    frames = seal(bytes(1000), Codec.ZSTD, pieces=zeros, max_frame_bytes=MAX_FRAME_BYTES)
    parsed = [parse_chunk(frame) for frame in frames]
    assert len(parsed) == 2  # the manifest and ONE payload chunk
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError):
            for _ in open_object(BOX, KEYS.data_key, parsed, NO_LIMIT):
                pass
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 8 << 20, f"opening allocated {peak_bytes >> 20} MiB for a 1000-byte object"


def _manifest_json(**overrides: Any) -> bytes:
    return json.dumps({**json.loads(manifest_for(b"", Codec.IDENTITY).encode()), **overrides}).encode()


@pytest.mark.parametrize(
    "manifest",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"1e999999",
        _manifest_json(v=2),
        _manifest_json(v=True),
        _manifest_json(size=-1),
        _manifest_json(size="12"),
        _manifest_json(size=True),
        _manifest_json(sha256="00"),
        _manifest_json(codec=1.0),
        _manifest_json(extra="x"),
        b'{"v": 1}',
        b'{"v":1,"size":' + b"9" * 5000 + b"}",
    ],
    ids=lambda m: m[:24].decode("latin-1"),
)
def test_open_raises_frame_error_when_an_authentic_manifest_is_malformed(manifest: bytes) -> None:
    frames = seal_plaintexts([manifest, b""])
    assert_detected(frames, b"", (FrameError,))


def test_open_raises_frame_error_when_an_authentic_manifest_is_deeply_nested_json() -> None:
    """``json.loads`` raises RecursionError (not ValueError) on deep nesting, which escapes
    Manifest.decode as a non-GatewayError: the ingest worker would treat it as a bug, exit, and
    be handed the same message again. 5000 bytes fit easily in one frame."""
    frames = seal_plaintexts([b"[" * 5000, b""])
    assert_detected(frames, b"", (FrameError,))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
).map(lambda value: json.dumps(value).encode()))
def test_manifest_decode_returns_or_raises_frame_error_when_given_arbitrary_bytes(data: bytes) -> None:
    try:
        manifest = Manifest.decode(data)
    except FrameError:
        return
    assert Manifest.decode(manifest.encode()) == manifest


@settings(max_examples=100, deadline=None)
@given(
    codec=st.integers(0, 255),
    size=st.integers(0, 2**63 - 1),
    uid=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=64),
    item_id=st.integers(-(2**63), 2**63 - 1),
)
def test_manifest_decode_returns_the_same_manifest_when_given_its_encoding(
    codec: int, size: int, uid: str, item_id: int
) -> None:
    manifest = manifest_for(b"", Codec.IDENTITY, codec=codec, size=size, sop_instance_uid=uid, item_id=item_id)
    assert Manifest.decode(manifest.encode()) == manifest
    assert len(manifest_for(b"", Codec.IDENTITY).encode()) < MAX_MANIFEST_BYTES


@pytest.mark.parametrize("codec_id", [4, 255, -1])
def test_open_raises_frame_error_when_the_manifest_names_an_unknown_codec(codec_id: int) -> None:
    frames = seal_plaintexts([manifest_for(b"", Codec.IDENTITY, codec=codec_id).encode(), b""])
    error = assert_detected(frames, b"", (FrameError,))
    assert "codec" in str(error)


def test_open_raises_integrity_error_when_an_authentic_zstd_stream_is_corrupt() -> None:
    payload = pseudo_random(500)
    stream = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(payload))
    stream[-2] ^= 0xFF  # the checksum
    manifest = manifest_for(payload, Codec.ZSTD).encode()
    assert_detected(seal_plaintexts([manifest, bytes(stream)]), payload, (IntegrityError,))
    assert_detected(seal_plaintexts([manifest, b"\x28\xb5\x2f\xfd" + bytes(20)]), payload, (IntegrityError,))


def test_open_raises_integrity_error_when_an_authentic_zstd_stream_is_truncated() -> None:
    payload = pseudo_random(500)
    stream = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    manifest = manifest_for(payload, Codec.ZSTD).encode()
    checksum_bytes = 4  # a cut there loses no content: our own SHA-256 still vouches for the output
    for cut in (0, 1, 4, 10, len(stream) // 2, len(stream) - checksum_bytes - 1):
        assert_detected(seal_plaintexts([manifest, stream[:cut]]), payload, (IntegrityError,))


def test_open_returns_the_original_when_an_authentic_stream_is_sealed_by_hand() -> None:
    """The rogue-box helper itself seals like seal_object, so the tests above test what they claim."""
    payload = pseudo_random(100)
    manifest = manifest_for(payload, Codec.IDENTITY).encode()
    assert seal_plaintexts([manifest, payload]) == seal(payload)
    assert restore(seal_plaintexts([manifest, payload[:60], payload[60:]]))[1] == payload
