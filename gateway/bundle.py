"""Signed USB provisioning bundles: format, signing and verification.

A stick carries one file at its root, ``MGW-PROVISION.bundle`` (the udev
watcher runs ``mgw provision --bundle <mountpoint>/MGW-PROVISION.bundle``). It
is UTF-8 JSON::

    {"format": "mgw-provision-bundle/1",
     "key_id": "<first 16 hex of SHA-256 of the signer's raw Ed25519 public key>",
     "payload": "<base64 of the payload JSON bytes>",
     "signature": "<base64 Ed25519 signature over b'mgw-provision-bundle/1\\n' + payload bytes>"}

and the payload JSON is::

    {"enrolment": {"url": "https://...", "ca_fingerprint": "<hex>", "token": "mgw1-..."},
     "site": {"dicom": {...}, "site": {...}, "uplink": {...}},     # optional site tables (site_tables)
     "created_at": <unix s>, "expires_at": <unix s>}

The signature covers the payload bytes exactly as stored (no re-serialisation
before checking), and it is checked before any JSON parser sees a byte: the
outer document must be a flat object of exactly those four string members in
base64/hex characters, matched by one linear pattern, not parsed; only a
payload that verifies is parsed, and anything it holds that does not parse
(bad JSON, nesting too deep, wrong types) is a ``BundleRefusedError``, as is a
file on the stick that is a link, FIFO, device or folder, or larger than
``MAX_BUNDLE_BYTES`` (``read_file``: checked on the open descriptor, never more
read). A box trusts only the Ed25519 public keys in its signer
directory (``$CONFIGURATION_DIRECTORY/bundle-signers/*.pub``, each the base64 of
32 raw bytes), shipped in the image; ops keep the private key offline. The site
tables may only set what ``site_tables`` allows (the DICOM listener, the site's
time zone and hours, uplink, spool, worklist): identity, broker and keys come from
the enrolment itself, never from a stick.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway import site_tables
from gateway.adapters import safefs
from gateway.core.errors import ConfigError, PeerError
from gateway.logs import escape

FORMAT = "mgw-provision-bundle/1"
FILE_NAME = "MGW-PROVISION.bundle"
MAX_BUNDLE_BYTES = 256 * 1024
_MEMBER = rb'\s*"([a-z_]{1,16})"\s*:\s*"([A-Za-z0-9+/=._-]{0,%d})"\s*' % MAX_BUNDLE_BYTES
_ENVELOPE = re.compile(rb"\s*\{" + b",".join([_MEMBER] * 4) + rb"\}\s*")
_ENVELOPE_KEYS = {"format", "key_id", "payload", "signature"}
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_PARSE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError)


class BundleRefusedError(PeerError):
    """The bundle is unsigned, tampered, signed by an unknown key, expired or malformed."""


@dataclass(frozen=True)
class Bundle:
    url: str
    ca_fingerprint: str
    token: str
    site: dict[str, dict[str, Any]]
    created_at: float
    expires_at: float
    key_id: str


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _message(payload: bytes) -> bytes:
    return FORMAT.encode() + b"\n" + payload


def _check_site(site: Any) -> dict[str, dict[str, Any]]:
    try:
        return site_tables.check(site, "bundle")
    except ConfigError as exc:
        raise BundleRefusedError(escape(exc)) from exc


def sign(private_raw: bytes, url: str, ca_fingerprint: str, token: str, site: dict[str, dict[str, Any]],
         created_at: float, ttl_s: float) -> bytes:
    """The bundle file's bytes, signed with the Ed25519 private key ``private_raw`` (32 bytes)."""
    _check_site(site)
    payload = json.dumps({
        "enrolment": {"url": url, "ca_fingerprint": ca_fingerprint, "token": token},
        "site": site, "created_at": created_at, "expires_at": created_at + ttl_s,
    }, sort_keys=True).encode()
    key = Ed25519PrivateKey.from_private_bytes(private_raw)
    public = key.public_key().public_bytes_raw()
    doc = {"format": FORMAT, "key_id": key_id(public), "payload": base64.b64encode(payload).decode(),
           "signature": base64.b64encode(key.sign(_message(payload))).decode()}
    return (json.dumps(doc, indent=1) + "\n").encode()


def load_signers(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Trusted signer keys by key id, from ``*.pub`` files (base64 of 32 raw bytes)."""
    signers: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub")) if directory.is_dir() else []:
        try:
            raw = base64.b64decode(path.read_text().strip(), validate=True)
            signers[key_id(raw)] = Ed25519PublicKey.from_public_bytes(raw)
        except (ValueError, binascii.Error, OSError) as exc:
            raise ConfigError(f"{path}: not a base64 Ed25519 public key") from exc
    return signers


def read_file(path: Path, limit: int = MAX_BUNDLE_BYTES) -> bytes:
    """The bytes of the bundle file ``path`` (``BundleRefusedError`` if it is not a plain file of
    at most ``limit`` bytes): opened ``O_NOFOLLOW`` relative to a descriptor of its folder."""
    try:
        dir_fd = safefs.open_dir(path.parent)
    except OSError as exc:
        raise BundleRefusedError(f"cannot open the folder of the bundle: {exc.strerror}") from exc
    try:
        return safefs.read_regular(dir_fd, path.name, limit)
    except (safefs.UnsafeFileError, ValueError) as exc:
        raise BundleRefusedError(str(exc)) from exc
    finally:
        os.close(dir_fd)


def _envelope(raw: bytes) -> dict[str, str]:
    """The four members of the outer document, matched without a parser (no nesting, no escapes)."""
    match = _ENVELOPE.fullmatch(raw)
    if match is None:
        raise BundleRefusedError(f"not a {FORMAT} file (the outer document must be a flat object "
                                 f"of {', '.join(sorted(_ENVELOPE_KEYS))})")
    members = match.groups()
    doc = {members[i].decode(): members[i + 1].decode() for i in range(0, len(members), 2)}
    if set(doc) != _ENVELOPE_KEYS:
        raise BundleRefusedError(f"not a {FORMAT} file (members must be {', '.join(sorted(_ENVELOPE_KEYS))})")
    return doc


def verify(raw: bytes, signers: dict[str, Ed25519PublicKey], now: float) -> Bundle:
    """The bundle's contents, or ``BundleRefusedError`` saying why it is refused.

    The signature is checked before anything signed is parsed; the refusal reasons contain no
    byte of the bundle (a forged key id or field cannot reach a log line)."""
    if not signers:
        raise BundleRefusedError("no trusted bundle signers are installed on this box")
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleRefusedError("bundle is too large")
    doc = _envelope(raw)
    if doc["format"] != FORMAT:
        raise BundleRefusedError(f"not a {FORMAT} file")
    if not doc["signature"]:
        raise BundleRefusedError("bundle is unsigned")
    try:
        payload = base64.b64decode(doc["payload"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise BundleRefusedError("bundle is malformed: payload or signature is not base64") from exc
    kid = doc["key_id"]
    if not _KEY_ID.fullmatch(kid):
        raise BundleRefusedError("bundle is malformed: key_id is not 16 hex digits")
    signer = signers.get(kid)
    if signer is None:
        raise BundleRefusedError(f"bundle is signed by an unknown key ({kid})")
    try:
        signer.verify(signature, _message(payload))
    except InvalidSignature as exc:
        raise BundleRefusedError("bundle signature does not verify: it was altered or forged") from exc
    return _parse(payload, kid, now)


def _parse(payload: bytes, kid: str, now: float) -> Bundle:
    try:
        body = json.loads(payload)
        if not isinstance(body, dict) or not isinstance(body.get("enrolment"), dict):
            raise TypeError("payload is not a table with an enrolment table")
        enrol = body["enrolment"]
        bundle = Bundle(_text(enrol["url"]), _text(enrol["ca_fingerprint"]), _text(enrol["token"]),
                        _check_site(body.get("site", {})), _number(body["created_at"]), _number(body["expires_at"]),
                        kid)
    except _PARSE_ERRORS as exc:
        raise BundleRefusedError(f"signed bundle payload is malformed: {exc.__class__.__name__}") from exc
    if now > bundle.expires_at:
        raise BundleRefusedError("bundle expired: ask ops for a new one")
    return bundle


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError("times must be finite numbers")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.isprintable():
        raise TypeError("enrolment values must be printable strings")
    return value
