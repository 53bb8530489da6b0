"""The archive index contract, which two backends in gateway/adapters/ implement.

``Archive`` keeps files; an ``Index`` keeps the rows that say which files are
durable and what each transfer came to. Two backends implement it with the
same tables and the same semantics:

* ``SqliteIndex`` (``gateway.adapters.sqlite_index``, the default): one file, WAL,
  ``synchronous=FULL``; every write is a ``BEGIN IMMEDIATE`` transaction, so writers
  on one node are serialised.
* ``PostgresIndex`` (``gateway.adapters.postgres_index``): for workers on several
  machines; a transaction may name an object key, and writers of the same key
  are serialised with a transaction-scoped advisory lock.

Rows travel as plain dicts with the column names below. Both backends migrate
with numbered, transactional steps; their version numbers move together.

Tables (v1): ``instances`` (pk sop_instance_uid, sha256; unique path),
``transfers`` (pk box_id, transfer_id). v2: ``forwards``, the durable PACS
forward queue (pk sop_instance_uid, sha256, destination), filled in the same
transaction that files an instance.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

Row = dict[str, Any]


class Index(Protocol):
    """What ``Archive`` and the forwarder need from an index backend."""

    where: str  # for error messages: a path or a database name, never a password

    def transaction(self, lock_key: str = "") -> AbstractContextManager[None]: ...
    def schema_version(self) -> int: ...
    def get_transfer(self, box_id: str, transfer_hex: str) -> Row | None: ...
    def upsert_transfer(self, row: Row) -> None: ...
    def delete_staging_transfer(self, box_id: str, transfer_hex: str) -> None: ...
    def get_instance(self, sop_instance_uid: str, sha256: str) -> Row | None: ...
    def path_taken(self, rel: str) -> bool: ...
    def insert_instance(self, row: Row) -> None: ...
    def list_instances(self) -> list[Row]: ...
    def move_instance(self, sop_instance_uid: str, sha256: str, rel: str) -> None: ...
    def count_instances(self) -> int: ...
    def enqueue_forwards(self, sop_instance_uid: str, sha256: str, destinations: tuple[str, ...],
                         now: float) -> None: ...
    def claim_forwards(self, destination: str, owner: str, now: float, lease_s: float,
                       limit: int) -> list[Row]: ...
    def finish_forward(self, row: Row, state: str, attempts: int, next_attempt_at: float,
                       error: str, now: float) -> None: ...
    def forward_counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...
