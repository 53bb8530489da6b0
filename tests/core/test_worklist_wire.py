"""core.worklist_wire: a worklist frame opens only on its box, only from the cloud's key, unaltered."""

from __future__ import annotations

import os
import zlib

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import acksig, schema, worklist_wire
from gateway.core.errors import EnvelopeTamperedError, FrameError, UnexpectedAckError

SIGNER = acksig.AckSigner(bytes(range(32)))
KEYRING = acksig.AckKeyring((SIGNER.public,))
BOX_PRIVATE = X25519PrivateKey.generate().private_bytes_raw()
BOX_PUBLIC = X25519PrivateKey.from_private_bytes(BOX_PRIVATE).public_key().public_bytes_raw()


def _entry(i: int, name: str = "张^伟") -> schema.WorklistUpsert:
    return schema.WorklistUpsert(entry=schema.WorklistEntry(
        accession_number=f"ACC{i}", patient_name=name, patient_id=f"PID-{i}", ref=os.urandom(16).hex(),
        step=schema.WorklistStep(step_id=f"S{i}", modality="CT", station_ae_title="CT1", start_date="20261203")))


def _update(box: str = "ct-01", seq: int = 7, n: int = 3) -> schema.WorklistUpdate:
    return schema.WorklistUpdate(v=1, box_id=box, seq=seq, ops=[_entry(i) for i in range(n)], replace=True)


def _seal(update: schema.WorklistUpdate, public: bytes = BOX_PUBLIC, signer: acksig.AckSigner = SIGNER) -> bytes:
    return worklist_wire.seal(update, public, signer, data_key=os.urandom(32),
                              eph_private=X25519PrivateKey.generate().private_bytes_raw(), nonce=os.urandom(12))


def test_frame_opens_to_the_same_update_when_it_is_the_boxs() -> None:
    update = _update()
    frame = _seal(update)
    assert worklist_wire.peek_seq(frame) == 7
    assert worklist_wire.open_frame(frame, "ct-01", BOX_PRIVATE, KEYRING) == update
    assert "张".encode() not in frame and b"PID-0" not in frame  # no patient data in the clear


def test_frame_is_refused_when_opened_by_another_box_or_with_another_key() -> None:
    frame = _seal(_update())
    with pytest.raises(UnexpectedAckError):  # the box id is in the signed bytes
        worklist_wire.open_frame(frame, "ct-02", BOX_PRIVATE, KEYRING)
    other = X25519PrivateKey.generate().private_bytes_raw()
    with pytest.raises(EnvelopeTamperedError):
        worklist_wire.open_frame(frame, "ct-01", other, KEYRING)


def test_frame_is_refused_when_signed_by_a_key_the_box_does_not_trust() -> None:
    forger = acksig.AckSigner(os.urandom(32))
    with pytest.raises(UnexpectedAckError):
        worklist_wire.open_frame(_seal(_update(), signer=forger), "ct-01", BOX_PRIVATE, KEYRING)


ONE_FRAME = _seal(_update(n=1))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_frame_is_refused_when_any_byte_is_altered(data: st.DataObject) -> None:
    frame = bytearray(ONE_FRAME)
    at = data.draw(st.integers(0, len(frame) - 1))
    frame[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises((FrameError, UnexpectedAckError, EnvelopeTamperedError)):
        worklist_wire.open_frame(bytes(frame), "ct-01", BOX_PRIVATE, KEYRING)


def test_frame_is_refused_when_it_is_truncated_or_too_large() -> None:
    frame = _seal(_update())
    for cut in (0, 10, worklist_wire.HEAD_BYTES, len(frame) - 1):
        with pytest.raises((FrameError, UnexpectedAckError)):
            worklist_wire.open_frame(frame[:cut], "ct-01", BOX_PRIVATE, KEYRING)
    with pytest.raises(FrameError, match="above"):
        worklist_wire.open_frame(frame + bytes(worklist_wire.MAX_FRAME_BYTES), "ct-01", BOX_PRIVATE, KEYRING)


def test_seal_refuses_when_the_worklist_does_not_fit_one_frame() -> None:
    ops = [_entry(i, name=os.urandom(40).hex()) for i in range(schema.MAX_WORKLIST_OPS)]
    with pytest.raises(ValueError, match="above the frame"):
        _seal(schema.WorklistUpdate(v=1, box_id="ct-01", seq=1, ops=ops))


def test_frame_is_refused_when_its_plaintext_inflates_past_the_limit() -> None:
    """A signed frame (the cloud's own bug) whose zlib expands past the bound is refused by bytes made."""
    bomb = zlib.compress(b" " * (schema.MAX_WORKLIST_BYTES + 10), 9)

    def packed(update: schema.WorklistUpdate) -> bytes:
        return bomb

    original = worklist_wire.encode_update
    worklist_wire.encode_update = packed  # type: ignore[assignment]
    try:
        frame = _seal(_update())
    finally:
        worklist_wire.encode_update = original  # type: ignore[assignment]
    with pytest.raises(FrameError, match="inflates above"):
        worklist_wire.open_frame(frame, "ct-01", BOX_PRIVATE, KEYRING)


def test_status_ack_verifies_when_signed_for_the_box_and_is_refused_otherwise() -> None:
    ref = os.urandom(16).hex()
    ack = worklist_wire.sign_status_ack(SIGNER, "ct-01", ref, "COMPLETED")
    assert worklist_wire.verify_status_ack(ack, "ct-01", KEYRING) == (ref, "COMPLETED")
    with pytest.raises(UnexpectedAckError):
        worklist_wire.verify_status_ack(ack, "ct-02", KEYRING)
    with pytest.raises(UnexpectedAckError):
        worklist_wire.verify_status_ack({**ack, "status": "DISCONTINUED"}, "ct-01", KEYRING)
    for bad in (None, [], {**ack, "v": 9}, {**ack, "sig": 5}, {**ack, "key_id": "zz"}, {**ack, "sig": "00"}):
        with pytest.raises(FrameError):
            worklist_wire.verify_status_ack(bad, "ct-01", KEYRING)


def test_worklist_status_parses_when_well_formed_and_refuses_patient_data_shaped_fields() -> None:
    good = b'{"v":1,"box_id":"ct-01","ref":"' + b"a" * 32 + b'","status":"COMPLETED","at":1.0}'
    assert schema.parse(schema.WorklistStatus, good, "status").status == "COMPLETED"
    for bad in (good.replace(b"COMPLETED", b"SCHEDULED"), good.replace(b'"at":1.0', b'"at":1.0,"name":"x"'),
                good.replace(b"a" * 32, b"ACC1")):
        with pytest.raises(FrameError):
            schema.parse(schema.WorklistStatus, bad, "status")
