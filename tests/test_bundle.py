"""The signed provisioning bundle: what verifies, and every way a bundle is refused."""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import bundle
from gateway.core.errors import GatewayError

NOW = 1_800_000_000.0
SITE = {"dicom": {"ae_title": "CT01", "allowed_calling_aets": ["SCANNER"]}}


def _key() -> tuple[bytes, dict[str, object]]:
    raw = os.urandom(32)
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key()
    return raw, {bundle.key_id(public.public_bytes_raw()): public}


def _signed(raw: bytes, site: dict = SITE, ttl_s: float = 3600) -> bytes:
    return bundle.sign(raw, "https://cloud.example:8443", "ab" * 32, "mgw1-secret", site, NOW, ttl_s)


def test_bundle_verifies_when_signed_by_a_trusted_key() -> None:
    raw, signers = _key()
    got = bundle.verify(_signed(raw), signers, NOW + 10)
    assert (got.url, got.token, got.site) == ("https://cloud.example:8443", "mgw1-secret", SITE)


def test_bundle_refused_when_unsigned() -> None:
    raw, signers = _key()
    doc = json.loads(_signed(raw))
    doc["signature"] = ""
    with pytest.raises(bundle.BundleRefusedError, match="unsigned"):
        bundle.verify(json.dumps(doc).encode(), signers, NOW)


def test_bundle_refused_when_its_payload_is_tampered() -> None:
    raw, signers = _key()
    doc = json.loads(_signed(raw))
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["enrolment"]["url"] = "https://attacker.example"
    doc["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(bundle.BundleRefusedError, match="altered or forged"):
        bundle.verify(json.dumps(doc).encode(), signers, NOW)


def test_bundle_refused_when_signed_by_an_unknown_key() -> None:
    raw, _ = _key()
    _, other = _key()
    with pytest.raises(bundle.BundleRefusedError, match="unknown key"):
        bundle.verify(_signed(raw), other, NOW)


def test_bundle_refused_when_expired() -> None:
    raw, signers = _key()
    with pytest.raises(bundle.BundleRefusedError, match="expired"):
        bundle.verify(_signed(raw, ttl_s=60), signers, NOW + 61)


def test_bundle_refused_when_it_sets_the_box_identity() -> None:
    raw, _ = _key()
    with pytest.raises(bundle.BundleRefusedError, match=r"may not set \[mqtt\]"):
        _signed(raw, site={"mqtt": {"host": "attacker.example"}})


def test_bundle_refused_when_no_signer_is_installed() -> None:
    raw, _ = _key()
    with pytest.raises(bundle.BundleRefusedError, match="no trusted"):
        bundle.verify(_signed(raw), {}, NOW)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=255))
def test_bundle_verifies_or_is_refused_when_bytes_are_arbitrary_or_flipped(junk: bytes, pos: int, bit: int) -> None:
    raw, signers = _key()
    for candidate in (junk, _flip(_signed(raw), pos, bit)):
        try:
            bundle.verify(candidate, signers, NOW)
        except GatewayError:
            pass


def _flip(data: bytes, pos: int, value: int) -> bytes:
    pos %= len(data)
    return data[:pos] + bytes([data[pos] ^ (value or 1)]) + data[pos + 1:]
