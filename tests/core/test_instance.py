"""One instance's identity (gateway.core.instance) and its one wire form, the sealed manifest.

Laws: an identity cannot change once made; any identity the wire can carry comes back from
the manifest codec unchanged, whatever its codec and item id; the manifest's keys are exactly
the identity's fields plus the manifest's own; ``verified`` passes exactly the identity's bytes
and refuses any other, and only after the last piece.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import IntegrityError
from gateway.core.instance import InstanceIdentity, verified
from gateway.core.transfer import Manifest

# What the wire carries (core.schema.ManifestV1): a UID of up to 128 characters without control
# characters, a size that fits a signed 64-bit integer, 64 lowercase hex digits.
uids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=128)
identities = st.builds(
    InstanceIdentity,
    sop_class_uid=uids, sop_instance_uid=uids, study_instance_uid=uids, series_instance_uid=uids,
    transfer_syntax_uid=uids, size=st.integers(0, 2**63 - 1),
    sha256=st.binary(min_size=32, max_size=32).map(bytes.hex),
)
IDENTITY_FIELDS = {f.name for f in dataclasses.fields(InstanceIdentity)}


def identity_of(data: bytes) -> InstanceIdentity:
    return InstanceIdentity(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        study_instance_uid="1.2.826.0.1.3680043.8.498.2", series_instance_uid="",
        transfer_syntax_uid="1.2.840.10008.1.2.1", size=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_identity_cannot_be_changed_when_it_was_made() -> None:
    identity = identity_of(b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.sha256 = "0" * 64  # type: ignore[misc]
    assert identity == identity_of(b"x") and hash(identity) == hash(identity_of(b"x"))


@settings(max_examples=300, deadline=None)
@given(identity=identities, codec=st.integers(0, 255), item_id=st.integers(-(2**63), 2**63 - 1))
def test_identity_comes_back_unchanged_when_it_round_trips_through_the_manifest_codec(
        identity: InstanceIdentity, codec: int, item_id: int) -> None:
    manifest = Manifest(identity, codec, item_id)
    decoded = Manifest.decode(manifest.encode())
    assert decoded.identity == identity
    assert (decoded.codec, decoded.item_id) == (codec, item_id)


@settings(max_examples=100, deadline=None)
@given(identity=identities)
def test_manifest_keys_are_the_identity_fields_and_the_manifests_own_when_encoded(identity: InstanceIdentity) -> None:
    wire = json.loads(Manifest(identity, 1, 7).encode())
    assert set(wire) == IDENTITY_FIELDS | {"v", "codec", "item_id"}
    assert {name: wire[name] for name in IDENTITY_FIELDS} == dataclasses.asdict(identity)
    assert (wire["v"], wire["codec"], wire["item_id"]) == (1, 1, 7)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=5))
def test_verified_passes_every_piece_through_when_the_bytes_are_the_identitys(data: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert list(verified(pieces, identity_of(data), "mismatch")) == pieces


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=2000), where=st.integers(0, 1999),
       change=st.sampled_from(["flip", "truncate", "append"]))
def test_verified_raises_integrity_error_after_the_last_piece_when_the_bytes_differ(
        data: bytes, where: int, change: str) -> None:
    where %= len(data)
    if change == "flip":
        other = data[:where] + bytes([data[where] ^ 1]) + data[where + 1:]
    elif change == "truncate":
        other = data[:where]
    else:
        other = data + b"\0"
    seen: list[bytes] = []
    with pytest.raises(IntegrityError, match="^blob 7 differs$"):
        for piece in verified([other[:where], other[where:]], identity_of(data), "blob 7 differs"):
            seen.append(piece)
    assert b"".join(seen) == other  # every piece was passed on before the refusal


def test_verified_raises_integrity_error_when_the_size_differs_under_the_same_hash() -> None:
    lying = dataclasses.replace(identity_of(b"abc"), size=4)
    with pytest.raises(IntegrityError):
        list(verified([b"abc"], lying, "size differs"))
