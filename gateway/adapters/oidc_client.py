"""OpenID Connect login, the console's side (the relying party): authorization code flow with PKCE.

The only importer of authlib (the OAuth 2 and OpenID Connect rules: the authorization URL, the S256
code challenge, the ID token's claims), of joserfc (authlib's JOSE: the ID token's signature
against the provider's JWKS) and of httpx (the three requests to the provider). The console's
login routes use it through two calls:

* ``begin()`` -> (the authorization URL to redirect the browser to, the values to keep until the
  callback: ``state``, ``nonce``, ``code_verifier``; the caller keeps them server-side, in the
  login's session, never where the browser could choose them).
* ``finish(callback query params, kept values)`` -> the ID token's verified claims, or
  ``LoginRefused`` with a reason safe to log (never a secret, never a token, bounded length).

Rules. The callback is hostile: ``state`` must equal the kept one (constant-time), an ``iss``
parameter (RFC 9207) must be the configured issuer, the code is bounded; an ``error`` parameter
refuses with the provider's error code (sanitised). The ID token comes from the token endpoint
(client_secret_basic, or client_secret_post when the provider offers only that) and is verified:
signature with a key of the provider's JWKS (fetched again once when the token names an unknown
``kid``), an algorithm of ``ALLOWED_ALGORITHMS`` (never ``none``, never HMAC), ``iss``, ``aud``
(and ``azp``), ``exp``/``iat`` with ``LEEWAY_S``, ``nonce`` equal to the kept one, ``at_hash``.
Discovery (``/.well-known/openid-configuration``) is fetched lazily, cached ``METADATA_TTL_S``,
and refused unless its ``issuer`` is exactly the configured one. Every response is read up to
``MAX_RESPONSE_BYTES`` (uncompressed: we ask for identity encoding, and refuse any other) within
``timeout_s`` (for the connection, each read, and the whole body of each request; ``finish`` makes
up to three requests, discovery and JWKS only when not cached); a provider that is down, slow or
huge is a ``LoginRefused``, never a hang. No redirects are followed, no proxy is taken from the
environment.

The issuer must be ``https://``; ``http://`` is accepted only for a loopback host (127.0.0.0/8,
::1, localhost), which exists for the tests' provider, not for a deployment. ``ca_file`` is the CA
bundle the provider's certificate must chain to (a hospital's own CA); without it, the system's.

Thread safe: Starlette runs handlers in threads; the discovery and JWKS caches sit behind a lock,
and each call opens its own HTTP connection pool.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.core.access import LoginRefused
from gateway.core.errors import ConfigError

MAX_RESPONSE_BYTES = 1 << 20  # discovery, JWKS and token responses are a few KiB
METADATA_TTL_S = 3600.0  # discovery and JWKS are fetched again after this (and JWKS on an unknown kid)
LEEWAY_S = 60  # clock skew allowed on exp and iat
ALLOWED_ALGORITHMS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")  # asymmetric only: no "none", no HS*
SCOPE = "openid profile groups"  # groups: the provider's group (and site) claims, when it has the scope
MAX_PARAM_CHARS = 4096  # a callback's code, state or iss
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ProviderMetadata:
    """What the console uses of the provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_method: str  # client_secret_basic or client_secret_post
    algorithms: tuple[str, ...]  # the provider's ID token algorithms that we also allow
    iss_parameter: bool  # the provider adds iss to its authorization responses (RFC 9207)


def check_issuer(issuer: str) -> None:
    """Raise ConfigError unless ``issuer`` is an https URL (or http on a loopback host) without query or fragment."""
    parts = urlsplit(issuer)
    if parts.query or parts.fragment or not parts.hostname:
        raise ConfigError(f"OpenID issuer {issuer!r} must be a URL with a host and no query or fragment")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return
    raise ConfigError(f"OpenID issuer {issuer!r} must be https:// (http:// only on a loopback address)")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint(url: object, what: str, issuer: str) -> str:
    """An endpoint of the discovery document: a URL under the issuer's rules, https when the issuer is."""
    if not isinstance(url, str) or len(url) > MAX_PARAM_CHARS:
        raise LoginRefused(f"OpenID discovery: {what} missing or not a string")
    try:
        check_issuer(url.split("?", 1)[0])
    except ConfigError as exc:
        raise LoginRefused(f"OpenID discovery: {what} is not https") from exc
    if urlsplit(issuer).scheme == "https" and urlsplit(url).scheme != "https":
        raise LoginRefused(f"OpenID discovery: {what} is not https")
    return url


def parse_metadata(doc: Mapping[str, Any], issuer: str) -> ProviderMetadata:
    """The discovery document as typed values; LoginRefused when it is not this issuer's or lacks what we need."""
    if doc.get("issuer") != issuer:
        raise LoginRefused("OpenID discovery: the document's issuer is not the configured issuer")
    methods = doc.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
    if not isinstance(methods, list):
        raise LoginRefused("OpenID discovery: token_endpoint_auth_methods_supported is not a list")
    method = next((m for m in ("client_secret_basic", "client_secret_post") if m in methods), None)
    if method is None:
        raise LoginRefused("OpenID discovery: the provider offers neither client_secret_basic nor client_secret_post")
    offered = doc.get("id_token_signing_alg_values_supported", ["RS256"])
    algorithms = tuple(a for a in ALLOWED_ALGORITHMS if isinstance(offered, list) and a in offered)
    if not algorithms:
        raise LoginRefused("OpenID discovery: no ID token signing algorithm we accept")
    challenges = doc.get("code_challenge_methods_supported", ["S256"])
    if not isinstance(challenges, list) or "S256" not in challenges:
        raise LoginRefused("OpenID discovery: the provider does not support PKCE S256")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=_endpoint(doc.get("authorization_endpoint"), "authorization_endpoint", issuer),
        token_endpoint=_endpoint(doc.get("token_endpoint"), "token_endpoint", issuer),
        jwks_uri=_endpoint(doc.get("jwks_uri"), "jwks_uri", issuer),
        token_auth_method=method, algorithms=algorithms,
        iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True)


def provider_error(code: str) -> str:
    """A provider's error code as safe to log: the code if it looks like one, otherwise a placeholder."""
    return code if _ERROR_CODE.fullmatch(code) else "(malformed error code)"


class OidcClient:
    """The console as an OpenID Connect client of one provider (see the module docstring)."""

    def __init__(self, issuer: str, client_id: str, client_secret: str, redirect_uri: str,
                 ca_file: Path | None = None, timeout_s: float = 10.0) -> None:
        check_issuer(issuer)
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.timeout_s = timeout_s
        try:
            self._tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"OpenID CA file {ca_file}: {exc}") from exc
        self._lock = threading.Lock()
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._jwks: tuple[float, KeySet] | None = None

    def __repr__(self) -> str:  # never the secret
        return f"OidcClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # --- the protocol --------------------------------------------------------------------------

    def begin(self) -> tuple[str, dict[str, str]]:
        """The authorization URL and the values to keep until the callback; LoginRefused if the provider is unusable."""
        with self._http() as http:
            meta = self._provider(http)
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48)
        url = prepare_grant_uri(meta.authorization_endpoint, self.client_id, "code", redirect_uri=self.redirect_uri,
                                scope=SCOPE, state=state, nonce=nonce,
                                code_challenge=create_s256_code_challenge(verifier), code_challenge_method="S256")
        return str(url), {"state": state, "nonce": nonce, "code_verifier": verifier}

    def finish(self, params: Mapping[str, str], kept: Mapping[str, str]) -> Mapping[str, Any]:
        """The verified ID token claims of the login the callback ``params`` complete; LoginRefused otherwise."""
        if "error" in params:
            raise LoginRefused(f"the OpenID provider refused the login: {provider_error(params['error'])}")
        state, nonce, verifier = kept.get("state"), kept.get("nonce"), kept.get("code_verifier")
        if not state or not nonce or not verifier:
            raise LoginRefused("OpenID callback without a login in progress")
        if not _equal(params.get("state", ""), state):
            raise LoginRefused("OpenID callback: state does not match the login in progress (forged or stale)")
        code = params.get("code", "")
        if not code or len(code) > MAX_PARAM_CHARS or not code.isprintable():
            raise LoginRefused("OpenID callback without a valid code")
        with self._http() as http:
            meta = self._provider(http)
            if ("iss" in params or meta.iss_parameter) and params.get("iss") != self.issuer:
                raise LoginRefused("OpenID callback: iss is not the configured issuer (mix-up)")
            tokens = self._redeem(http, meta, code, verifier)
            id_token = tokens.get("id_token")
            if not isinstance(id_token, str):
                raise LoginRefused("OpenID token response without an id_token")
            access_token = tokens.get("access_token")
            return self._verify(http, meta, id_token, nonce, access_token if isinstance(access_token, str) else None)

    # --- the provider's documents ----------------------------------------------------------------

    def _provider(self, http: httpx.Client) -> ProviderMetadata:
        with self._lock:
            cached = self._metadata
        if cached and time.monotonic() - cached[0] < METADATA_TTL_S:
            return cached[1]
        doc = self._json(http, "GET", self.issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery")
        meta = parse_metadata(doc, self.issuer)
        with self._lock:
            self._metadata = (time.monotonic(), meta)
        return meta

    def _keys(self, http: httpx.Client, meta: ProviderMetadata, fresh: bool) -> KeySet:
        with self._lock:
            cached = self._jwks
        if cached and not fresh and time.monotonic() - cached[0] < METADATA_TTL_S:
            return cached[1]
        doc = self._json(http, "GET", meta.jwks_uri, "JWKS")
        try:
            keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise LoginRefused(f"OpenID JWKS unusable: {type(exc).__name__}") from exc
        with self._lock:
            self._jwks = (time.monotonic(), keys)
        return keys

    # --- the token request and the ID token ------------------------------------------------------

    def _redeem(self, http: httpx.Client, meta: ProviderMetadata, code: str, verifier: str) -> dict[str, Any]:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": verifier}
        headers = {}  # client_secret_basic: id and secret each form-encoded, then Basic (RFC 6749 2.3.1)
        if meta.token_auth_method == "client_secret_basic":  # noqa: S105 (a method name) RFC 6749 2.3.1
            pair = f"{quote(self.client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form.update(client_id=self.client_id, client_secret=self._client_secret)
        return self._json(http, "POST", meta.token_endpoint, "token endpoint", data=form, headers=headers)

    def _verify(self, http: httpx.Client, meta: ProviderMetadata, id_token: str, nonce: str,
                access_token: str | None) -> dict[str, Any]:
        try:
            header = jws.extract_compact(id_token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            raise LoginRefused("OpenID ID token is not a compact JWS") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in meta.algorithms:
            raise LoginRefused(f"OpenID ID token signed with an algorithm we refuse: {provider_error(str(alg))}")
        keys = self._keys(http, meta, fresh=False)
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            keys = self._keys(http, meta, fresh=True)  # the provider may have rotated its keys
            if not any(k.kid == kid for k in keys.keys):
                raise LoginRefused("OpenID ID token signed with a key not in the provider's JWKS")
        try:
            token = jwt.decode(id_token, keys, algorithms=list(meta.algorithms))
            claims = CodeIDToken(token.claims, token.header, options={
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.client_id},
                "sub": {"essential": True}, "nonce": {"essential": True}},
                params={"nonce": nonce, "client_id": self.client_id, "access_token": access_token})
            claims.validate(now=int(time.time()), leeway=LEEWAY_S)
        except (JoseError, ValueError) as exc:
            raise LoginRefused(f"OpenID ID token refused: {_jose_reason(exc)}") from exc
        if not _equal(str(claims.get("nonce", "")), nonce):
            raise LoginRefused("OpenID ID token refused: nonce does not match the login in progress (replayed)")
        return dict(claims)

    # --- bounded HTTP ----------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        return httpx.Client(verify=self._tls, timeout=httpx.Timeout(self.timeout_s), follow_redirects=False,
                            trust_env=False, headers={"Accept": "application/json", "Accept-Encoding": "identity"})

    def _json(self, http: httpx.Client, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        body, status = self._fetch(http, method, url, what, **kwargs)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise LoginRefused(f"OpenID {what}: the answer is not JSON (HTTP {status})") from exc
        if not isinstance(doc, dict):
            raise LoginRefused(f"OpenID {what}: the answer is not a JSON object (HTTP {status})")
        if status != 200:
            error = doc.get("error")
            code = provider_error(error) if isinstance(error, str) else "no error code"
            raise LoginRefused(f"OpenID {what} answered HTTP {status}: {code}")
        return doc

    def _fetch(self, http: httpx.Client, method: str, url: str, what: str, **kwargs: Any) -> tuple[bytes, int]:
        """The body (at most MAX_RESPONSE_BYTES, within about timeout_s) and the status of one request."""
        deadline = time.monotonic() + self.timeout_s
        body = bytearray()
        try:
            with http.stream(method, url, **kwargs) as response:
                if response.headers.get("content-encoding", "identity").lower() != "identity":
                    raise LoginRefused(f"OpenID {what}: compressed answer refused")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                    raise LoginRefused(f"OpenID {what}: answer larger than {MAX_RESPONSE_BYTES} bytes")
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise LoginRefused(f"OpenID {what}: answer larger than {MAX_RESPONSE_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise LoginRefused(f"OpenID {what}: answer took longer than {self.timeout_s:g}s")
                return bytes(body), response.status_code
        except httpx.TimeoutException as exc:
            raise LoginRefused(f"OpenID {what}: no answer within {self.timeout_s:g}s") from exc
        except httpx.HTTPError as exc:
            raise LoginRefused(f"OpenID {what} unreachable: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _equal(given: str, kept: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), kept.encode("utf-8", "replace"))


def _jose_reason(exc: Exception) -> str:
    description = getattr(exc, "description", None) or getattr(exc, "error", None) or type(exc).__name__
    return str(description)[:200]
