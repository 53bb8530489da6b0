"""Private keys on disk: raw bytes in 0600 files, created where they are used.

A small seam so that a TPM-backed store can replace it; keys never leave the
machine that made them, and never appear in TOML or logs.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from gateway.adapters import blobs
from gateway.core import envelope
from gateway.core.errors import ConfigError


def load_or_create_x25519(path: Path) -> bytes:
    """The raw 32-byte private key at ``path``, generated (0600) if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        blobs.write_atomic(path, os.urandom(32), mode=0o600)
    return read_x25519(path)


def read_x25519(path: Path) -> bytes:
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: key file must not be readable by group or others (chmod 600)")
    if len(raw) != 32:
        raise ConfigError(f"{path}: an X25519 private key is 32 raw bytes, found {len(raw)}")
    return raw


def public_b64(private_raw: bytes) -> str:
    return base64.b64encode(envelope.public_key_of(private_raw)).decode()
