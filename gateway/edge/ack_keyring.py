"""The box's trusted ack keys: ``<state_dir>/pki/ack_keys.json``, public keys only.

Written by ``mgw provision`` from the enrolment answer and after every certificate
renewal from the renewal answer; both arrive over TLS to the enrolment endpoint,
whose certificate must chain to the fleet CA pinned at provisioning. The edge reads
it at start and again after each renewal. It holds no secret, but whoever can write
it can make this box accept their acks, so it lives with the box's certificate
(0644, the service user's state directory).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gateway.adapters import blobs
from gateway.core.acksig import AckKeyring
from gateway.core.errors import ConfigError, KeyringError
from gateway.logs import MSG

log = logging.getLogger(__name__)
FILE_NAME = "ack_keys.json"
MAX_FILE_BYTES = 16 * 1024


def keyring_path(state_dir: Path) -> Path:
    return state_dir / "pki" / FILE_NAME


def load(path: Path) -> AckKeyring:
    """The keyring at ``path``; ``ConfigError`` saying how to get one if absent or unreadable."""
    keyring = read(path, "ack keyring", "; provision the box again")
    if keyring is None:
        raise ConfigError(f"{path}: no ack keyring; this box cannot verify the cloud's acknowledgements. "
                          "Provision it (`mgw provision`), which installs the keyring")
    return keyring


def read(path: Path, what: str, hint: str = "") -> AckKeyring | None:
    """A keyring file of this form (ack keys, command keys) at ``path``; None if there is none;
    ``ConfigError`` naming ``what`` if it is unreadable or not a keyring."""
    try:
        raw = path.read_bytes()[:MAX_FILE_BYTES + 1]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise KeyringError("file too large")
        return AckKeyring.from_doc(json.loads(raw))
    except (ValueError, KeyringError) as exc:
        raise ConfigError(f"{path}: not a valid {what} ({exc}){hint}") from exc


def save(path: Path, keyring: AckKeyring) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    blobs.write_atomic(path, json.dumps(keyring.to_doc(), indent=1).encode() + b"\n", mode=0o644)


def from_answer(answer: dict[str, Any]) -> AckKeyring:
    """The keyring an enrolment or renewal answer carries, or ``KeyringError``."""
    if "ack_keys" not in answer:
        raise KeyringError("the enrolment answer carries no ack keys (a cloud older than wire version 2)")
    return AckKeyring.from_doc(answer["ack_keys"])


def install_from_answer(path: Path, answer: dict[str, Any]) -> AckKeyring | None:
    """After a renewal: replace the keyring if the answer carries a valid one; else keep ours."""
    try:
        keyring = from_answer(answer)
    except KeyringError as exc:
        log.warning("ack keyring in the renewal answer refused; keeping the current one", extra={
            "MESSAGE_ID": MSG.ACK_KEYRING_REFUSED.value, "ERROR": str(exc)})
        return None
    try:
        if load(path) == keyring:
            return keyring
    except ConfigError:
        pass  # absent or unreadable: write it
    save(path, keyring)
    log.info("ack keyring updated", extra={
        "MESSAGE_ID": MSG.ACK_KEYRING_UPDATED.value, "KEY_IDS": ",".join(k.hex() for k in keyring.key_ids)})
    return keyring
