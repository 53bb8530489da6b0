"""The ID token checks of the console's OpenID Connect client, against a hostile provider.

A real provider signs honest tokens only (tests/adapters/test_oidc_client.py), so the forged
ones come from a small provider written here: a real HTTP server on loopback (the client's
loopback exception) that serves discovery and a JWKS like any provider and answers the token
request with whatever token the test made, honest or not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.adapters.oidc_client import OidcClient
from gateway.core.access import LoginRefused

REDIRECT = "https://127.0.0.1:8443/oidc/callback"
CLIENT_ID = "console"


@dataclass
class HostileProvider:
    issuer: str = ""
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    id_token: str = ""  # what the token endpoint answers next
    jwks_fetches: int = 0


def _handler(idp: HostileProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _json(self, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/.well-known/openid-configuration":
                self._json({"issuer": idp.issuer, "authorization_endpoint": f"{idp.issuer}/auth",
                            "token_endpoint": f"{idp.issuer}/token", "jwks_uri": f"{idp.issuer}/jwks",
                            "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
                            "code_challenge_methods_supported": ["S256"]})
            elif self.path == "/jwks":
                idp.jwks_fetches += 1
                self._json({"keys": [idp.key.as_dict(private=False)]})
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._json({"id_token": idp.id_token, "access_token": "opaque", "token_type": "Bearer"})

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def hostile_provider() -> Iterator[HostileProvider]:
    idp = HostileProvider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(idp))
    idp.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield idp
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def honest_claims(idp: HostileProvider, nonce: str) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": idp.issuer, "sub": "alice", "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": nonce}


def signed(key: RSAKey, claims: dict[str, Any], kid: str = "k1") -> str:
    return jwt.encode({"alg": "RS256", "kid": kid}, claims, key)


def _none(idp: HostileProvider, claims: dict[str, Any]) -> str:
    return _unsigned({"alg": "none", "kid": "k1"}, claims) + "."


def _hmac_with_public_key(idp: HostileProvider, claims: dict[str, Any]) -> str:
    """Algorithm confusion: HS256 keyed with the provider's public key, which anyone has."""
    public_pem = idp.key.public_key.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    head = _unsigned({"alg": "HS256", "kid": "k1"}, claims)
    return f"{head}.{_b64(hmac.new(public_pem, head.encode(), hashlib.sha256).digest())}"


def _other_key_same_kid(idp: HostileProvider, claims: dict[str, Any]) -> str:
    return signed(RSAKey.generate_key(2048), claims, kid="k1")


def _other_key_unknown_kid(idp: HostileProvider, claims: dict[str, Any]) -> str:
    return signed(RSAKey.generate_key(2048), claims, kid="k-attacker")


def _claims_changed(**changes: Any) -> Any:
    def make(idp: HostileProvider, claims: dict[str, Any]) -> str:
        changed = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return signed(idp.key, changed)
    return make


FORGERIES = {  # what the token endpoint answers -> the reason the client gives
    "alg none": (_none, "algorithm we refuse: none"),
    "HS256 keyed with the public key": (_hmac_with_public_key, "algorithm we refuse: HS256"),
    "another key under the provider's kid": (_other_key_same_kid, "bad_signature"),
    "another key under an unknown kid": (_other_key_unknown_kid, "key not in the provider's JWKS"),
    "for another client": (_claims_changed(aud="other"), "'aud'"),
    "for several audiences without azp": (_claims_changed(aud=[CLIENT_ID, "other"]), "'azp'"),
    "from another issuer": (_claims_changed(iss="https://evil.example"), "'iss'"),
    "expired": (_claims_changed(exp=int(time.time()) - 3600), "expired"),
    "issued in the future": (_claims_changed(iat=int(time.time()) + 3600), "issued in the future"),
    "without a nonce": (_claims_changed(nonce=None), "'nonce'"),
    "without a subject": (_claims_changed(sub=None), "'sub'"),
}


def test_id_token_is_accepted_when_it_is_honest() -> None:
    with hostile_provider() as idp:
        client = OidcClient(idp.issuer, CLIENT_ID, "secret", REDIRECT)
        _, kept = client.begin()
        idp.id_token = signed(idp.key, honest_claims(idp, kept["nonce"]))
        assert client.finish({"code": "c", "state": kept["state"]}, kept)["sub"] == "alice"


@pytest.mark.parametrize(("forge", "reason"), FORGERIES.values(), ids=FORGERIES.keys())
def test_id_token_is_refused_when_it_is_forged_or_not_for_this_login(forge: Any, reason: str) -> None:
    with hostile_provider() as idp:
        client = OidcClient(idp.issuer, CLIENT_ID, "secret", REDIRECT)
        _, kept = client.begin()
        idp.id_token = forge(idp, honest_claims(idp, kept["nonce"]))
        with pytest.raises(LoginRefused, match="ID token") as refused:
            client.finish({"code": "c", "state": kept["state"]}, kept)
        assert reason in str(refused.value)
        assert idp.jwks_fetches <= 2  # an unknown kid costs one more fetch, not one per attempt


def test_id_token_is_refused_when_it_is_not_a_jws() -> None:
    with hostile_provider() as idp:
        client = OidcClient(idp.issuer, CLIENT_ID, "secret", REDIRECT)
        _, kept = client.begin()
        idp.id_token = "not.a" + "x" * 1000
        with pytest.raises(LoginRefused, match="ID token"):
            client.finish({"code": "c", "state": kept["state"]}, kept)
