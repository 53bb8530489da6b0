"""The box's trusted command keys: ``<state_dir>/pki/command_keys.json``, public keys only.

The public half of the cloud's command key (current and, during a rotation, next), in the form
of ``ack_keys.json`` (``gateway.edge.ack_keyring``). Written by ``mgw provision`` from the
enrolment answer's ``command_keys`` and after every certificate renewal from the renewal answer;
both arrive over TLS from the enrolment endpoint pinned at provisioning. A box without the file
refuses every command (``no-command-key``). Whoever can write it can command this box, so it
lives with the box's certificate (0644, the service user's state directory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gateway.core.acksig import AckKeyring
from gateway.core.errors import ConfigError, KeyringError
from gateway.edge import ack_keyring
from gateway.logs import MSG

log = logging.getLogger(__name__)
FILE_NAME = "command_keys.json"
ANSWER_KEY = "command_keys"


def keyring_path(state_dir: Path) -> Path:
    return state_dir / "pki" / FILE_NAME


def load(path: Path) -> AckKeyring | None:
    """The keyring at ``path``, None if the box has none; ``ConfigError`` if it is unreadable."""
    return ack_keyring.read(path, "command keyring")


def save(path: Path, keyring: AckKeyring) -> None:
    ack_keyring.save(path, keyring)


def install_from_answer(path: Path, answer: dict[str, Any]) -> AckKeyring | None:
    """Save the keyring an enrolment or renewal answer carries, if it carries a valid one; an answer
    without one (a cloud before remote commands) keeps what the box has."""
    if ANSWER_KEY not in answer:
        return None
    try:
        keyring = AckKeyring.from_doc(answer[ANSWER_KEY])
    except (KeyringError, ValueError, TypeError, AttributeError) as exc:
        log.warning("command keyring in the answer refused; keeping the current one", extra={
            "MESSAGE_ID": MSG.COMMAND_KEYRING_REFUSED.value, "ERROR": str(exc)})
        return None
    try:
        if load(path) == keyring:
            return keyring
    except ConfigError:
        pass  # unreadable: write it
    save(path, keyring)
    log.info("command keyring updated", extra={
        "MESSAGE_ID": MSG.COMMAND_KEYRING_UPDATED.value, "KEY_IDS": ",".join(k.hex() for k in keyring.key_ids)})
    return keyring
