"""Remote commands in the fleet database: per-box sequence, command rows, blobs, refusals, config versions,
rollouts. SQL only; the rules are ``queue.py`` and ``rollout.py``.

Written once for SQLite and PostgreSQL (``gateway.cloud.sql``), as migration 8 of the fleet store
(``fleet/store.MIGRATIONS``), so several fleet instances on one database share the queue and the
leader alone publishes. A command's arguments (a Study Instance UID, an accession number, a
configuration) are one sealed blob (``core.atrest``, under a key derived from the envelope key); the
plain columns are what the queue needs (box, seq, kind, state, times) and what the console shows
(the box's flat result ``detail``, never patient data). A diagnostic bundle is kept as the box sealed
it to the cloud's envelope key; it is opened only for an operator's download.

States: ``pending`` (queued, perhaps published, not yet received) -> ``delivered`` (the box said
``received``) -> ``running`` -> ``succeeded`` | ``failed`` | ``refused``; ``expired`` when no result came
before the command's expiry (a final result that arrives later still wins: the box did run it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cloud.sql import Database

COMMANDS_MIGRATION = """
    CREATE TABLE command_boxes (
        box_id TEXT PRIMARY KEY, last_seq {bigint} NOT NULL, inbound_key TEXT NOT NULL,
        config_version {bigint} NOT NULL, seen_at {real} NOT NULL
    );
    CREATE TABLE commands (
        id TEXT PRIMARY KEY, box_id TEXT NOT NULL, seq {bigint} NOT NULL, kind TEXT NOT NULL, sealed TEXT NOT NULL,
        issued_by TEXT NOT NULL, issued_at {real} NOT NULL, expires_at {real} NOT NULL, state TEXT NOT NULL,
        reason TEXT NOT NULL, message TEXT NOT NULL, detail TEXT NOT NULL, updated_at {real} NOT NULL,
        sent_at {real}, sends INTEGER NOT NULL, rollout_id {bigint}, UNIQUE (box_id, seq)
    );
    CREATE INDEX commands_open ON commands (state, box_id, seq);
    CREATE INDEX commands_by_rollout ON commands (rollout_id);
    CREATE TABLE command_blob_parts (
        id TEXT NOT NULL, part INTEGER NOT NULL, parts INTEGER NOT NULL, size {bigint} NOT NULL,
        sha256 TEXT NOT NULL, data TEXT NOT NULL, at {real} NOT NULL, PRIMARY KEY (id, part)
    );
    CREATE TABLE command_blobs (
        id TEXT PRIMARY KEY, box_id TEXT NOT NULL, size {bigint} NOT NULL, sha256 TEXT NOT NULL,
        sealed TEXT NOT NULL, at {real} NOT NULL
    );
    CREATE TABLE command_refusals (
        id {id}, box_id TEXT NOT NULL, at {real} NOT NULL, reason TEXT NOT NULL, command_id TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX command_refusals_by_time ON command_refusals (at, box_id);
    CREATE TABLE config_versions (
        box_id TEXT NOT NULL, version {bigint} NOT NULL, command_id TEXT NOT NULL, sealed TEXT NOT NULL,
        issued_by TEXT NOT NULL, at {real} NOT NULL, PRIMARY KEY (box_id, version)
    );
    CREATE TABLE command_rollouts (
        id {id}, kind TEXT NOT NULL, sealed TEXT NOT NULL, boxes TEXT NOT NULL, canary INTEGER NOT NULL,
        wave_size INTEGER NOT NULL, state TEXT NOT NULL, issued INTEGER NOT NULL, detail TEXT NOT NULL,
        created_by TEXT NOT NULL, created_at {real} NOT NULL, updated_at {real} NOT NULL
    )
"""

PENDING, DELIVERED, RUNNING = "pending", "delivered", "running"
SUCCEEDED, FAILED, REFUSED, EXPIRED = "succeeded", "failed", "refused", "expired"
OPEN_STATES = (PENDING, DELIVERED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, REFUSED, EXPIRED)
STATES = (*OPEN_STATES, *FINAL_STATES)
_RANK = {PENDING: 0, DELIVERED: 1, RUNNING: 2, EXPIRED: 3, SUCCEEDED: 4, FAILED: 4, REFUSED: 4}


@dataclass(frozen=True)
class CommandRow:
    id: str  # 32 hex digits
    box_id: str
    seq: int
    kind: str
    sealed: bytes  # the arguments, sealed at rest
    issued_by: str
    issued_at: float
    expires_at: float
    state: str
    reason: str  # a refusal code, or "" (why it failed is in message)
    message: str
    detail: str  # JSON object, flat
    updated_at: float
    sent_at: float | None
    sends: int
    rollout_id: int | None


@dataclass(frozen=True)
class BoxCommands:
    box_id: str
    last_seq: int
    inbound_key: str  # hex X25519 public key from the box's birth; "" = none announced
    config_version: int  # what the box last reported (0: never changed remotely)
    seen_at: float


@dataclass(frozen=True)
class Rollout:
    id: int
    kind: str
    sealed: bytes
    boxes: str  # JSON list, in order (the canary first)
    canary: int
    wave_size: int
    state: str  # running | succeeded | stopped
    issued: int  # how many of ``boxes`` have a command
    detail: str
    created_by: str
    created_at: float
    updated_at: float


def _command(r: dict[str, Any]) -> CommandRow:
    return CommandRow(r["id"], r["box_id"], int(r["seq"]), r["kind"], bytes.fromhex(r["sealed"]), r["issued_by"],
                      r["issued_at"], r["expires_at"], r["state"], r["reason"], r["message"], r["detail"],
                      r["updated_at"], r["sent_at"], int(r["sends"]),
                      None if r["rollout_id"] is None else int(r["rollout_id"]))


def _rollout(r: dict[str, Any]) -> Rollout:
    return Rollout(int(r["id"]), r["kind"], bytes.fromhex(r["sealed"]), r["boxes"], int(r["canary"]),
                   int(r["wave_size"]), r["state"], int(r["issued"]), r["detail"], r["created_by"], r["created_at"],
                   r["updated_at"])


class CommandStore:
    """The commands' statements on the fleet store's ``Database`` (one transaction per call)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- boxes --------------------------------------------------------------------------------------------
    def note_box(self, box_id: str, inbound_key: str | None, config_version: int | None, at: float,
                 born: bool = False) -> None:
        """What a birth or heartbeat says (``None``: not said); a birth makes the box's open commands due again."""
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO command_boxes (box_id, last_seq, inbound_key, config_version, seen_at) "
                       "VALUES (?, 0, ?, ?, ?) ON CONFLICT (box_id) DO UPDATE SET "
                       "inbound_key = CASE WHEN ? THEN excluded.inbound_key ELSE command_boxes.inbound_key END, "
                       "config_version = CASE WHEN ? THEN excluded.config_version "
                       "ELSE command_boxes.config_version END, seen_at = excluded.seen_at",
                       (box_id, inbound_key or "", config_version or 0, at, inbound_key is not None,
                        config_version is not None))
            if born:
                tx.execute("UPDATE commands SET sent_at = NULL WHERE box_id = ? AND state IN (?, ?, ?)",
                           (box_id, *OPEN_STATES))

    def box(self, box_id: str) -> BoxCommands | None:
        rows = self._db.execute("SELECT * FROM command_boxes WHERE box_id = ?", (box_id,))
        if not rows:
            return None
        r = rows[0]
        return BoxCommands(r["box_id"], int(r["last_seq"]), r["inbound_key"], int(r["config_version"]), r["seen_at"])

    # -- the queue ----------------------------------------------------------------------------------------
    def add(self, command_id: str, box_id: str, kind: str, seal: Callable[[int], tuple[bytes, bytes | None]],
            issued_by: str, issued_at: float, expires_at: float, rollout_id: int | None = None,
            config: bool = False) -> CommandRow:
        """Queue a command with the box's next seq. ``seal(version)`` gives the sealed arguments and, for a
        config command (``config``), the sealed document kept as that version: the box's next configuration
        version (above every one sent and the one it reports), numbered inside this transaction."""
        with self._db.transaction(lock_key=f"commands:{box_id}") as tx:
            tx.execute("INSERT INTO command_boxes (box_id, last_seq, inbound_key, config_version, seen_at) "
                       "VALUES (?, 0, '', 0, ?) ON CONFLICT (box_id) DO NOTHING", (box_id, issued_at))
            box = tx.execute("UPDATE command_boxes SET last_seq = last_seq + 1 WHERE box_id = ? "
                             "RETURNING last_seq, config_version", (box_id,))[0]
            version = 0
            if config:
                sent = tx.execute("SELECT MAX(version) AS v FROM config_versions WHERE box_id = ?", (box_id,))
                version = max(int(sent[0]["v"] or 0), int(box["config_version"])) + 1
            sealed, document = seal(version)
            rows = tx.execute(
                "INSERT INTO commands (id, box_id, seq, kind, sealed, issued_by, issued_at, expires_at, state, reason, "
                "message, detail, updated_at, sent_at, sends, rollout_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', '', '', '{}', ?, NULL, 0, ?) RETURNING *",
                (command_id, box_id, int(box["last_seq"]), kind, sealed.hex(), issued_by, issued_at, expires_at,
                 issued_at, rollout_id))
            if document is not None:
                tx.execute("INSERT INTO config_versions (box_id, version, command_id, sealed, issued_by, at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (box_id, version, command_id, document.hex(), issued_by,
                                                         issued_at))
        return _command(rows[0])

    def command(self, command_id: str) -> CommandRow | None:
        rows = self._db.execute("SELECT * FROM commands WHERE id = ?", (command_id,))
        return _command(rows[0]) if rows else None

    def commands(self, *, box_id: str | None = None, rollout_id: int | None = None, state: str | None = None,
                 limit: int = 200) -> list[CommandRow]:
        """Newest first."""
        where, params = ["1 = 1"], []  # type: list[str], list[Any]
        for column, value in (("box_id", box_id), ("rollout_id", rollout_id), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return [_command(r) for r in self._db.execute(
            f"SELECT * FROM commands WHERE {' AND '.join(where)} ORDER BY issued_at DESC, seq DESC LIMIT ?",  # noqa: S608
            (*params, limit))]

    def first_open(self) -> list[CommandRow]:
        """Per box, its open command of the lowest seq (the one the box must see next)."""
        return [_command(r) for r in self._db.execute(
            "SELECT c.* FROM commands c WHERE c.state IN (?, ?, ?) AND c.seq = (SELECT MIN(o.seq) FROM commands o "
            "WHERE o.box_id = c.box_id AND o.state IN (?, ?, ?)) ORDER BY c.box_id", (*OPEN_STATES, *OPEN_STATES))]

    def sent(self, command_id: str, at: float) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE commands SET sent_at = ?, sends = sends + 1 WHERE id = ?", (at, command_id))

    def expire(self, now: float, grace_s: float) -> list[CommandRow]:
        """Open commands past their expiry (those the box already took: past it by ``grace_s``) become expired."""
        with self._db.transaction() as tx:
            rows = tx.execute(
                "UPDATE commands SET state = 'expired', updated_at = ?, message = 'no result before the expiry' "
                "WHERE (state = 'pending' AND expires_at <= ?) OR (state IN ('delivered', 'running') "
                "AND expires_at <= ?) RETURNING *", (now, now, now - grace_s))
        return [_command(r) for r in rows]

    def record_result(self, command_id: str, box_id: str, seq: int, state: str, reason: str, message: str,
                      detail: str, at: float) -> CommandRow | None:
        """Move a command of ``box_id`` forward to ``state`` (never back; a final state stays, except that
        a final result replaces ``expired``); the row after, or None when it is not this box's command."""
        allowed = [s for s, rank in _RANK.items() if rank < _RANK[state]]
        if state in FINAL_STATES and state != EXPIRED:
            allowed = [s for s in allowed if s not in (SUCCEEDED, FAILED, REFUSED)]
        with self._db.transaction() as tx:
            found = tx.execute("SELECT * FROM commands WHERE id = ? AND box_id = ? AND seq = ?",
                               (command_id, box_id, seq))
            if not found:
                return None
            if found[0]["state"] not in allowed:
                return _command(found[0])
            rows = tx.execute("UPDATE commands SET state = ?, reason = ?, message = ?, detail = ?, updated_at = ? "
                              "WHERE id = ? RETURNING *", (state, reason, message, detail, at, command_id))
        return _command(rows[0])

    def prune(self, before: float) -> None:
        """Forget finished commands, their blobs and refusals older than ``before`` (config versions stay)."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM command_blobs WHERE id IN (SELECT id FROM commands WHERE state IN "
                       "('succeeded', 'failed', 'refused', 'expired') AND updated_at < ?)", (before,))
            tx.execute("DELETE FROM command_blob_parts WHERE at < ?", (before,))
            tx.execute("DELETE FROM commands WHERE state IN ('succeeded', 'failed', 'refused', 'expired') "
                       "AND updated_at < ? AND rollout_id IS NULL", (before,))
            tx.execute("DELETE FROM command_refusals WHERE at < ?", (before,))

    # -- refusals -----------------------------------------------------------------------------------------
    def add_refusal(self, box_id: str, at: float, reason: str, command_id: str, message: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO command_refusals (box_id, at, reason, command_id, message) VALUES (?, ?, ?, ?, ?)",
                       (box_id, at, reason, command_id, message[:512]))

    def refusals(self, since: float) -> list[dict[str, Any]]:
        """Per box since ``since``: how many refusals, and the last one's reason."""
        return self._db.execute(
            "SELECT r.box_id, COUNT(*) AS refusals, MAX(r.at) AS last_at, (SELECT l.reason FROM command_refusals l "
            "WHERE l.box_id = r.box_id ORDER BY l.at DESC, l.id DESC LIMIT 1) AS reason "
            "FROM command_refusals r WHERE r.at >= ? GROUP BY r.box_id ORDER BY r.box_id", (since,))

    # -- blobs --------------------------------------------------------------------------------------------
    def add_blob_part(self, command_id: str, part: int, parts: int, size: int, sha256: str, data: bytes,
                      at: float) -> list[dict[str, Any]]:
        """Keep one part (a resent part replaces itself); every part of the blob so far, in order."""
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO command_blob_parts (id, part, parts, size, sha256, data, at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id, part) DO NOTHING",
                       (command_id, part, parts, size, sha256, data.hex(), at))
            return tx.execute("SELECT part, parts, size, sha256, data FROM command_blob_parts WHERE id = ? "
                              "ORDER BY part", (command_id,))

    def add_blob(self, command_id: str, box_id: str, sealed: bytes, sha256: str, at: float) -> None:
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO command_blobs (id, box_id, size, sha256, sealed, at) VALUES (?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT (id) DO NOTHING", (command_id, box_id, len(sealed), sha256, sealed.hex(), at))
            tx.execute("DELETE FROM command_blob_parts WHERE id = ?", (command_id,))

    def drop_blob_parts(self, command_id: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM command_blob_parts WHERE id = ?", (command_id,))

    def blob(self, command_id: str) -> tuple[str, bytes, str] | None:
        """``(box_id, sealed, sha256)`` of a command's blob."""
        rows = self._db.execute("SELECT box_id, sealed, sha256 FROM command_blobs WHERE id = ?", (command_id,))
        return (rows[0]["box_id"], bytes.fromhex(rows[0]["sealed"]), rows[0]["sha256"]) if rows else None

    def blob_ids(self, command_ids: Sequence[str]) -> set[str]:
        if not command_ids:
            return set()
        marks = ",".join("?" * len(command_ids))
        return {r["id"] for r in self._db.execute(
            f"SELECT id FROM command_blobs WHERE id IN ({marks})", tuple(command_ids))}  # noqa: S608

    # -- configuration versions ---------------------------------------------------------------------------
    def config_versions(self, box_id: str) -> list[dict[str, Any]]:
        """The versions sent to a box, newest first, with their commands' states (no document)."""
        return self._db.execute(
            "SELECT v.version, v.command_id, v.issued_by, v.at, COALESCE(c.state, '') AS state "
            "FROM config_versions v LEFT JOIN commands c ON c.id = v.command_id WHERE v.box_id = ? "
            "ORDER BY v.version DESC", (box_id,))

    def config_version(self, box_id: str, version: int) -> tuple[str, bytes] | None:
        """``(command_id, sealed)`` of one version."""
        rows = self._db.execute("SELECT command_id, sealed FROM config_versions WHERE box_id = ? AND version = ?",
                                (box_id, version))
        return (rows[0]["command_id"], bytes.fromhex(rows[0]["sealed"])) if rows else None

    # -- rollouts -----------------------------------------------------------------------------------------
    def add_rollout(self, kind: str, sealed: bytes, boxes: str, canary: int, wave_size: int, by: str,
                    at: float) -> Rollout:
        with self._db.transaction() as tx:
            rows = tx.execute("INSERT INTO command_rollouts (kind, sealed, boxes, canary, wave_size, state, issued, "
                              "detail, created_by, created_at, updated_at) "
                              "VALUES (?, ?, ?, ?, ?, 'running', 0, '', ?, ?, ?) RETURNING *",
                              (kind, sealed.hex(), boxes, canary, wave_size, by, at, at))
        return _rollout(rows[0])

    def rollout(self, rollout_id: int) -> Rollout | None:
        rows = self._db.execute("SELECT * FROM command_rollouts WHERE id = ?", (rollout_id,))
        return _rollout(rows[0]) if rows else None

    def rollouts(self, *, running_only: bool = False, limit: int = 100) -> list[Rollout]:
        rows = self._db.execute("SELECT * FROM command_rollouts WHERE state = 'running' OR ? ORDER BY id DESC LIMIT ?",
                                (not running_only, limit))
        return [_rollout(r) for r in rows]

    def update_rollout(self, rollout_id: int, state: str, issued: int, detail: str, at: float,
                       was_issued: int) -> bool:
        """Move a running rollout on, if no other instance did meanwhile (``issued`` still ``was_issued``)."""
        with self._db.transaction() as tx:
            rows = tx.execute("UPDATE command_rollouts SET state = ?, issued = ?, detail = ?, updated_at = ? "
                              "WHERE id = ? AND state = 'running' AND issued = ? RETURNING id",
                              (state, issued, detail, at, rollout_id, was_issued))
        return bool(rows)
