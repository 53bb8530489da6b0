"""A real OpenID provider for tests: panva's oidc-provider under node (tests/oidc/provider.mjs).

``.ci/install`` installs it (``npm ci`` in tests/oidc). Without node or the package a test skips
locally and fails under ``CI=true`` (``tests.peers._missing``).

    with oidc_provider(tmp_path, redirect_uris=["https://127.0.0.1:8443/oidc/callback"]) as idp:
        client = OidcClient(idp.issuer, idp.client.client_id, idp.client.client_secret,
                            idp.client.redirect_uris[0], ca_file=idp.ca_file)

The provider serves HTTPS on 127.0.0.1 (port chosen by the kernel) with a certificate of a CA made
here (``idp.ca_file``; names 127.0.0.1 and localhost), issuer ``https://127.0.0.1:<port>``. Its
login page is a form (``#login-name``, ``#login-password``, ``#login-submit``; ``#login-cancel``
ends the flow with ``error=access_denied``); consent is implied. ``sign_in`` plays the browser with
httpx for tests that need no real browser.
"""

from __future__ import annotations

import datetime
import html
import ipaddress
import json
import re
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.cloud.authority.ca import FleetAuthority
from tests.peers import PEER_START_S, _end, _missing, wait_for

HERE = Path(__file__).parent / "oidc"
SCRIPT = HERE / "provider.mjs"
PACKAGE = HERE / "node_modules" / "oidc-provider" / "package.json"
DEFAULT_REDIRECT = "https://127.0.0.1:1/oidc/callback"


@dataclass(frozen=True)
class IdpClient:
    """A client registered at the provider."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str = "client_secret_basic"
    any_loopback_port: bool = False  # a redirect URI on 127.0.0.1 matches at any port (a console started later)


@dataclass(frozen=True)
class IdpAccount:
    """A user of the provider: login, password and the claims its ID token carries."""

    login: str
    password: str
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningProvider:
    issuer: str
    port: int
    ca_file: Path | None  # None when started without TLS
    clients: dict[str, IdpClient]
    accounts: dict[str, IdpAccount]
    log: Path

    @property
    def client(self) -> IdpClient:
        """The first client (the console)."""
        return next(iter(self.clients.values()))


def default_accounts() -> list[IdpAccount]:
    """alice: an operator of site-1; bob: an admin of every site (the console maps groups to roles)."""
    return [
        IdpAccount("alice", secrets.token_urlsafe(12),
                    {"preferred_username": "alice", "groups": ["mgw-operators"], "sites": ["site-1"]}),
        IdpAccount("bob", secrets.token_urlsafe(12),
                    {"preferred_username": "bob", "groups": ["mgw-admins"], "sites": []}),
    ]


def node() -> str:
    """The node binary and the installed provider package (skip, or fail under CI, when absent)."""
    binary = shutil.which("node")
    if binary is None:
        _missing("node not installed (apt-get install nodejs npm)")
    if not PACKAGE.is_file():
        _missing("oidc-provider not installed in tests/oidc (run .ci/install)")
    return binary


def make_tls(out: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test OpenID provider CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = out / "ca.pem", out / "server.pem", out / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def fleet_ca_tls(authority: FleetAuthority, out: Path) -> tuple[Path, Path, Path]:
    """The provider's (ca, cert, key) files with a certificate for 127.0.0.1 made by the fleet CA."""
    key_pem, cert_pem = authority.issue_with_key("oidc-provider", days=1, server_hosts=["127.0.0.1", "localhost"])
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "oidc-provider.pem", out / "oidc-provider.key"
    cert.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    return authority.ca_cert_path, cert, key


@contextmanager
def oidc_provider(tmp_path: Path, clients: Sequence[IdpClient] | None = None,
                  accounts: Sequence[IdpAccount] | None = None, redirect_uris: Sequence[str] = (DEFAULT_REDIRECT,),
                  any_port: bool = False, tls: bool = True, port: int = 0,
                  tls_files: tuple[Path, Path, Path] | None = None) -> Iterator[RunningProvider]:
    """A running provider (see the module docstring); stopped at the end of the block, no process left.

    ``clients`` defaults to one client "console" (client_secret_basic, a random secret) with
    ``redirect_uris`` (on 127.0.0.1 at any port when ``any_port``); ``accounts`` to
    ``default_accounts()``. ``port`` 0 lets the kernel choose; a given port (the one a provider
    of the same ``tmp_path`` had) restarts "the same" provider: same issuer, same CA, a new
    signing key. ``tls_files`` (ca, cert, key) serves a certificate made elsewhere, e.g. by the
    fleet CA (``fleet_ca_tls``), so that a browser trusting that one CA trusts the console and the
    provider."""
    binary = node()
    workdir = tmp_path / "oidc-provider"
    workdir.mkdir(parents=True, exist_ok=True)
    clients = list(clients or [IdpClient("console", secrets.token_urlsafe(32), tuple(redirect_uris),
                                         any_loopback_port=any_port)])
    accounts = list(accounts or default_accounts())
    port_file, log = workdir / "port", workdir / "provider.log"
    port_file.unlink(missing_ok=True)
    ca_file: Path | None = None
    served: dict[str, str] | None = None
    if tls:
        tls_dir = workdir / "tls"
        if tls_files is not None:
            ca_file, cert, key = tls_files
        elif (tls_dir / "server.key").exists():
            ca_file, cert, key = tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key"
        else:
            ca_file, cert, key = make_tls(tls_dir)
        served = {"cert": str(cert), "key": str(key)}
    config = workdir / "config.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps({
        "port": port, "port_file": str(port_file), "tls": served,
        "clients": [{"client_id": c.client_id, "client_secret": c.client_secret, "redirect_uris": list(c.redirect_uris),
                     "token_endpoint_auth_method": c.token_endpoint_auth_method,
                     "any_loopback_port": c.any_loopback_port} for c in clients],
        "accounts": {a.login: {"password": a.password, "claims": a.claims} for a in accounts},
    }))
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, str(SCRIPT), str(config)], cwd=HERE, stdout=out, stderr=subprocess.STDOUT)
    try:
        def listening() -> int:  # 0 until the provider wrote its port
            if proc.poll() is not None:
                raise AssertionError(f"oidc-provider exited {proc.returncode}: {log.read_text(errors='replace')}")
            return int(port_file.read_text()) if port_file.exists() else 0

        bound = wait_for(listening, PEER_START_S, "oidc-provider to listen")
        scheme = "https" if tls else "http"
        yield RunningProvider(f"{scheme}://127.0.0.1:{bound}", bound, ca_file, {c.client_id: c for c in clients},
                              {a.login: a for a in accounts}, log)
    finally:
        _end(proc)


# --- the browser's part, played with httpx -------------------------------------------------------

def _form_action(page: str, form_id: str) -> str:
    match = re.search(rf'<form id="{form_id}" method="post" action="([^"]+)"', page)
    assert match, f"no form {form_id!r} in the provider's page: {page[:500]}"
    return html.unescape(match.group(1))


def _to_redirect(http: httpx.Client, response: httpx.Response, redirect_uri: str) -> dict[str, str] | httpx.Response:
    """Follow the provider's redirects until one goes to ``redirect_uri`` (its query, as a dict) or a page."""
    for _ in range(10):
        if response.status_code not in (302, 303):
            return response
        location = urljoin(str(response.url), response.headers["location"])
        if location.split("?", 1)[0] == redirect_uri:
            return dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))
        response = http.get(location)
    raise AssertionError("too many redirects at the provider")


def sign_in(provider: RunningProvider, authorization_url: str, login: str, password: str | None = None,
            cancel: bool = False, redirect_uri: str | None = None) -> dict[str, str]:
    """What the browser would bring back to the redirect URI after signing in (or cancelling) at the provider."""
    redirect_uri = redirect_uri or provider.client.redirect_uris[0]
    verify = ssl.create_default_context(cafile=str(provider.ca_file) if provider.ca_file else None)
    with httpx.Client(verify=verify, timeout=30.0, follow_redirects=False) as http:
        page = _to_redirect(http, http.get(authorization_url), redirect_uri)
        assert isinstance(page, httpx.Response) and page.status_code == 200, f"no login page: {page}"
        if cancel:
            done = http.post(urljoin(str(page.url), _form_action(page.text, "cancel")))
        else:
            secret = provider.accounts[login].password if password is None else password
            done = http.post(urljoin(str(page.url), _form_action(page.text, "login")),
                             data={"login": login, "password": secret})
        result = _to_redirect(http, done, redirect_uri)
        assert isinstance(result, dict), f"the provider did not redirect back: {result.status_code} {result.text[:500]}"
        return result
