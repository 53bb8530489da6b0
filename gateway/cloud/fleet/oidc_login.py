"""OpenID Connect login for the console: the client's protocol, and the ID token's claims made a principal.

The client itself (authorization URL, code exchange, ID token verification: authlib) is
``adapters/oidc_client.py``; the console's routes (``starlette_auth.py``) use it through
``OidcLogin`` and keep what it must remember between the redirect and the callback in a
short-lived server-side pre-login record (``auth_store`` ``oidc_pending``), keyed by a random cookie.

``principal_from_claims`` applies ``[fleet.oidc]``: the user is named ``oidc:<preferred_username or
sub>``; their role is the highest that ``role_map`` gives any value of ``roles_claim``, and a
user with none is refused; their sites are ``sites_claim``'s values (when that claim is
configured, a user without it is refused rather than given every site).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.cloud.fleet.accounts import parse_sites
from gateway.config import OidcSettings
from gateway.core.access import AuthMethod, LoginRefused, Principal, Role
from gateway.core.errors import AccountError

PENDING_S = 600.0  # a pre-login older than this is refused at the callback
_USER = re.compile(r"^[\w.@+-]{1,64}$")


class OidcLogin(Protocol):
    def begin(self) -> tuple[str, dict[str, str]]:
        """(the authorization URL to redirect the browser to, the values to keep until the callback:
        state, nonce, code_verifier)."""
        ...

    def finish(self, params: Mapping[str, str], kept: Mapping[str, str]) -> Mapping[str, Any]:
        """The callback's query parameters -> the verified ID token's claims; raises ``LoginRefused``."""
        ...


def _values(claim: Any) -> list[str]:
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, list | tuple):
        return [v for v in claim if isinstance(v, str)]
    return []


def role_of(claims: Mapping[str, Any], settings: OidcSettings) -> Role | None:
    mapping: dict[str, Role] = {}
    for entry in settings.role_map:
        value, _, role = entry.rpartition("=")
        mapping[value] = Role(role)
    roles = [mapping[v] for v in _values(claims.get(settings.roles_claim)) if v in mapping]
    return max(roles, key=lambda r: r.rank) if roles else None


def principal_from_claims(claims: Mapping[str, Any], settings: OidcSettings) -> Principal:
    """The principal of a verified ID token; ``LoginRefused`` naming why not."""
    user = claims.get("preferred_username") or claims.get("sub")
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise LoginRefused("the ID token names no usable user (preferred_username or sub)")
    name = f"oidc:{user}"
    role = role_of(claims, settings)
    if role is None:
        raise LoginRefused(f"{name} has no role mapped from the {settings.roles_claim!r} claim")
    sites: frozenset[str] | None = None
    if settings.sites_claim:
        try:
            sites = parse_sites(_values(claims.get(settings.sites_claim)))
        except AccountError as exc:
            raise LoginRefused(f"{name}: {exc}") from exc
        if sites is None:
            raise LoginRefused(f"{name} has no sites in the {settings.sites_claim!r} claim")
    return Principal(name, role, sites, AuthMethod.OIDC)
