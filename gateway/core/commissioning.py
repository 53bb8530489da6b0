"""The commissioning report's rules: its result, its signed upload's ack. Pure.

A report (``schema.CommissioningReport``) is PASSED only when no check failed and every manual
check was attested by the engineer (``confirmed``); a manual check left open makes it
INCOMPLETE; any failure makes it FAILED. ``skipped`` means "does not apply here" (no modality
SCP to echo) and does not hold the result back. The cloud recomputes the result and refuses a
report that claims another.

The box signs the report's canonical bytes with its own EC key (``adapters/keystore.py``); the
cloud answers on ``{prefix}/{box}/commission/ack`` with an Ed25519 ack (the same ack keys as
exam records, ``core/acksig.py``) over a label, the box id and the report id.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from gateway.core.acksig import KEY_ID_BYTES, SIGNATURE_BYTES, AckKeyring, AckSigner
from gateway.core.errors import FrameError

PASSED, FAILED, INCOMPLETE = "PASSED", "FAILED", "INCOMPLETE"
OK, FAIL, SKIPPED, MANUAL, CONFIRMED = "ok", "FAIL", "skipped", "manual", "confirmed"
ACK_VERSION = 1
ACK_LABEL = b"mgw/v1 commission-ack"
REPORT_KIND = "mgw-commissioning-report"


def result_of(outcomes: Iterable[str]) -> str:
    """FAILED if any check failed, else INCOMPLETE if a manual check is open, else PASSED."""
    seen = set(outcomes)
    if FAIL in seen:
        return FAILED
    if MANUAL in seen:
        return INCOMPLETE
    return PASSED


def ack_message(box_id: str, report_id: str) -> bytes:
    box, rid = box_id.encode("utf-8"), report_id.encode("ascii")
    if len(box) > 0xFFFF or len(rid) > 0xFF:
        raise ValueError("box id or report id too long")
    return ACK_LABEL + struct.pack(">H", len(box)) + box + struct.pack(">B", len(rid)) + rid


def sign_ack(signer: AckSigner, box_id: str, report_id: str) -> dict[str, Any]:
    signature = signer.sign(ack_message(box_id, report_id))
    return {"v": ACK_VERSION, "report_id": report_id, "key_id": signer.key_id.hex(), "sig": signature.hex()}


def verify_ack(doc: object, box_id: str, keyring: AckKeyring) -> str:
    """The report id a signed commissioning ack acknowledges, or ``FrameError``/``UnexpectedAckError``."""
    if not isinstance(doc, dict) or doc.get("v") != ACK_VERSION:
        raise FrameError(f"not a commissioning ack of version {ACK_VERSION}")
    report_id, kid, sig = (doc.get(k) for k in ("report_id", "key_id", "sig"))
    if not isinstance(report_id, str) or not isinstance(kid, str) or not isinstance(sig, str):
        raise FrameError("commissioning ack lacks report_id, key_id or sig")
    try:
        kid_raw, sig_raw = bytes.fromhex(kid), bytes.fromhex(sig)
        message = ack_message(box_id, report_id)
    except (ValueError, UnicodeEncodeError) as exc:
        raise FrameError("commissioning ack has a bad field") from exc
    if len(kid_raw) != KEY_ID_BYTES or len(sig_raw) != SIGNATURE_BYTES:
        raise FrameError("commissioning ack key id or signature has the wrong length")
    keyring.verify(kid_raw, message, sig_raw)
    return report_id
