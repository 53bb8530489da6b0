"""The cloud's ack signing keys: the current key signs, the next one waits to reach every box.

Files, all raw 32-byte Ed25519 seeds, mode 0600 (``gateway.adapters.keystore``), never
copied to a box:

* ``cloud.ack_key_file`` (default ``keys/ack.key``): the current key. Every ingest worker
  and the fleet service sign with it; it is created on first use.
* ``ack.next.key`` beside it: the next key, made by ``mgw cloud ack-key stage``. The
  enrolment endpoint tells boxes both public keys (enrolment and every renewal), so a
  box trusts the next key before it signs anything.
* ``ack.retired.key``: only during ``promote``, which makes the next key current and
  overwrites the old one.

Rotation and its rules are in docs/protocol.md (Signed acknowledgements).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters import blobs, keystore
from gateway.core.acksig import AckKeyring, AckSigner
from gateway.core.errors import ConfigError


def next_path(current: Path) -> Path:
    return current.with_name(f"{current.stem}.next{current.suffix}")


def retired_path(current: Path) -> Path:
    return current.with_name(f"{current.stem}.retired{current.suffix}")


@dataclass(frozen=True)
class AckKeys:
    current: AckSigner
    next: AckSigner | None = None
    next_since: float | None = None  # when the next key was staged (its file's mtime)

    def keyring(self) -> AckKeyring:
        """What boxes must trust: the current key, then the next one if staged."""
        return AckKeyring((self.current.public, *((self.next.public,) if self.next else ())))


def load(current: Path, create: bool = True) -> AckKeys:
    """The current key (created if absent and ``create``) and the staged next key, if any."""
    if not current.exists() and not create:
        raise ConfigError(f"{current}: no ack signing key; create it with `mgw cloud ack-key create`")
    signer = AckSigner(keystore.load_or_create_ed25519(current))
    nxt = next_path(current)
    if not nxt.exists():
        return AckKeys(signer)
    return AckKeys(signer, AckSigner(keystore.read_ed25519(nxt)), nxt.stat().st_mtime)


def load_signer(current: Path) -> AckSigner:
    """The key a cloud service signs with (created if absent, as the envelope key is)."""
    return load(current).current


def keyring_of(current: Path) -> AckKeyring:
    """Read afresh on every call, so a staged key reaches the next box without a restart."""
    return load(current, create=False).keyring()


def stage(current: Path) -> AckKeys:
    """Make the next key (if none is staged yet); the current one keeps signing."""
    load(current, create=False)
    nxt = next_path(current)
    if not nxt.exists():
        keystore.load_or_create_ed25519(nxt)
    return load(current, create=False)


def promote(current: Path) -> AckKeys:
    """The next key becomes the current one; the old current key is overwritten and deleted.

    Crash safe: the old key is hard-linked aside first, so an interrupted promote leaves
    either the old state (run it again) or the new one with a leftover retired file.
    """
    keys = load(current, create=False)
    nxt, retired = next_path(current), retired_path(current)
    if keys.next is None:
        raise ConfigError(f"{nxt}: no next key is staged; run `mgw cloud ack-key stage` first")
    _drop_retired(current, retired)
    os.link(current, retired)
    blobs.adopt_atomic(nxt, current)
    keystore.erase_file(retired)
    return load(current, create=False)


def _drop_retired(current: Path, retired: Path) -> None:
    if not retired.exists():
        return
    if os.path.samefile(current, retired):  # a promote that stopped before the swap
        retired.unlink()
    else:
        keystore.erase_file(retired)


def describe(keys: AckKeys) -> list[dict[str, object]]:
    """For ``mgw cloud ack-key show``: role, key id, public key; never a private byte."""
    rows: list[dict[str, object]] = []
    for role, signer in (("current", keys.current), ("next", keys.next)):
        if signer is not None:
            rows.append({"role": role, "key_id": signer.key_id.hex(),
                         "public": base64.b64encode(signer.public).decode()})
    if keys.next_since is not None:
        rows[-1]["staged_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(keys.next_since))
    return rows
