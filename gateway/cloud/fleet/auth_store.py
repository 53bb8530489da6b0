"""The console's identity tables in the fleet database: accounts, sessions, API tokens, login
throttling, OpenID Connect pre-logins and the audit log. SQL only; the rules are ``accounts.py``.

Written once for SQLite and PostgreSQL (``gateway.cloud.sql``), in the fleet store's database
(migration 4 of ``store.MIGRATIONS``), so that two fleet processes on one database share every
session, lockout and revocation at once. No secret is stored: a session id, a token's secret and
an OIDC pre-login key are kept as their SHA-256, a password as its Argon2id hash.

The audit log is append-only in the database itself: triggers refuse ``UPDATE`` and ``DELETE``
(and ``TRUNCATE`` on PostgreSQL), on both backends (``core/sqlscript.AppendOnly``). It is kept
for ever; there is no retention prune (a row is about 200 bytes; an operator who must archive
it exports it, ``mgw cloud audit export``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cloud.sql import Database

AUTH_MIGRATION = """
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL, sites TEXT NOT NULL,
        disabled INTEGER NOT NULL, failures INTEGER NOT NULL, locked_until {real}, created_at {real} NOT NULL,
        updated_at {real} NOT NULL
    );
    CREATE TABLE sessions (
        id_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, sites TEXT NOT NULL,
        method TEXT NOT NULL, csrf TEXT NOT NULL, created_at {real} NOT NULL, last_used {real} NOT NULL,
        expires_at {real} NOT NULL, address TEXT NOT NULL
    );
    CREATE INDEX sessions_by_name ON sessions (name);
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, label TEXT NOT NULL, owner TEXT NOT NULL,
        role TEXT NOT NULL, sites TEXT NOT NULL, created_at {real} NOT NULL, expires_at {real},
        revoked_at {real}, last_used {real}
    );
    CREATE INDEX api_tokens_by_owner ON api_tokens (owner);
    CREATE TABLE login_failures (
        address TEXT PRIMARY KEY, failures INTEGER NOT NULL, first_at {real} NOT NULL
    );
    CREATE TABLE oidc_pending (
        key_sha256 TEXT PRIMARY KEY, kept TEXT NOT NULL, expires_at {real} NOT NULL
    );
    CREATE TABLE audit_log (
        id {id}, at {real} NOT NULL, actor TEXT NOT NULL, method TEXT NOT NULL, address TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL
    );
    CREATE INDEX audit_log_by_time ON audit_log (at);
    {append_only:audit_log}
"""


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: float
    actor: str
    method: str  # how the actor authenticated: password, oidc, token, cli, or "" (nobody yet)
    address: str
    action: str
    target: str
    outcome: str  # "ok", "refused", "failed"
    detail: str  # a JSON object

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "actor": self.actor, "method": self.method, "address": self.address,
                "action": self.action, "target": self.target, "outcome": self.outcome, "detail": self.detail}


class AuthStore:
    """The statements; thread-safe as the ``Database`` is (one transaction per call)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- accounts ------------------------------------------------------------------------------------
    def add_account(self, name: str, password_hash: str, role: str, sites: str, at: float) -> bool:
        """False if the name is taken."""
        with self._db.transaction() as tx:
            rows = tx.execute("INSERT INTO accounts VALUES (?, ?, ?, ?, 0, 0, NULL, ?, ?) "
                              "ON CONFLICT (name) DO NOTHING RETURNING name",
                              (name, password_hash, role, sites, at, at))
        return bool(rows)

    def account(self, name: str) -> dict[str, Any] | None:
        rows = self._db.execute("SELECT * FROM accounts WHERE name = ?", (name,))
        return rows[0] if rows else None

    def accounts(self) -> list[dict[str, Any]]:
        return self._db.execute("SELECT * FROM accounts ORDER BY name")

    def update_account(self, name: str, at: float, **fields: Any) -> bool:
        """Set columns of an account (names are the caller's constants); False if there is none."""
        assert fields and set(fields) <= {"password_hash", "role", "sites", "disabled", "failures",  # noqa: S101
                                          "locked_until"}
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db.transaction() as tx:
            rows = tx.execute(f"UPDATE accounts SET {sets}, updated_at = ? WHERE name = ? RETURNING name",  # noqa: S608
                              (*fields.values(), at, name))
        return bool(rows)

    def count_failure(self, name: str, at: float, limit: int, lockout_s: float) -> int:
        """One more failed login of ``name``; at ``limit`` the account is locked until ``at + lockout_s``
        and the count starts again. The count after (0 when it just locked)."""
        with self._db.transaction(lock_key=f"account:{name}") as tx:
            rows = tx.execute("UPDATE accounts SET failures = failures + 1 WHERE name = ? RETURNING failures", (name,))
            if not rows:
                return 0
            failures = int(rows[0]["failures"])
            if failures >= limit:
                tx.execute("UPDATE accounts SET failures = 0, locked_until = ? WHERE name = ?", (at + lockout_s, name))
                return 0
            return failures

    # -- per-address login failures -----------------------------------------------------------------------
    def address_failures(self, address: str, since: float) -> int:
        rows = self._db.execute("SELECT failures FROM login_failures WHERE address = ? AND first_at >= ?",
                                (address, since))
        return int(rows[0]["failures"]) if rows else 0

    def count_address_failure(self, address: str, at: float, window_s: float) -> None:
        """One more failure from ``address``; a count older than ``window_s`` starts again."""
        with self._db.transaction(lock_key=f"address:{address}") as tx:
            tx.execute("INSERT INTO login_failures VALUES (?, 1, ?) ON CONFLICT (address) DO UPDATE SET "
                       "failures = CASE WHEN login_failures.first_at < ? THEN 1 ELSE login_failures.failures + 1 END, "
                       "first_at = CASE WHEN login_failures.first_at < ? THEN excluded.first_at "
                       "ELSE login_failures.first_at END", (address, at, at - window_s, at - window_s))

    def clear_address(self, address: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM login_failures WHERE address = ?", (address,))

    # -- sessions ---------------------------------------------------------------------------------------
    def add_session(self, id_sha256: str, name: str, role: str, sites: str, method: str, csrf: str, at: float,
                    expires_at: float, address: str) -> None:
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (id_sha256, name, role, sites, method, csrf, at, at, expires_at, address))

    def session(self, id_sha256: str) -> dict[str, Any] | None:
        rows = self._db.execute("SELECT * FROM sessions WHERE id_sha256 = ?", (id_sha256,))
        return rows[0] if rows else None

    def touch_session(self, id_sha256: str, at: float) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE sessions SET last_used = ? WHERE id_sha256 = ?", (at, id_sha256))

    def delete_session(self, id_sha256: str) -> bool:
        with self._db.transaction() as tx:
            return bool(tx.execute("DELETE FROM sessions WHERE id_sha256 = ? RETURNING name", (id_sha256,)))

    def delete_sessions_of(self, name: str) -> int:
        with self._db.transaction() as tx:
            return len(tx.execute("DELETE FROM sessions WHERE name = ? RETURNING name", (name,)))

    def prune(self, now: float, idle_before: float) -> None:
        """Drop sessions past their lifetime or idle since ``idle_before``, and stale pre-logins."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE expires_at <= ? OR last_used < ?", (now, idle_before))
            tx.execute("DELETE FROM oidc_pending WHERE expires_at <= ?", (now,))

    # -- API tokens -------------------------------------------------------------------------------------
    def add_token(self, token_id: str, secret_sha256: str, label: str, owner: str, role: str, sites: str, at: float,
                  expires_at: float | None) -> None:
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                       (token_id, secret_sha256, label, owner, role, sites, at, expires_at))

    def token(self, token_id: str) -> dict[str, Any] | None:
        rows = self._db.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,))
        return rows[0] if rows else None

    def tokens(self, owner: str | None = None) -> list[dict[str, Any]]:
        if owner is None:
            return self._db.execute("SELECT * FROM api_tokens ORDER BY created_at, id")
        return self._db.execute("SELECT * FROM api_tokens WHERE owner = ? ORDER BY created_at, id", (owner,))

    def revoke_token(self, token_id: str, at: float) -> bool:
        """False if there is no such token or it was already revoked."""
        with self._db.transaction() as tx:
            return bool(tx.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL "
                                   "RETURNING id", (at, token_id)))

    def touch_token(self, token_id: str, at: float) -> None:
        with self._db.transaction() as tx:
            tx.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (at, token_id))

    # -- OpenID Connect pre-logins ------------------------------------------------------------------------
    def put_pending(self, key_sha256: str, kept: str, expires_at: float) -> None:
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO oidc_pending VALUES (?, ?, ?)", (key_sha256, kept, expires_at))

    def take_pending(self, key_sha256: str, now: float) -> str | None:
        """The kept values of a pre-login, once: it is deleted as it is read."""
        with self._db.transaction() as tx:
            rows = tx.execute("DELETE FROM oidc_pending WHERE key_sha256 = ? RETURNING kept, expires_at",
                              (key_sha256,))
        return str(rows[0]["kept"]) if rows and float(rows[0]["expires_at"]) > now else None

    # -- the audit log ----------------------------------------------------------------------------------
    def append_audit(self, at: float, actor: str, method: str, address: str, action: str, target: str,
                     outcome: str, detail: str) -> int:
        with self._db.transaction() as tx:
            rows = tx.execute("INSERT INTO audit_log (at, actor, method, address, action, target, outcome, detail) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                              (at, actor, method, address, action, target, outcome, detail))
        return int(rows[0]["id"])

    def audit(self, *, actor: str | None = None, action: str | None = None, since: float = 0.0,
              before_id: int | None = None, limit: int = 100) -> list[AuditRow]:
        """Newest first; ``before_id`` pages on (the rows older than that id)."""
        where: list[str] = ["at >= ?"]
        params: list[Any] = [since]
        for column, value in (("actor", actor), ("action", action)):
            if value is not None:
                where, params = [*where, f"{column} = ?"], [*params, value]
        if before_id is not None:
            where, params = [*where, "id < ?"], [*params, before_id]
        rows = self._db.execute(f"SELECT * FROM audit_log WHERE {' AND '.join(where)} "  # noqa: S608 - constants
                                "ORDER BY id DESC LIMIT ?", (*params, limit))
        return [AuditRow(int(r["id"]), float(r["at"]), r["actor"], r["method"], r["address"], r["action"],
                         r["target"], r["outcome"], r["detail"]) for r in rows]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A raw statement, for tests that prove the database itself refuses a change to the audit log."""
        return self._db.execute(sql, params)
