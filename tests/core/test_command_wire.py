"""core.command_wire: a command runs only on its box, only from the cloud's command key, unaltered,
unexpired and never twice; its arguments never cross the broker in the clear."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import acksig, command_wire, schema
from gateway.core.command_wire import CommandRefused, Kind, Refusal
from gateway.core.errors import EnvelopeTamperedError, FrameError

SIGNER = acksig.AckSigner(bytes(range(32)))
KEYRING = acksig.AckKeyring((SIGNER.public,))
BOX_PRIVATE = X25519PrivateKey.generate().private_bytes_raw()
BOX_PUBLIC = X25519PrivateKey.from_private_bytes(BOX_PRIVATE).public_key().public_bytes_raw()
NOW = 1_790_000_000.0


def _seal(box: str = "ct-01", seq: int = 5, kind: Kind = Kind.RESEND, *, signer: acksig.AckSigner = SIGNER,
          public: bytes = BOX_PUBLIC, issued: float = NOW, lifetime: float = 3600.0,
          args: dict[str, object] | None = None, command_id: bytes | None = None) -> bytes:
    return command_wire.seal(
        box, public, signer, command_id=command_id or os.urandom(16), seq=seq, kind=kind,
        args={"accession": "ACC-张伟-001"} if args is None else args, issued_by="王工程师", issued_at=issued,
        expires_at=issued + lifetime, data_key=os.urandom(32),
        eph_private=X25519PrivateKey.generate().private_bytes_raw(), nonce=os.urandom(12))


def _refusal(frame: bytes, box: str = "ct-01", keyring: acksig.AckKeyring | None = KEYRING,
             now: float = NOW + 1, last_seq: int = 0) -> Refusal:
    with pytest.raises(CommandRefused) as caught:
        command_wire.check(frame, box, keyring, now, last_seq)
    return caught.value.refusal


def test_command_opens_to_its_kind_seq_arguments_and_issuer_when_it_is_the_boxs() -> None:
    cid = os.urandom(16)
    frame = _seal(command_id=cid)
    header = command_wire.check(frame, "ct-01", KEYRING, NOW + 1, last_seq=4)
    command = command_wire.open_frame(frame, header, "ct-01", BOX_PRIVATE)
    assert (command.id, command.seq, command.kind) == (cid.hex(), 5, Kind.RESEND)
    assert command.args == {"accession": "ACC-张伟-001"} and command.issued_by == "王工程师"
    assert header.expires_at == pytest.approx(NOW + 3600.0)
    assert "张伟".encode() not in frame and b"ACC-" not in frame and "王".encode() not in frame


def test_command_is_refused_with_its_reason_when_forged_foreign_expired_future_or_replayed() -> None:
    assert _refusal(_seal(signer=acksig.AckSigner(os.urandom(32)))) is Refusal.UNTRUSTED
    assert _refusal(_seal(), box="ct-02") is Refusal.UNTRUSTED  # the box id is in the signed bytes
    assert _refusal(_seal(), keyring=None) is Refusal.NO_KEY
    assert _refusal(_seal(lifetime=60.0), now=NOW + 61) is Refusal.EXPIRED
    assert _refusal(_seal(issued=NOW + 3600.0)) is Refusal.FUTURE
    assert _refusal(_seal(seq=5), last_seq=5) is Refusal.REPLAYED
    assert _refusal(_seal(seq=4), last_seq=5) is Refusal.REPLAYED
    assert _refusal(b"MGWK" + bytes(10)) is Refusal.MALFORMED
    assert _refusal(b"not a command at all" * 20) is Refusal.MALFORMED


def test_arguments_are_refused_as_tampered_when_opened_with_another_boxs_key() -> None:
    frame = _seal()
    header = command_wire.check(frame, "ct-01", KEYRING, NOW + 1, 0)
    other = X25519PrivateKey.generate().private_bytes_raw()
    with pytest.raises(CommandRefused) as caught:
        command_wire.open_frame(frame, header, "ct-01", other)
    assert caught.value.refusal is Refusal.TAMPERED and caught.value.command_id == header.command_id


def test_peek_names_the_command_without_trusting_it_when_a_redelivery_is_looked_up() -> None:
    cid = os.urandom(16)
    frame = _seal(seq=9, command_id=cid, signer=acksig.AckSigner(os.urandom(32)))
    header = command_wire.peek(frame)
    assert (header.command_id, header.seq, header.kind) == (cid.hex(), 9, Kind.RESEND)


def test_seal_refuses_values_out_of_range_when_the_cloud_would_issue_them() -> None:
    with pytest.raises(ValueError):
        _seal(seq=0)
    with pytest.raises(ValueError):
        _seal(lifetime=command_wire.MAX_LIFETIME_S + 1)
    with pytest.raises(ValueError):
        _seal(args={"config": "x" * (command_wire.MAX_ARGS_BYTES + 1)})


ONE_FRAME = _seal(seq=3)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(ONE_FRAME) - 1), st.integers(1, 255))
def test_any_altered_byte_is_refused_before_anything_runs_when_a_frame_is_tampered(at: int, flip: int) -> None:
    frame = bytearray(ONE_FRAME)
    frame[at] ^= flip
    with pytest.raises(CommandRefused) as caught:
        header = command_wire.check(bytes(frame), "ct-01", KEYRING, NOW + 1, 0)
        command_wire.open_frame(bytes(frame), header, "ct-01", BOX_PRIVATE)
    assert caught.value.refusal in (Refusal.MALFORMED, Refusal.UNTRUSTED)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_is_refused_as_a_command_and_never_raises_anything_else_when_it_arrives(junk: bytes) -> None:
    assert _refusal(b"MGWK\x01" + junk) in (Refusal.MALFORMED, Refusal.UNTRUSTED)


def test_blob_opens_only_for_its_box_and_command_when_the_cloud_reads_a_bundle() -> None:
    cloud_private = X25519PrivateKey.generate().private_bytes_raw()
    cloud_public = X25519PrivateKey.from_private_bytes(cloud_private).public_key().public_bytes_raw()
    cid = os.urandom(16).hex()
    plain = os.urandom(5000)
    sealed = command_wire.seal_blob(cloud_public, "ct-01", cid, plain, data_key=os.urandom(32),
                                    eph_private=X25519PrivateKey.generate().private_bytes_raw(), nonce=os.urandom(12))
    assert command_wire.open_blob(cloud_private, "ct-01", cid, sealed) == plain
    with pytest.raises(EnvelopeTamperedError):
        command_wire.open_blob(cloud_private, "ct-02", cid, sealed)
    with pytest.raises(EnvelopeTamperedError):
        command_wire.open_blob(cloud_private, "ct-01", os.urandom(16).hex(), sealed)
    with pytest.raises(FrameError):
        command_wire.open_blob(cloud_private, "ct-01", cid, sealed[:20])


def test_result_and_blob_part_parse_strictly_when_a_box_reports() -> None:
    result = schema.CommandResult(v=1, box_id="ct-01", state="succeeded", at=NOW, id="ab" * 16, seq=3, kind="echo",
                                  detail={"status": "0x0000", "rtt_ms": 12.5})
    assert schema.parse(schema.CommandResult, schema.encode(result), "command result") == result
    with pytest.raises(FrameError):
        schema.parse(schema.CommandResult, b'{"v":1,"box_id":"ct-01","state":"done","at":1}', "command result")
    with pytest.raises(FrameError):  # nested values are not a flat detail
        schema.parse(schema.CommandResult, b'{"v":1,"box_id":"ct-01","state":"failed","at":1,"detail":{"a":{"b":1}}}',
                     "command result")
    data = os.urandom(100)
    part = schema.CommandBlobPart(v=1, box_id="ct-01", id="cd" * 16, part=0, parts=1, size=100,
                                  sha256=hashlib.sha256(data).hexdigest(), data=data)
    assert schema.parse(schema.CommandBlobPart, schema.encode(part), "blob", schema.MAX_BLOB_PART_BYTES) == part
