"""The console's OpenID Connect client against a real OpenID provider (oidc-provider under node, over
HTTPS with a CA made by the test); the browser's part is played with httpx (tests/oidc_provider.py)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gateway.adapters.oidc_client import MAX_RESPONSE_BYTES, OidcClient
from gateway.cloud.authority.ca import FleetAuthority
from gateway.core.access import LoginRefused
from gateway.core.errors import ConfigError
from tests.oidc_provider import (
    IdpClient,
    RunningProvider,
    default_accounts,
    fleet_ca_tls,
    oidc_provider,
    sign_in,
)
from tests.peers import closed_port

REDIRECT = "https://127.0.0.1:8443/oidc/callback"


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[RunningProvider]:
    with oidc_provider(tmp_path, redirect_uris=[REDIRECT]) as provider:
        yield provider


def client_of(idp: RunningProvider, issuer: str | None = None, secret: str | None = None,
              ca_file: Path | None = None, timeout_s: float = 10.0) -> OidcClient:
    c = idp.client
    return OidcClient(issuer or idp.issuer, c.client_id, c.client_secret if secret is None else secret,
                      c.redirect_uris[0], ca_file=ca_file or idp.ca_file, timeout_s=timeout_s)


def signing_kids(idp: RunningProvider) -> set[str]:
    assert idp.ca_file is not None
    tls = ssl.create_default_context(cafile=str(idp.ca_file))
    return {key["kid"] for key in httpx.get(f"{idp.issuer}/jwks", verify=tls, timeout=30).json()["keys"]}


def test_login_returns_the_verified_claims_when_the_user_signs_in(idp: RunningProvider) -> None:
    client = client_of(idp)
    url, kept = client.begin()
    assert set(kept) == {"state", "nonce", "code_verifier"}
    assert "code_challenge_method=S256" in url and kept["code_verifier"] not in url

    claims = client.finish(sign_in(idp, url, "alice"), kept)

    assert claims["sub"] == "alice"
    assert claims["iss"] == idp.issuer and claims["aud"] == "console"
    assert claims["groups"] == ["mgw-operators"] and claims["sites"] == ["site-1"]
    assert claims["nonce"] == kept["nonce"]


def test_logins_all_return_their_own_claims_when_threads_sign_in_at_once(idp: RunningProvider) -> None:
    """One client shared by the console's handler threads: the caches are filled while logins run."""
    client = client_of(idp)
    logins = ["alice", "bob"] * 4
    results: dict[int, object] = {}

    def login(i: int) -> None:
        try:
            url, kept = client.begin()
            results[i] = client.finish(sign_in(idp, url, logins[i]), kept)["sub"]
        except Exception as exc:  # reported below, with the thread's index
            results[i] = exc

    threads = [threading.Thread(target=login, args=(i,)) for i in range(len(logins))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == dict(enumerate(logins))


def test_login_is_refused_when_the_state_is_tampered(idp: RunningProvider) -> None:
    client = client_of(idp)
    url, kept = client.begin()
    params = sign_in(idp, url, "alice")
    with pytest.raises(LoginRefused, match="state does not match"):
        client.finish({**params, "state": params["state"][:-1] + "x"}, kept)


def test_login_is_refused_when_the_callback_belongs_to_another_login(idp: RunningProvider) -> None:
    """A callback forged from the attacker's own login (login CSRF) meets the victim's kept state."""
    client = client_of(idp)
    _, victim = client.begin()
    url, _ = client.begin()
    with pytest.raises(LoginRefused, match="state does not match"):
        client.finish(sign_in(idp, url, "bob"), victim)


def test_login_is_refused_when_the_nonce_is_not_the_kept_one(idp: RunningProvider) -> None:
    client = client_of(idp)
    url, kept = client.begin()
    _, other = client.begin()
    with pytest.raises(LoginRefused, match="nonce"):
        client.finish(sign_in(idp, url, "alice"), {**kept, "nonce": other["nonce"]})


def test_login_is_refused_when_a_callback_is_replayed(idp: RunningProvider) -> None:
    client = client_of(idp)
    url, kept = client.begin()
    params = sign_in(idp, url, "alice")
    client.finish(params, kept)
    with pytest.raises(LoginRefused, match="invalid_grant"):
        client.finish(params, kept)


def test_login_is_refused_when_the_code_verifier_is_not_the_kept_one(idp: RunningProvider) -> None:
    """An authorization code stolen on its way back is useless without the verifier kept server-side."""
    client = client_of(idp)
    url, kept = client.begin()
    _, other = client.begin()
    with pytest.raises(LoginRefused, match="invalid_grant"):
        client.finish(sign_in(idp, url, "alice"), {**kept, "code_verifier": other["code_verifier"]})


def test_login_is_refused_when_the_iss_parameter_names_another_issuer(idp: RunningProvider) -> None:
    client = client_of(idp)
    url, kept = client.begin()
    params = sign_in(idp, url, "alice")
    with pytest.raises(LoginRefused, match="mix-up"):
        client.finish({**params, "iss": "https://evil.example"}, kept)


def test_login_is_refused_with_the_providers_reason_when_the_user_cancels(idp: RunningProvider) -> None:
    client = client_of(idp)
    url, kept = client.begin()
    params = sign_in(idp, url, "alice", cancel=True)
    assert params["error"] == "access_denied"
    with pytest.raises(LoginRefused, match="refused the login: access_denied"):
        client.finish(params, kept)


def test_login_error_reason_is_bounded_when_the_error_code_is_hostile(idp: RunningProvider) -> None:
    client = client_of(idp)
    _, kept = client.begin()
    with pytest.raises(LoginRefused) as refused:
        client.finish({"error": "x\n" + "A" * 10_000, "state": kept["state"]}, kept)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


def test_login_is_refused_when_the_client_secret_is_wrong(idp: RunningProvider) -> None:
    client = client_of(idp, secret="not-the-secret")
    url, kept = client.begin()
    with pytest.raises(LoginRefused, match="invalid_client") as refused:
        client.finish(sign_in(idp, url, "alice"), kept)
    assert "not-the-secret" not in str(refused.value)


def test_login_is_refused_when_the_code_was_issued_to_another_client(tmp_path: Path) -> None:
    """A code obtained through another client of the same provider is not redeemable by the console's."""
    clients = [IdpClient("console", "console-secret-" + "c" * 32, (REDIRECT,)),
               IdpClient("other", "other-secret-" + "o" * 32, (REDIRECT,))]
    with oidc_provider(tmp_path, clients=clients) as idp:
        console = client_of(idp)
        other = OidcClient(idp.issuer, "other", clients[1].client_secret, REDIRECT, ca_file=idp.ca_file)
        url, kept_other = other.begin()
        params = sign_in(idp, url, "alice")
        with pytest.raises(LoginRefused, match="invalid_grant"):
            console.finish(params, kept_other)


def test_login_succeeds_when_the_provider_rotated_its_signing_key_since_the_last_login(tmp_path: Path) -> None:
    """The cached JWKS lacks the new key's kid: the client fetches the key set again, once."""
    clients, accounts = [IdpClient("console", "console-secret-" + "c" * 32, (REDIRECT,))], default_accounts()
    with oidc_provider(tmp_path, clients=clients, accounts=accounts) as first:
        client = client_of(first)
        url, kept = client.begin()
        first_claims = client.finish(sign_in(first, url, "alice"), kept)
        old_kids = signing_kids(first)
    with oidc_provider(tmp_path, clients=clients, accounts=accounts, port=first.port) as second:
        assert signing_kids(second).isdisjoint(old_kids)
        url, kept = client.begin()  # discovery still cached; the same issuer
        claims = client.finish(sign_in(second, url, "alice"), kept)
    assert claims["sub"] == first_claims["sub"] == "alice"


def test_login_returns_the_claims_when_the_console_port_was_chosen_after_the_provider_started(
        tmp_path: Path) -> None:
    with oidc_provider(tmp_path, redirect_uris=["https://127.0.0.1/oidc/callback"], any_port=True) as idp:
        redirect = "https://127.0.0.1:38443/oidc/callback"
        client = OidcClient(idp.issuer, idp.client.client_id, idp.client.client_secret, redirect, ca_file=idp.ca_file)
        url, kept = client.begin()
        assert client.finish(sign_in(idp, url, "bob", redirect_uri=redirect), kept)["groups"] == ["mgw-admins"]
        elsewhere = OidcClient(idp.issuer, idp.client.client_id, idp.client.client_secret,
                               "https://127.0.0.1:38443/other", ca_file=idp.ca_file)
        url, _ = elsewhere.begin()
        with pytest.raises(AssertionError, match="no login page"):
            sign_in(idp, url, "bob", redirect_uri="https://127.0.0.1:38443/other")


def test_login_returns_the_claims_when_the_provider_certificate_is_made_by_the_fleet_ca(tmp_path: Path) -> None:
    authority = FleetAuthority(tmp_path / "pki")
    try:
        tls = fleet_ca_tls(authority, tmp_path / "idp-tls")
        with oidc_provider(tmp_path, redirect_uris=[REDIRECT], tls_files=tls) as idp:
            assert idp.ca_file == authority.ca_cert_path
            client = client_of(idp)
            url, kept = client.begin()
            assert client.finish(sign_in(idp, url, "alice"), kept)["sub"] == "alice"
    finally:
        authority.close()


def test_login_is_refused_when_discovery_names_another_issuer(idp: RunningProvider) -> None:
    client = client_of(idp, issuer=f"https://localhost:{idp.port}")  # same server, but not its issuer
    with pytest.raises(LoginRefused, match="issuer is not the configured issuer"):
        client.begin()


def test_login_is_refused_when_the_provider_certificate_is_not_trusted(idp: RunningProvider, tmp_path: Path) -> None:
    from tests.oidc_provider import make_tls

    other_ca, _, _ = make_tls(tmp_path / "other-ca")
    with pytest.raises(LoginRefused, match="unreachable"):
        client_of(idp, ca_file=other_ca).begin()


def test_login_is_refused_at_once_when_the_provider_is_unreachable() -> None:
    with closed_port() as port:
        client = OidcClient(f"https://127.0.0.1:{port}", "console", "secret", REDIRECT, timeout_s=5.0)
        started = time.monotonic()
        with pytest.raises(LoginRefused, match="unreachable"):
            client.begin()
        assert time.monotonic() - started < 5.0


def test_login_is_refused_within_the_timeout_when_the_provider_never_answers() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        client = OidcClient(f"https://127.0.0.1:{silent.getsockname()[1]}", "console", "secret", REDIRECT,
                            timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(LoginRefused, match="within 1s"):
            client.begin()
        assert time.monotonic() - started < 5.0


class _Huge(BaseHTTPRequestHandler):
    """Answers every GET with an endless JSON-ish body, counting what it could send."""

    sent = 0
    declare_length = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.declare_length:
            self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        chunk = b" " * 65536
        try:
            while type(self).sent < 256 << 20:
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def huge_server(declare_length: bool) -> Iterator[tuple[str, type[_Huge]]]:
    handler = type("Huge", (_Huge,), {"sent": 0, "declare_length": declare_length})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("declare_length", [False, True], ids=["streamed", "declared"])
def test_login_is_refused_after_a_bounded_read_when_the_provider_answers_too_much(declare_length: bool) -> None:
    with huge_server(declare_length) as (issuer, handler):
        client = OidcClient(issuer, "console", "secret", REDIRECT, timeout_s=10.0)
        with pytest.raises(LoginRefused, match=f"larger than {MAX_RESPONSE_BYTES} bytes"):
            client.begin()
    assert handler.sent < 64 << 20  # the client stopped reading long before the 256 MiB on offer


@pytest.mark.parametrize("issuer", ["http://idp.example", "ftp://127.0.0.1", "https://idp.example/?x=1", "idp"])
def test_client_is_refused_when_the_issuer_is_not_https(issuer: str) -> None:
    with pytest.raises(ConfigError):
        OidcClient(issuer, "console", "secret", REDIRECT)


def test_client_is_refused_when_the_ca_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA file"):
        OidcClient("https://idp.example", "console", "secret", REDIRECT, ca_file=tmp_path / "absent.pem")


def test_client_accepts_plain_http_when_the_issuer_is_loopback() -> None:
    assert OidcClient("http://127.0.0.1:5556", "console", "secret", REDIRECT).issuer == "http://127.0.0.1:5556"


def test_client_repr_hides_the_secret_when_logged() -> None:
    assert "s3cr3t" not in repr(OidcClient("https://idp.example", "console", "s3cr3t", REDIRECT))
