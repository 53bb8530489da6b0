"""One file over HTTPS, bounded and checked: the ``update`` remote command's bundle.

The URL comes from a signed command, but what answers it is still outside: the server must present
a certificate the box trusts (the system's CAs, and the fleet CA the box was provisioned with), no
redirect is followed, the body is written as it arrives and cut at ``max_bytes``, and the file is
kept only if its SHA-256 is the one the command named. Otherwise ``LocalError`` and no file.
"""

from __future__ import annotations

import hashlib
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.adapters import blobs
from gateway.core.errors import LocalError

TIMEOUT_S = 60.0
PIECE_BYTES = 1 << 20


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is answered as the error it is


def fetch(url: str, dest: Path, sha256: str, max_bytes: int, ca_file: str = "") -> int:
    """Download ``url`` to ``dest`` (0600, atomically); its size. ``LocalError`` on any failure."""
    if not url.startswith("https://"):
        raise LocalError("update bundles are fetched over https only")
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    partial = dest.with_name(dest.name + ".part")
    digest, size = hashlib.sha256(), 0
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept-Encoding": "identity"}),  # noqa: S310 - https only
                         timeout=TIMEOUT_S) as answer, open(partial, "wb") as out:
            partial.chmod(0o600)
            while piece := answer.read(PIECE_BYTES):
                size += len(piece)
                if size > max_bytes:
                    raise LocalError(f"the update bundle is larger than {max_bytes} bytes")
                digest.update(piece)
                out.write(piece)
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError) as exc:
        blobs.remove(partial)
        raise LocalError(f"update bundle download failed: {getattr(exc, 'reason', exc)}") from exc
    except LocalError:
        blobs.remove(partial)
        raise
    if digest.hexdigest() != sha256:
        blobs.remove(partial)
        raise LocalError("the update bundle's SHA-256 is not the one the command named")
    blobs.adopt_atomic(partial, dest)
    return size
