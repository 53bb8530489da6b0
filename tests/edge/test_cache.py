"""The edge cache at rest (gateway/edge/cache.py) on real files: sealed and legacy plaintext blobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.core.errors import IntegrityError
from gateway.edge import cache

KEY = bytes(range(32))
ORIGINAL = os.urandom(3 * 1024 * 1024 + 17)  # several sealed segments and a short last one


def _read(path: Path, key: bytes | None) -> bytes:
    return b"".join(cache.read_blob(path, key))


def test_plaintext_blob_reads_back_sealed_under_mgwc_when_sealed_in_place(tmp_path: Path) -> None:
    legacy = tmp_path / "abc-CT.dcm"
    legacy.write_bytes(ORIGINAL)
    sealed = cache.seal_in_place(legacy, KEY)
    assert sealed == tmp_path / f"abc-CT.dcm{cache.SEALED_SUFFIX}"
    assert legacy.exists()  # the caller deletes it once nothing names it
    raw = sealed.read_bytes()
    assert ORIGINAL[:4096] not in raw and len(raw) > len(ORIGINAL)
    assert _read(sealed, KEY) == ORIGINAL
    assert _read(legacy, None) == ORIGINAL  # a plaintext blob stays readable without a key


def test_sealed_blob_is_refused_when_there_is_no_key_the_key_is_wrong_or_a_byte_changed(tmp_path: Path) -> None:
    path = tmp_path / f"x{cache.SEALED_SUFFIX}"
    cache.write_sealed(path, KEY, [ORIGINAL[:1000], ORIGINAL[1000:]])
    assert _read(path, KEY) == ORIGINAL
    with pytest.raises(IntegrityError, match="encryption at rest is off"):
        _read(path, None)
    with pytest.raises(IntegrityError):
        _read(path, bytes(32))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        _read(path, KEY)
    path.write_bytes(bytes(raw[: len(raw) // 3]))  # a torn write
    with pytest.raises(IntegrityError):
        _read(path, KEY)


def test_plaintext_files_lists_only_unsealed_files_when_a_directory_mixes_them(tmp_path: Path) -> None:
    assert cache.plaintext_files(tmp_path / "absent") == []
    (tmp_path / "b.dcm").write_bytes(b"plain")
    (tmp_path / "a.dcm").write_bytes(b"plain")
    cache.write_sealed(tmp_path / f"c.dcm{cache.SEALED_SUFFIX}", KEY, [b"sealed"])
    (tmp_path / ".a.dcm.1234.tmp").write_bytes(b"scratch of write_atomic")
    (tmp_path / "sub").mkdir()
    assert cache.plaintext_files(tmp_path) == [tmp_path / "a.dcm", tmp_path / "b.dcm"]
