"""The one way the product opens a SQLite file (adapters/sqlite_db.py), against real files and processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from gateway.adapters.sqlite_db import SqliteDatabase
from gateway.core.errors import StorageError

MIGRATIONS = ["CREATE TABLE t (id {id}, who TEXT NOT NULL)", "ALTER TABLE t ADD COLUMN at {real}"]


def _open_and_write(path: str, who: int, start, results) -> None:  # type: ignore[no-untyped-def]
    try:
        start.wait(60)
        db = SqliteDatabase(Path(path), "race")
        db.migrate(MIGRATIONS)
        with db.tx() as conn:
            conn.execute("INSERT INTO t (who, at) VALUES (?, 0)", (str(who),))
        db.close()
        results.put((who, "ok"))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which names it
        results.put((who, f"{type(exc).__name__}: {exc}"))


def test_every_process_opens_and_migrates_when_several_open_the_same_new_file_at_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 6
    start, results = ctx.Barrier(n), ctx.Queue()
    path = tmp_path / "new.db"
    procs = [ctx.Process(target=_open_and_write, args=(str(path), i, start, results)) for i in range(n)]
    for p in procs:
        p.start()
    try:
        outcomes = dict(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(60)
    assert outcomes == {i: "ok" for i in range(n)}
    db = SqliteDatabase(path, "check")
    assert db.schema_version() == len(MIGRATIONS)
    assert sorted(r["who"] for r in db.execute("SELECT who FROM t")) == [str(i) for i in range(n)]
    assert db.execute("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    db.close()


def test_newer_schema_is_refused_when_the_software_knows_fewer_migrations(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "a.db", "newer")
    db.migrate(MIGRATIONS)
    with pytest.raises(StorageError, match="newer than this software"):
        db.migrate(MIGRATIONS[:1])
    db.migrate(MIGRATIONS[:1], newer_ok=True)  # the edge's additive migrations: an older slot runs on it
    assert db.schema_version() == len(MIGRATIONS)
    db.close()


def test_open_fails_with_a_storage_error_naming_the_file_when_it_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StorageError, match="junk.db"):
        db = SqliteDatabase(path, "junk")
        db.migrate(MIGRATIONS)


def test_dict_insert_rolls_back_with_the_transaction_when_a_later_statement_fails(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "tx.db", "tx")
    db.migrate(MIGRATIONS)
    with pytest.raises(StorageError), db.tx():
        assert db.insert("t", {"who": "kept only if all of it commits", "at": 1.0}) == 1
        db.execute("INSERT INTO no_such_table VALUES (1)")
    assert db.execute("SELECT count(*) AS n FROM t")[0]["n"] == 0
    with db.tx():
        rowid = db.insert("t", {"who": "committed", "at": 2.0})
    assert db.execute("SELECT who FROM t WHERE id = ?", (rowid,)) == [{"who": "committed"}]
    db.close()
