"""The console's identities: local accounts, logins with lockout, sessions, API tokens, the audit log.

No web framework here: ``starlette_app.py`` hands in what a request carried (a session id from
the cookie, a bearer token, the client's address) and gets a ``core.access.Principal`` back, or a
refusal. Everything lives in the fleet database (``auth_store.AuthStore``), so that logout,
disabling an account, a password change and a token's revocation take effect at once, in every
fleet process on that database.

Rules (docs/operations.md, "Accounts, tokens and the audit log"; docs/security.md):

* A password is at least ``MIN_PASSWORD_CHARS`` characters and kept as an Argon2id hash. A login
  for an unknown or disabled account spends the time of a verification too (``argon2_hash``).
* ``lockout_failures`` wrong passwords in a row lock the account for ``lockout_minutes``; more than
  ``address_failures`` failures from one address within ``address_window_minutes`` refuse that
  address for any account. Every refusal is the same "user name or password not accepted".
* A session is a random 256-bit id in a cookie; the database keeps its SHA-256, the principal, a
  CSRF token, and its idle and absolute deadlines. A session of a local account re-reads the
  account at each request: disabled, it ends; a changed role or sites apply at once.
* An API token is ``mgw_<id>_<secret>``: shown once, kept as the SHA-256 of the secret, compared
  in constant time; it acts as its owner narrowed to the token's role and sites (never more than
  the owner has now), until it expires or is revoked.
* ``audit`` appends who, when, what, from where and the outcome; the table refuses changes.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.adapters import argon2_hash
from gateway.cloud.fleet.auth_store import AuditRow, AuthStore
from gateway.config import AuthSettings
from gateway.core.access import AuthMethod, LoginRefused, Principal, Role
from gateway.core.errors import AccountError
from gateway.i18n import _

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")  # a local account
SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOKEN = re.compile(r"^mgw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TOKEN_ID = re.compile(r"^[0-9a-f]{12}$")
MAX_TOKEN_DAYS = 3650
TOUCH_S = 15.0  # a session's last use is written at most this often
EXPORT_MAX_ROWS = 1_000_000
REFUSED = "user name or password not accepted"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def encode_sites(sites: frozenset[str] | None) -> str:
    return "" if sites is None else ",".join(sorted(sites))


def decode_sites(text: str) -> frozenset[str] | None:
    return None if not text else frozenset(text.split(","))


def parse_sites(values: Iterable[str]) -> frozenset[str] | None:
    """Site ids as given (a list, or split from "a,b"); none = every site."""
    sites = frozenset(v.strip() for v in values if v.strip())
    for site in sites:
        if not SITE.fullmatch(site):
            raise AccountError(_("site {site} must match {pattern}").format(site=repr(site[:70]), pattern=SITE.pattern))
    return sites or None


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise AccountError(_("role must be one of {roles}").format(roles=", ".join(r.value for r in Role))) from None


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(_("a password needs at least {count} characters").format(count=MIN_PASSWORD_CHARS))
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(_("a password has at most {count} characters").format(count=MAX_PASSWORD_CHARS))
    return password


@dataclass(frozen=True)
class Session:
    """A resolved session: who, and the CSRF token its POSTs must carry."""

    principal: Principal
    csrf: str
    expires_at: float


@dataclass(frozen=True)
class Actor:
    """Who did something, for the audit log: a request's principal and address, or the CLI."""

    name: str
    method: str  # an AuthMethod value, "cli", or "" (nobody authenticated yet)
    address: str

    @staticmethod
    def of(principal: Principal, address: str) -> Actor:
        return Actor(principal.name, principal.method.value, address)


class Accounts:
    """The console's identity rules over the fleet database. Thread safe as the store is."""

    def __init__(self, store: AuthStore, settings: AuthSettings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock

    # -- accounts ----------------------------------------------------------------------------------------
    def create(self, name: str, password: str, role: Role, sites: frozenset[str] | None, actor: Actor) -> None:
        if not NAME.fullmatch(name):
            raise AccountError(_("account name must match {pattern}").format(pattern=NAME.pattern))
        hashed = argon2_hash.hash_password(check_password(password))
        if not self.store.add_account(name, hashed, role.value, encode_sites(sites), self._clock()):
            raise AccountError(_("account {name} exists").format(name=name))
        self.audit(actor, "account.create", name, role=role.value, sites=encode_sites(sites))

    def _update(self, name: str, action: str, actor: Actor, **fields: Any) -> None:
        if not self.store.update_account(name, self._clock(), **fields):
            raise AccountError(_("no account {name}").format(name=repr(name[:70])))
        self.audit(actor, action, name)

    def set_password(self, name: str, password: str, actor: Actor) -> None:
        """A new password; every session of the account ends."""
        self._update(name, "account.password", actor, password_hash=argon2_hash.hash_password(check_password(password)))
        self.store.delete_sessions_of(name)

    def disable(self, name: str, actor: Actor) -> None:
        self._update(name, "account.disable", actor, disabled=1)
        self.store.delete_sessions_of(name)

    def enable(self, name: str, actor: Actor) -> None:
        self._update(name, "account.enable", actor, disabled=0)

    def unlock(self, name: str, actor: Actor) -> None:
        self._update(name, "account.unlock", actor, failures=0, locked_until=None)

    def list_accounts(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [{"name": a["name"], "role": a["role"], "sites": sorted(decode_sites(a["sites"]) or []),
                 "disabled": bool(a["disabled"]), "failures": int(a["failures"]),
                 "locked": a["locked_until"] is not None and float(a["locked_until"]) > now,
                 "created_at": a["created_at"], "updated_at": a["updated_at"]} for a in self.store.accounts()]

    def principal_of(self, name: str, method: AuthMethod) -> Principal | None:
        """The account's principal now, None if it does not exist or is disabled."""
        account = self.store.account(name)
        if account is None or account["disabled"]:
            return None
        return Principal(name, Role(account["role"]), decode_sites(account["sites"]), method)

    # -- logins ------------------------------------------------------------------------------------------
    def login(self, name: str, password: str, address: str) -> Principal:
        """The principal of a good login; ``LoginRefused`` (always ``REFUSED``) otherwise. Audited."""
        now = self._clock()
        nobody = Actor(name[:64], "", address)
        window_s = self.settings.address_window_minutes * 60
        if self.store.address_failures(address, now - window_s) >= self.settings.address_failures:
            self.audit(nobody, "login", name[:64], "refused", reason="too many failures from this address")
            raise LoginRefused(REFUSED)
        account = self.store.account(name) if NAME.fullmatch(name) and len(password) <= MAX_PASSWORD_CHARS else None
        reason = ""
        if account is None or account["disabled"]:
            argon2_hash.verify_unknown(password[:MAX_PASSWORD_CHARS])
            reason = "unknown account" if account is None else "account disabled"
        elif account["locked_until"] is not None and float(account["locked_until"]) > now:
            argon2_hash.verify_unknown(password[:MAX_PASSWORD_CHARS])
            reason = "account locked"
        elif not argon2_hash.verify(account["password_hash"], password):
            left = self.store.count_failure(name, now, self.settings.lockout_failures,
                                            self.settings.lockout_minutes * 60)
            reason = "wrong password" if left else "wrong password; account locked"
        if reason:
            self.store.count_address_failure(address, now, window_s)
            self.audit(nobody, "login", name[:64], "refused", reason=reason)
            raise LoginRefused(REFUSED)
        assert account is not None  # noqa: S101 - no reason means the password matched
        changes: dict[str, Any] = {}
        if account["failures"] or account["locked_until"] is not None:
            changes.update(failures=0, locked_until=None)
        if argon2_hash.needs_rehash(account["password_hash"]):
            changes["password_hash"] = argon2_hash.hash_password(password)
        if changes:
            self.store.update_account(name, now, **changes)
        principal = Principal(name, Role(account["role"]), decode_sites(account["sites"]), AuthMethod.PASSWORD)
        self.audit(Actor.of(principal, address), "login", name)
        return principal

    # -- sessions ----------------------------------------------------------------------------------------
    def open_session(self, principal: Principal, address: str) -> tuple[str, Session]:
        """A new session for ``principal``: its id (for the cookie, never stored) and the session."""
        now = self._clock()
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires_at = now + self.settings.session_hours * 3600
        self.store.add_session(sha256(session_id), principal.name, principal.role.value,
                               encode_sites(principal.sites), principal.method.value, csrf, now, expires_at, address)
        return session_id, Session(principal, csrf, expires_at)

    def resolve_session(self, session_id: str) -> Session | None:
        """The live session with this id, or None (unknown, idle too long, past its lifetime, account
        disabled or gone). A local account's role and sites are read afresh."""
        if not 16 <= len(session_id) <= 128:
            return None
        now = self._clock()
        key = sha256(session_id)
        row = self.store.session(key)
        if row is None:
            return None
        idle_s = self.settings.session_idle_minutes * 60
        if float(row["expires_at"]) <= now or float(row["last_used"]) + idle_s <= now:
            self.store.delete_session(key)
            return None
        method = AuthMethod(row["method"])
        if method is AuthMethod.PASSWORD:
            principal = self.principal_of(row["name"], method)
            if principal is None:
                self.store.delete_session(key)
                return None
        else:
            principal = Principal(row["name"], Role(row["role"]), decode_sites(row["sites"]), method)
        if now - float(row["last_used"]) >= TOUCH_S:
            self.store.touch_session(key, now)
        return Session(principal, row["csrf"], float(row["expires_at"]))

    def close_session(self, session_id: str) -> bool:
        return self.store.delete_session(sha256(session_id)) if session_id else False

    def prune(self) -> None:
        now = self._clock()
        self.store.prune(now, now - self.settings.session_idle_minutes * 60)

    # -- API tokens --------------------------------------------------------------------------------------
    def create_token(self, owner: str, label: str, role: Role, sites: frozenset[str] | None, days: float | None,
                     actor: Actor) -> tuple[dict[str, Any], str]:
        """A new token of local account ``owner``: its listing and the secret, which is shown only now."""
        label = label.strip()
        if not 1 <= len(label) <= 100 or not label.isprintable():
            raise AccountError(_("a token's name is 1-100 printable characters"))
        if days is not None and not 0 < days <= MAX_TOKEN_DAYS:
            raise AccountError(_("a token's days are in (0, {max}]").format(max=MAX_TOKEN_DAYS))
        account = self.principal_of(owner, AuthMethod.TOKEN)
        if account is None:
            raise AccountError(_("no enabled account {name} to own the token").format(name=repr(owner[:70])))
        if not account.has(role) or (account.sites is not None and sites is not None and not sites <= account.sites):
            raise AccountError(_("a token of {owner} cannot have more than its owner's role and sites").format(
                owner=owner))
        now = self._clock()
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        expires_at = None if days is None else now + days * 86400
        self.store.add_token(token_id, sha256(secret), label, owner, role.value, encode_sites(sites), now,
                             expires_at)
        self.audit(actor, "token.create", token_id, owner=owner, role=role.value, sites=encode_sites(sites),
                   expires_at=expires_at)
        return self.token_doc(self.store.token(token_id) or {}), f"mgw_{token_id}_{secret}"

    def resolve_token(self, bearer: str, address: str) -> Principal:
        """The principal of a valid token; ``LoginRefused`` naming why not (audited)."""
        m = TOKEN.fullmatch(bearer)
        row = self.store.token(m.group(1)) if m else None
        now = self._clock()
        reason = ""
        if m is None or row is None or not hmac.compare_digest(row["secret_sha256"], sha256(m.group(2))):
            reason = "unknown token"
        elif row["revoked_at"] is not None:
            reason = "token revoked"
        elif row["expires_at"] is not None and float(row["expires_at"]) <= now:
            reason = "token expired"
        owner = None if reason or row is None else self.principal_of(row["owner"], AuthMethod.TOKEN)
        if row is not None and not reason and owner is None:
            reason = "token owner disabled or gone"
        if reason or owner is None or row is None:
            target = m.group(1) if m else ""
            self.audit(Actor(f"token:{target}" if target else "", "token", address), "token.use", target, "refused",
                       reason=reason)
            raise LoginRefused(reason)
        if row["last_used"] is None or now - float(row["last_used"]) >= TOUCH_S:
            self.store.touch_token(row["id"], now)
        return Principal(f"token:{row['id']}", owner.role, owner.sites, AuthMethod.TOKEN).narrowed(
            Role(row["role"]), decode_sites(row["sites"]))

    def tokens(self, owner: str | None = None) -> list[dict[str, Any]]:
        return [self.token_doc(r) for r in self.store.tokens(owner)]

    def token_owner(self, token_id: str) -> str | None:
        row = self.store.token(token_id) if TOKEN_ID.fullmatch(token_id) else None
        return None if row is None else str(row["owner"])

    def revoke_token(self, token_id: str, actor: Actor) -> bool:
        done = TOKEN_ID.fullmatch(token_id) is not None and self.store.revoke_token(token_id, self._clock())
        self.audit(actor, "token.revoke", token_id[:32], "ok" if done else "refused")
        return done

    @staticmethod
    def token_doc(r: dict[str, Any]) -> dict[str, Any]:
        return {"id": r["id"], "name": r["label"], "owner": r["owner"], "role": r["role"],
                "sites": sorted(decode_sites(r["sites"]) or []), "created_at": r["created_at"],
                "expires_at": r["expires_at"], "revoked_at": r["revoked_at"], "last_used": r["last_used"]}

    # -- the audit log -----------------------------------------------------------------------------------
    def audit(self, actor: Actor, action: str, target: str = "", outcome: str = "ok", **detail: Any) -> None:
        """Append one row: who, when, what, from where, the outcome and ``detail`` (never a secret)."""
        self.store.append_audit(self._clock(), actor.name, actor.method, actor.address, action, target, outcome,
                                json.dumps(detail, sort_keys=True, default=str))


def export_rows(accounts: Accounts, since: float) -> list[AuditRow]:
    """Every audit row since ``since``, oldest first (at most ``EXPORT_MAX_ROWS``)."""
    rows: list[AuditRow] = []
    before: int | None = None
    while len(rows) < EXPORT_MAX_ROWS:
        page = accounts.store.audit(since=since, before_id=before, limit=1000)
        rows += page
        if len(page) < 1000:
            break
        before = page[-1].id
    return rows[::-1]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with a header; a value a spreadsheet would run as a formula is prefixed with '."""
    out = io.StringIO()
    fields = ["id", "at", "actor", "method", "address", "action", "target", "outcome", "detail"]
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: f"'{v}" if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v
                         for k, v in r.items()})
    return out.getvalue()
