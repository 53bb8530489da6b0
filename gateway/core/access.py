"""Who may see and do what in the operations console: roles, per-site scope, the principal of a request.

Pure: no web framework, no store. The console's authentication (a session cookie, an OpenID
Connect login or an API token) ends in a ``Principal``; every document the console serves is
filtered by ``Principal.can_see`` and every action is checked with ``Principal.require``.

Roles are ordered: a viewer reads; an operator also acknowledges alerts, silences and sets
maintenance windows; an admin also manages accounts, tokens and reads the audit log. A principal's
``sites`` is the alliance member's scope: ``None`` is every site (central operations), otherwise
only boxes, alerts and figures of those sites are visible, and an action on anything else is
refused as if it did not exist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.core.errors import LocalError


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class AccessDenied(LocalError):
    """The principal lacks the role for an action (the console answers 403 with this reason)."""


class LoginRefused(LocalError):
    """A login or an OpenID Connect callback that does not authenticate anyone; the reason is safe to log."""


class AuthMethod(enum.StrEnum):
    PASSWORD = "password"  # noqa: S105 (a method name) a local account's session
    OIDC = "oidc"  # a session opened by the site's OpenID provider
    TOKEN = "token"  # noqa: S105 (a method name) an API token (automation)


@dataclass(frozen=True)
class Principal:
    """The authenticated subject of one request."""

    name: str  # account name, OIDC "sub@issuer"-derived name, or "token:<id>"
    role: Role
    sites: frozenset[str] | None  # None = every site
    method: AuthMethod

    def can_see(self, site: str) -> bool:
        return self.sites is None or site in self.sites

    def has(self, role: Role) -> bool:
        return self.role.rank >= role.rank

    def require(self, role: Role, action: str) -> None:
        if not self.has(role):
            raise AccessDenied(f"{action} needs the {role.value} role; {self.name} is {self.role.value}")

    def narrowed(self, role: Role, sites: frozenset[str] | None) -> Principal:
        """This principal limited further (an API token never exceeds the account that made it)."""
        keep_role = role if role.rank <= self.role.rank else self.role
        keep_sites = sites if self.sites is None else self.sites if sites is None else self.sites & sites
        return Principal(self.name, keep_role, keep_sites, self.method)
