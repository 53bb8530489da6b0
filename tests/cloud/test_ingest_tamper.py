"""Payloads an attacker on the broker path could forge: reordered, truncated, re-encrypted, replayed.

Each must be rejected by the cloud without an archive entry and without
blocking the genuine transfer (helpers from test_ingest: a real ingest worker
on a real SQLite archive).
"""

from __future__ import annotations

import logging

import pytest

from gateway.core.framing import AckKind, ChunkFrame, parse_chunk
from gateway.logs import MSG
from tests.cloud.test_ingest import (
    Cloud,
    KeyPair,
    Sealed,
    ack_of,
    make_data,
    make_keys,
    manifest_for,
    seal,
)
from tests.cloud.test_ingest import cloud as cloud  # noqa: F401 - fixtures
from tests.cloud.test_ingest import keys as keys  # noqa: F401
from tests.cloud.test_ingest import sealed as sealed  # noqa: F401


def _with(frame: bytes, **changes: object) -> bytes:
    parsed = parse_chunk(frame)
    fields = {k: getattr(parsed, k) for k in ("transfer_id", "seq", "final", "eph_public", "wrapped_key",
                                               "ciphertext")}
    fields.update(changes)
    return ChunkFrame(**fields).encode()  # type: ignore[arg-type]


def _assert_only_genuine_archived(cloud: Cloud, sealed: Sealed) -> None:
    acks = cloud.send_all(sealed.frames)
    assert ack_of(acks[-1], sealed).kind is AckKind.STORED
    assert [b"".join(cloud.archive.open(r)) for r in cloud.archive.instances()] == [sealed.data]


def test_chunk_is_rejected_when_reordered_into_another_position(cloud: Cloud, sealed: Sealed) -> None:  # noqa: F811
    assert len(sealed.frames) >= 3
    moved = _with(sealed.frames[1], seq=2)
    assert cloud.send(moved) == []
    assert cloud.ingest.counters()["chunks_rejected"] == 1
    _assert_only_genuine_archived(cloud, sealed)


def test_object_is_not_archived_when_truncated_by_marking_an_early_chunk_final(
        cloud: Cloud, sealed: Sealed) -> None:  # noqa: F811
    early_final = _with(sealed.frames[1], final=True)
    assert cloud.send(sealed.frames[0]) != []  # genuine first chunk: PROGRESS
    assert cloud.send(early_final) == []
    assert cloud.archive.count() == 0
    _assert_only_genuine_archived(cloud, sealed)


def test_chunk_is_rejected_when_its_bytes_are_truncated(cloud: Cloud, sealed: Sealed) -> None:  # noqa: F811
    frame = sealed.frames[0]
    for cut in (1, 16, len(frame) // 2, len(frame) - 1):
        assert cloud.send(frame[:cut]) == []
    assert cloud.ingest.counters()["chunks_rejected"] == 4
    _assert_only_genuine_archived(cloud, sealed)


def test_chunk_is_rejected_when_re_encrypted_with_another_key_under_the_same_transfer(
        cloud: Cloud, keys: KeyPair, sealed: Sealed) -> None:  # noqa: F811
    forged = seal(keys, make_data(16_000, seed=9), manifest_for(make_data(16_000, seed=9), n=9))
    assert cloud.send(sealed.frames[0]) != []  # the genuine key is bound to this transfer id
    hijack = _with(forged.frames[1], transfer_id=sealed.keys.transfer_id)
    assert cloud.send(hijack) == []
    assert cloud.ingest.counters()["chunks_rejected"] == 1
    _assert_only_genuine_archived(cloud, sealed)


def test_object_is_rejected_when_encrypted_to_another_cloud_key(cloud: Cloud) -> None:  # noqa: F811
    stranger = seal(make_keys(), make_data(6_000, seed=3))
    assert cloud.send_all(stranger.frames) == []
    assert cloud.archive.count() == 0 and cloud.staged_files() == []


def test_replayed_object_is_archived_once_when_sent_again_after_storing(
        cloud: Cloud, sealed: Sealed) -> None:  # noqa: F811
    _assert_only_genuine_archived(cloud, sealed)
    replay = cloud.send_all(sealed.frames)
    assert all(ack_of(a, sealed).kind is AckKind.STORED for a in replay)
    assert cloud.archive.count() == 1


def test_chunk_is_rejected_when_its_ciphertext_is_spliced_from_another_transfer(
        cloud: Cloud, keys: KeyPair, sealed: Sealed) -> None:  # noqa: F811
    other = seal(keys, make_data(16_000, seed=5), manifest_for(make_data(16_000, seed=5), n=5))
    spliced = _with(sealed.frames[1], ciphertext=parse_chunk(other.frames[1]).ciphertext)
    assert cloud.send(spliced) == []
    _assert_only_genuine_archived(cloud, sealed)


def test_v1_chunks_are_refused_with_the_version_reason_when_an_old_box_sends_them(
        cloud: Cloud, sealed: Sealed, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """A v1 box expects an HMAC ack, which the cloud no longer makes: no ack, a reason of its own.
    The frames are otherwise genuine (v1 and v2 chunks differ only in the version byte)."""
    caplog.set_level(logging.WARNING)
    old = [frame[:4] + b"\x01" + frame[5:] for frame in sealed.frames]
    assert cloud.send_all(old) == []
    counters = cloud.ingest.counters()
    assert counters["chunks_rejected_version"] == counters["chunks_rejected"] == len(old)
    assert cloud.archive.count() == 0 and cloud.staged_files() == []
    refusals = [r for r in caplog.records if r.__dict__.get("MESSAGE_ID") == MSG.CHUNK_REJECTED.value]
    assert len(refusals) == len(old)
    assert all(r.__dict__["REASON"] == "version" and "upgrade the box" in r.getMessage() for r in refusals)
    _assert_only_genuine_archived(cloud, sealed)  # the same object in v2 goes through
