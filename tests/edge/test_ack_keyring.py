"""The box's trusted ack keys (gateway/edge/ack_keyring.py) on a real state directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.core.acksig import AckKeyring, AckSigner
from gateway.core.errors import ConfigError
from gateway.edge import ack_keyring

CURRENT = AckSigner(bytes(range(32)))
NEXT = AckSigner(bytes(range(1, 33)))


def test_missing_oversized_or_garbage_keyring_is_refused_with_how_to_fix_it_when_loaded(tmp_path: Path) -> None:
    path = ack_keyring.keyring_path(tmp_path)
    with pytest.raises(ConfigError, match="mgw provision"):
        ack_keyring.load(path)
    path.parent.mkdir(parents=True)
    for raw in (b"{", b"[]", json.dumps({"v": 99, "keys": []}).encode(),
                b" " * (ack_keyring.MAX_FILE_BYTES + 1)):
        path.write_bytes(raw)
        with pytest.raises(ConfigError, match="provision the box again"):
            ack_keyring.load(path)
    doc = AckKeyring((CURRENT.public,)).to_doc()
    doc["keys"][0]["id"] = "00" * 8  # an id that is not its key's
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError):
        ack_keyring.load(path)


def test_saved_keyring_loads_back_equal_and_readable_by_all_when_written(tmp_path: Path) -> None:
    path = ack_keyring.keyring_path(tmp_path)
    keyring = AckKeyring((CURRENT.public, NEXT.public))
    ack_keyring.save(path, keyring)
    assert ack_keyring.load(path) == keyring
    assert path.stat().st_mode & 0o777 == 0o644  # public keys: no secret, but only the service writes it


def test_renewal_answer_replaces_the_keyring_only_when_it_carries_a_valid_different_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = ack_keyring.keyring_path(tmp_path)
    current = AckKeyring((CURRENT.public,))
    ack_keyring.save(path, current)
    caplog.set_level(logging.INFO, logger="gateway.edge.ack_keyring")

    assert ack_keyring.install_from_answer(path, {"certificate": "..."}) is None  # an older cloud: keep ours
    assert ack_keyring.install_from_answer(path, {"ack_keys": {"v": 1, "keys": "nonsense"}}) is None
    assert ack_keyring.load(path) == current
    assert caplog.text.count("ack keyring in the renewal answer refused") == 2

    before = path.stat().st_ino
    assert ack_keyring.install_from_answer(path, {"ack_keys": current.to_doc()}) == current
    assert path.stat().st_ino == before  # the same keyring: not rewritten

    rotated = AckKeyring((CURRENT.public, NEXT.public))
    assert ack_keyring.install_from_answer(path, {"ack_keys": rotated.to_doc()}) == rotated
    assert ack_keyring.load(path) == rotated and "ack keyring updated" in caplog.text
