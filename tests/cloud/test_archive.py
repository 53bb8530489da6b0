"""The archive and its index (gateway.cloud.archive.store) against a real SQLite file and real files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.adapters import keystore
from gateway.cloud.archive.index import MIGRATIONS
from gateway.cloud.archive.store import (
    SCRATCH_DIR,
    Archive,
    StoreOutcome,
    TransferState,
    sanitise_uid,
)
from gateway.core import atrest
from gateway.core.errors import ConfigError, IntegrityError, StorageError
from gateway.core.framing import RejectReason
from gateway.core.instance import InstanceIdentity
from tests.backends import Backend

BOX = "box-1"
TID = bytes(range(16))
TID2 = bytes(range(16, 32))


def identity_for(data: bytes, sop: str = "1.2.3.4.5", sha256: str | None = None) -> InstanceIdentity:
    return InstanceIdentity(size=len(data), sha256=sha256 or hashlib.sha256(data).hexdigest(),
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.7", sop_instance_uid=sop,
                            study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                            transfer_syntax_uid="1.2.840.10008.1.2.1")


@pytest.fixture
def archive(tmp_path: Path, backend: Backend) -> Iterator[Archive]:
    a = backend.archive(tmp_path)
    yield a
    a.close()


def scratch_files(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "archive" / SCRATCH_DIR).iterdir())


def unsealed(archive: Archive, path: Path) -> bytes:
    """A sealed archive file opened with the archive key, whatever its index row says."""
    return b"".join(atrest.open_pieces(keystore.read_raw_secret(archive.key_file, 32), [path.read_bytes()]))


def test_index_is_migrated_once_and_uses_wal_when_opened_twice(tmp_path: Path, archive: Archive) -> None:
    again = Archive(tmp_path / "archive", tmp_path / "index.db")

    assert archive.schema_version() == again.schema_version() == len(MIGRATIONS)
    with sqlite3.connect(tmp_path / "index.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"instances", "transfers"} <= tables
    again.close()


def test_open_fails_with_storage_error_when_index_is_newer_than_the_software(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "index.db") as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")

    with pytest.raises(StorageError, match="newer"):
        Archive(tmp_path / "archive", tmp_path / "index.db")


def test_open_fails_with_storage_error_when_index_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "index.db").mkdir()

    with pytest.raises(StorageError):
        Archive(tmp_path / "archive", tmp_path / "index.db")


def test_object_is_filed_under_study_and_series_when_stored(tmp_path: Path, archive: Archive) -> None:
    data = b"DICM object bytes"
    identity = identity_for(data)

    result = archive.store(identity, archive.receive([data[:4], data[4:]]), BOX, TID, 3, 1000.0)

    assert result.outcome is StoreOutcome.ARCHIVED
    assert result.instance.identity == identity
    assert result.instance.path == tmp_path / "archive/1.2.3/1.2.3.4" / f"1.2.3.4.5_{identity.sha256[:12]}.mgwc"
    assert b"".join(archive.open(result.instance)) == data
    assert archive.instances() == [result.instance]
    record = archive.lookup_transfer(BOX, TID)
    assert record is not None
    assert (record.state, record.sha256, record.chunks, record.updated_at) == (
        TransferState.STORED, identity.sha256, 3, 1000.0)
    assert scratch_files(tmp_path) == []


def test_store_keeps_one_copy_when_the_same_object_is_stored_twice(tmp_path: Path, archive: Archive) -> None:
    data = b"same object"
    first = archive.store(identity_for(data), archive.receive([data]), BOX, TID, 2, 1.0)
    second = archive.store(identity_for(data), archive.receive([data]), "box-2", TID2, 2, 2.0)

    assert (first.outcome, second.outcome) == (StoreOutcome.ARCHIVED, StoreOutcome.DUPLICATE)
    assert second.instance == first.instance
    assert archive.count() == 1
    assert scratch_files(tmp_path) == []
    stored = archive.lookup_transfer("box-2", TID2)
    assert stored is not None and stored.state is TransferState.STORED


def test_store_keeps_both_when_same_sop_instance_has_different_content(archive: Archive) -> None:
    a, b = b"version one", b"version two"
    archive.store(identity_for(a), archive.receive([a]), BOX, TID, 2, 1.0)
    archive.store(identity_for(b), archive.receive([b]), BOX, TID2, 2, 2.0)

    assert sorted(b"".join(archive.open(r)) for r in archive.instances()) == [a, b]


def test_the_version_its_box_received_last_is_current_when_versions_arrive_out_of_order(archive: Archive) -> None:
    """Versions 1 and 3 (spool rows 10 and 30) arrive before version 2 (row 20): 3 stays current;
    then another box sends a version, which, archived last, becomes current."""
    tids = [bytes([n]) * 16 for n in range(4)]
    for n, (data, item) in enumerate(((b"v1", 10), (b"v3", 30), (b"v2", 20))):
        archive.store(identity_for(data), archive.receive([data]), BOX, tids[n], 2, float(n), edge_item_id=item)
    versions = archive.versions("1.2.3.4.5")
    assert [b"".join(archive.open(v)) for v in versions] == [b"v1", b"v3", b"v2"]
    assert [v.superseded_at is None for v in versions] == [False, True, False]
    archive.store(identity_for(b"other box"), archive.receive([b"other box"]), "box-2", tids[3], 2, 9.0,
                  edge_item_id=1)
    current = [v for v in archive.versions("1.2.3.4.5") if v.superseded_at is None]
    assert [(c.box_id, c.edge_item_id) for c in current] == [("box-2", 1)]
    again = archive.store(identity_for(b"v3"), archive.receive([b"v3"]), BOX, tids[1], 2, 10.0, edge_item_id=30)
    assert again.outcome.name == "DUPLICATE" and len(archive.versions("1.2.3.4.5")) == 4


def test_store_uses_the_full_hash_name_when_the_short_name_is_taken(archive: Archive) -> None:
    prefix = "ab" * 6
    one = archive.store(identity_for(b"1", sha256=prefix + "0" * 52), archive.receive([b"1"]), BOX, TID, 2, 1.0)
    two = archive.store(identity_for(b"2", sha256=prefix + "1" * 52), archive.receive([b"2"]), BOX, TID2, 2, 2.0)

    assert one.instance.path.name == f"1.2.3.4.5_{prefix}.mgwc"
    assert two.instance.path.name == f"1.2.3.4.5_{prefix + '1' * 52}.mgwc"
    assert (unsealed(archive, one.instance.path), unsealed(archive, two.instance.path)) == (b"1", b"2")


def test_store_fails_and_leaves_nothing_when_the_study_folder_cannot_be_made(tmp_path: Path, archive: Archive) -> None:
    (tmp_path / "archive" / "1.2.3").write_bytes(b"in the way")
    scratch = archive.receive([b"data"])

    with pytest.raises(StorageError):
        archive.store(identity_for(b"data"), scratch, BOX, TID, 2, 1.0)
    assert archive.count() == 0
    assert scratch_files(tmp_path) == []
    assert archive.lookup_transfer(BOX, TID) is None


def test_receive_leaves_no_file_when_the_source_fails(tmp_path: Path, archive: Archive) -> None:
    def pieces() -> Iterator[bytes]:
        yield b"partial"
        raise IntegrityError("hash mismatch")

    with pytest.raises(IntegrityError):
        archive.receive(pieces())
    assert scratch_files(tmp_path) == []


def test_terminal_state_is_kept_when_a_later_reject_or_staging_arrives(archive: Archive) -> None:
    archive.store(identity_for(b"x"), archive.receive([b"x"]), BOX, TID, 2, 1.0)
    archive.note_staging(BOX, TID2, 0, 1.0)
    archive.note_staging(BOX, TID2, 5, 2.0)

    after_reject = archive.reject(BOX, TID, RejectReason.INTEGRITY, 2, 3.0)
    archive.note_staging(BOX, TID, 9, 4.0)
    staging = archive.lookup_transfer(BOX, TID2)

    assert (after_reject.state, after_reject.reason) == (TransferState.STORED, RejectReason.NONE)
    stored = archive.lookup_transfer(BOX, TID)
    assert stored is not None and (stored.state, stored.chunks) == (TransferState.STORED, 2)
    assert staging is not None and (staging.state, staging.chunks) == (TransferState.STAGING, 5)


def test_forget_staging_drops_the_row_when_the_transfer_is_still_staging(archive: Archive) -> None:
    archive.note_staging(BOX, TID, 4, 1.0)
    archive.reject(BOX, TID2, RejectReason.CODEC, 4, 1.0)

    archive.forget_staging(BOX, TID)
    archive.forget_staging(BOX, TID2)

    assert archive.lookup_transfer(BOX, TID) is None
    rejected = archive.lookup_transfer(BOX, TID2)
    assert rejected is not None and (rejected.state, rejected.reason) == (TransferState.REJECTED, RejectReason.CODEC)


def test_sweep_removes_scratch_files_when_older_than_the_cutoff(tmp_path: Path, archive: Archive) -> None:
    scratch = archive.receive([b"left by a crash"])
    mtime = scratch.stat().st_mtime

    assert archive.sweep_scratch(mtime) == 0
    assert archive.sweep_scratch(mtime + 1) == 1
    assert scratch_files(tmp_path) == []


@pytest.mark.parametrize(("uid", "expected"), [
    ("1.2.840.10008.1.2", "1.2.840.10008.1.2"),
    ("1.2.3\x00", "1.2.3"),
    (" 1.2.3 ", "1.2.3"),
    ("..", "unknown"),
    ("../../etc/passwd", "unknown"),
    ("1..2", "unknown"),
    ("", "unknown"),
    ("1." + "2" * 63, "unknown"),
])
def test_uid_is_sanitised_when_used_as_a_path_component(uid: str, expected: str) -> None:
    assert sanitise_uid(uid) == expected


@given(st.text())
def test_sanitised_uid_is_a_plain_name_when_uid_is_arbitrary_text(uid: str) -> None:
    name = sanitise_uid(uid)
    assert name == "unknown" or (name[0].isdigit() and name[-1].isdigit() and ".." not in name)
    assert set(name) <= set("0123456789.") or name == "unknown"
    assert len(name) <= 64


PHI = b"DOE^JANE patient 123456 " * 100


def test_object_and_scratch_are_sealed_with_a_key_kept_apart_when_stored(tmp_path: Path, archive: Archive) -> None:
    scratch = archive.receive([PHI[:1000], PHI[1000:]])
    assert PHI[:24] not in scratch.read_bytes()
    result = archive.store(identity_for(PHI), scratch, BOX, TID, 2, 1.0)
    assert PHI[:24] not in result.instance.path.read_bytes()
    assert b"".join(archive.open(result.instance)) == PHI
    assert archive.key_file == tmp_path / "keys" / "archive.key"  # beside the archive, not in it
    assert stat.S_IMODE(archive.key_file.stat().st_mode) == 0o600


def test_open_raises_integrity_error_when_the_sealed_file_was_altered(archive: Archive) -> None:
    record = archive.store(identity_for(PHI), archive.receive([PHI]), BOX, TID, 2, 1.0).instance
    raw = bytearray(record.path.read_bytes())
    raw[-20] ^= 1
    record.path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        b"".join(archive.open(record))


def test_open_raises_integrity_error_when_the_file_is_another_objects(archive: Archive) -> None:
    one = archive.store(identity_for(PHI), archive.receive([PHI]), BOX, TID, 2, 1.0).instance
    other = identity_for(b"other", sop="1.2.3.4.6")
    two = archive.store(other, archive.receive([b"other"]), BOX, TID2, 2, 1.0).instance
    os.replace(two.path, one.path)  # a validly sealed file under the wrong row
    with pytest.raises(IntegrityError, match="index row"):
        b"".join(archive.open(one))


def test_archive_refuses_to_open_when_its_key_is_missing_and_objects_need_it(tmp_path: Path, archive: Archive) -> None:
    archive.store(identity_for(PHI), archive.receive([PHI]), BOX, TID, 2, 1.0)
    archive.key_file.rename(tmp_path / "elsewhere.key")
    with pytest.raises(ConfigError, match="archive key missing"):
        Archive(tmp_path / "archive", archive.index)
    assert not archive.key_file.exists()  # never silently replaced


def test_archive_uses_the_configured_key_file_when_one_is_given(tmp_path: Path, backend: Backend) -> None:
    key_file = tmp_path / "other-volume" / "archive.key"
    a = Archive(tmp_path / "archive", backend.archive(tmp_path / "first").index, key_file=key_file)
    record = a.store(identity_for(PHI), a.receive([PHI]), BOX, TID, 2, 1.0).instance
    assert key_file.is_file() and not (tmp_path / "keys" / "archive.key").exists()
    assert b"".join(a.open(record)) == PHI
    a.close()


def test_plaintext_object_is_refused_until_seal_plaintext_seals_it(tmp_path: Path, archive: Archive) -> None:
    rel = "1.2.3/1.2.3.4/1.2.3.4.9_0123456789ab.dcm"  # as archived before encryption at rest
    (tmp_path / "archive" / rel).parent.mkdir(parents=True)
    (tmp_path / "archive" / rel).write_bytes(PHI)
    m = identity_for(PHI, sop="1.2.3.4.9")
    with archive.index.transaction():
        archive.index.insert_instance({
            "sop_instance_uid": m.sop_instance_uid, "sha256": m.sha256, "study_instance_uid": "1.2.3",
            "series_instance_uid": "1.2.3.4", "sop_class_uid": m.sop_class_uid,
            "transfer_syntax": m.transfer_syntax_uid,
            "size": m.size, "path": rel, "box_id": BOX, "transfer_id": TID.hex(), "stored_at": 1.0})
    (legacy,) = archive.instances()
    with pytest.raises(IntegrityError, match="seal-archive"):
        archive.open(legacy)

    assert archive.seal_plaintext() == (1, 0)

    (record,) = archive.instances()
    assert record.path.name == "1.2.3.4.9_0123456789ab.mgwc" and not legacy.path.exists()
    assert PHI[:24] not in record.path.read_bytes()
    assert b"".join(archive.open(record)) == PHI
    assert archive.seal_plaintext() == (0, 0)  # idempotent
