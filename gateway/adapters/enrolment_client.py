"""The box's side of the enrolment endpoint (HTTPS, stdlib ``urllib`` + ``ssl``).

Trust on first contact is pinned: the CA served at ``/cacerts`` is accepted
only if its SHA-256 fingerprint equals the one that came with the token (or in
the signed bundle); every later request verifies the endpoint's certificate
against that CA. Refusals come back as ``EnrolmentError`` carrying the cloud's
own explanation ("token already used", "token expired", ...).
"""

from __future__ import annotations

import hmac
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.core.errors import PeerError

CACERTS = "/.well-known/est/cacerts"
ENROL = "/.well-known/est/simpleenroll"
REENROL = "/.well-known/est/simplereenroll"
TIMEOUT_S = 30.0
MAX_ERROR_BYTES = 16 * 1024


class EnrolmentError(PeerError):
    """The enrolment endpoint refused us or could not be reached; the message says what to check."""


def _open(request: urllib.request.Request, ctx: ssl.SSLContext) -> bytes:
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=TIMEOUT_S) as rsp:  # noqa: S310 - https only
            return bytes(rsp.read())
    except urllib.error.HTTPError as exc:
        raise EnrolmentError(_refusal(exc)) from exc
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        raise EnrolmentError(f"enrolment endpoint {request.full_url} unreachable: {exc}; "
                             "check the URL, the network and the clock") from exc


def _refusal(exc: urllib.error.HTTPError) -> str:
    """One line saying why the endpoint refused us, and when to try again if it said."""
    try:
        reason = str(json.loads(exc.read(MAX_ERROR_BYTES)).get("error", exc.reason))
    except (ValueError, AttributeError, OSError):
        reason = str(exc.reason)
    reason = " ".join(reason.split())[:300]  # one line, whatever the server sent
    retry = (exc.headers.get("Retry-After", "") if exc.headers else "").strip()
    when = f"; retry in {int(retry)} s" if retry.isdigit() and f"{int(retry)} s" not in reason else ""
    if exc.code == 429:
        return f"enrolment endpoint busy (429): {reason}{when}"
    return f"enrolment refused ({exc.code}): {reason}{when}"


def fetch_ca(url: str, pinned_sha256: str) -> bytes:
    """The fleet CA from ``url``, accepted only if it matches the pinned fingerprint."""
    if not url.startswith("https://"):
        raise EnrolmentError(f"enrolment URL must be https://, got {url!r}")
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # verified by the pin below, then the real context is used
    pem = _open(urllib.request.Request(url.rstrip("/") + CACERTS), insecure)  # noqa: S310 - https checked above
    try:
        got = x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()
    except ValueError as exc:
        raise EnrolmentError("the enrolment endpoint did not serve a PEM CA certificate") from exc
    if not hmac.compare_digest(got, pinned_sha256.lower().replace(":", "")):
        raise EnrolmentError("the fleet CA does not match the pinned fingerprint: wrong endpoint, "
                             "or someone is in the middle; do not proceed")
    return pem


def _context(ca_pem: bytes, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def _post(url: str, path: str, body: dict[str, Any], ctx: ssl.SSLContext) -> dict[str, Any]:
    if not url.startswith("https://"):
        raise EnrolmentError(f"enrolment URL must be https://, got {url!r}")
    request = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),  # noqa: S310
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        doc = json.loads(_open(request, ctx))
    except ValueError as exc:
        raise EnrolmentError("the enrolment endpoint answered something that is not JSON") from exc
    if not isinstance(doc, dict):
        raise EnrolmentError("the enrolment endpoint answered something that is not a JSON object")
    return doc


def enrol(url: str, ca_pem: bytes, token: str, csr_pem: bytes) -> dict[str, Any]:
    return _post(url, ENROL, {"token": token, "csr": csr_pem.decode()}, _context(ca_pem))


def reenrol(url: str, ca_pem: bytes, cert: Path, key: Path, csr_pem: bytes) -> dict[str, Any]:
    return _post(url, REENROL, {"csr": csr_pem.decode()}, _context(ca_pem, cert, key))


def server_time(url: str, ca_pem: bytes) -> float:
    """The enrolment endpoint's clock (its HTTP Date header), for a clock-skew check."""
    import email.utils

    request = urllib.request.Request(url.rstrip("/") + CACERTS)  # noqa: S310 - https, verified context
    try:
        with urllib.request.urlopen(request, context=_context(ca_pem), timeout=TIMEOUT_S) as rsp:  # noqa: S310
            date = rsp.headers.get("Date", "")
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        raise EnrolmentError(f"enrolment endpoint {url} unreachable: {exc}") from exc
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError) as exc:
        raise EnrolmentError("the enrolment endpoint sent no usable Date header") from exc
