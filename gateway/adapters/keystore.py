"""Private keys on disk: raw bytes in 0600 files, created where they are used.

A small seam so that a TPM-backed store can replace it; keys never leave the
machine that made them, and never appear in TOML or logs.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Protocol

from gateway.adapters import blobs
from gateway.core import envelope
from gateway.core.errors import ConfigError


def load_or_create_x25519(path: Path) -> bytes:
    """The raw 32-byte private key at ``path``, generated (0600) if absent."""
    return load_or_create_raw(path, 32)


def load_or_create_raw(path: Path, size: int) -> bytes:
    """The raw ``size``-byte secret at ``path`` (0600, owner only), generated if absent."""
    if not path.exists():  # two processes may race here: the first link wins, both read it
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = path.with_name(f".{path.name}.{os.getpid()}.new")
        blobs.write_atomic(fresh, os.urandom(size), mode=0o600)
        try:
            os.link(fresh, path)
            blobs.fsync_dir(path.parent)
        except FileExistsError:
            pass
        finally:
            fresh.unlink(missing_ok=True)
    return read_raw_secret(path, size)


def read_x25519(path: Path) -> bytes:
    """A raw 32-byte X25519 private key that only its owner may read."""
    return read_raw_secret(path, 32)


def load_or_create_ed25519(path: Path) -> bytes:
    """The raw 32-byte Ed25519 private key (seed) at ``path``, generated (0600) if absent."""
    return load_or_create_x25519(path)  # both are 32 random bytes; the type is the caller's


def read_ed25519(path: Path) -> bytes:
    """A raw 32-byte Ed25519 private key (seed) that only its owner may read."""
    return read_raw_secret(path, 32)


def erase_file(path: Path) -> None:
    """Overwrite a key file with random bytes, fsync, then delete it."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.write(os.urandom(size))
        fh.flush()
        os.fsync(fh.fileno())
    path.unlink()
    blobs.fsync_dir(path.parent)


def public_b64(private_raw: bytes) -> str:
    return base64.b64encode(envelope.public_key_of(private_raw)).decode()


class KeyStore(Protocol):
    """Where the box's private keys live. Keys are made inside and never exported.

    ``FileKeyStore`` keeps PEM files (0600) under ``$STATE_DIRECTORY/keys``; a TPM
    store would implement the same calls and return a PKCS#11/engine handle path.
    """

    def generate_ec(self, name: str) -> None: ...
    def csr(self, name: str, common_name: str) -> bytes: ...
    def sign(self, name: str, data: bytes) -> bytes: ...
    def path(self, name: str) -> Path: ...
    def exists(self, name: str) -> bool: ...
    def replace(self, src: str, dst: str) -> None: ...
    def secret(self, name: str, size: int = 32) -> bytes: ...
    def erase_all(self) -> int: ...


class FileKeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def generate_ec(self, name: str) -> None:
        """A new EC P-256 private key named ``name`` (PKCS#8 PEM, 0600), replacing none in place."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        blobs.write_atomic(self.path(name), pem, mode=0o600)

    def _load_ec(self, name: str):  # type: ignore[no-untyped-def]
        from cryptography.hazmat.primitives import serialization

        path = self.path(name)
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"{path}: key file must not be readable by group or others (chmod 600)")
            return serialization.load_pem_private_key(path.read_bytes(), None)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read key: {exc.strerror}") from exc

    def csr(self, name: str, common_name: str) -> bytes:
        """A PEM certificate signing request for key ``name``, subject CN ``common_name``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import NameOID

        key = self._load_ec(name)
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []))
               .sign(key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM)

    def sign(self, name: str, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature (DER) of ``data`` by key ``name``; the key never leaves."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = self._load_ec(name)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.path(name)}: not an EC key")
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    def replace(self, src: str, dst: str) -> None:
        """Atomically make key ``src`` the key ``dst`` (after a renewal)."""
        blobs.adopt_atomic(self.path(src), self.path(dst))

    def secret(self, name: str, size: int = 32) -> bytes:
        """A random symmetric key named ``name`` (raw bytes, 0600), created on first use."""
        path = self.directory / f"{name}.secret"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            blobs.write_atomic(path, os.urandom(size), mode=0o600)
        raw = path.read_bytes()
        if len(raw) != size:
            raise ConfigError(f"{path}: expected {size} bytes, found {len(raw)}")
        return raw

    def erase_all(self) -> int:
        """Overwrite and delete every key file (crypto-erase). Returns how many were erased."""
        if not self.directory.is_dir():
            return 0
        count = 0
        for path in sorted(self.directory.iterdir()):
            if path.is_file():
                erase_file(path)
                count += 1
        return count


def read_raw_secret(path: Path, size: int) -> bytes:
    """A raw key file of exactly ``size`` bytes that only its owner may read."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: key file must not be readable by group or others (chmod 600)")
    if len(raw) != size:
        raise ConfigError(f"{path}: expected {size} raw bytes, found {len(raw)}")
    return raw
