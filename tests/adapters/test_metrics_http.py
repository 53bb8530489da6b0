"""The /metrics listener (adapters/metrics_http.py), over a real socket: the exposition of its
samples, and the bearer token it may require; the token file's rules (cloud/backends.py)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.metrics_http import MetricsServer, Sample
from gateway.cloud import backends
from gateway.core.errors import ConfigError
from gateway.paths import Paths

TOKEN = "0123456789abcdef0123456789abcdef"


def samples() -> Iterator[Sample]:
    yield Sample("mgw_test_things", "things", 3.0, {"kind": "a"})


def scrape(port: int, authorization: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={} if authorization is None else {"Authorization": authorization})
    try:
        with urllib.request.urlopen(request, timeout=10) as rsp:  # noqa: S310 - our own listener on loopback
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, samples, token=request.param)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("server", [""], indirect=True)
def test_samples_are_served_to_anyone_when_no_token_is_configured(server: MetricsServer) -> None:
    assert server.port
    status, text = scrape(server.port)
    assert status == 200 and 'mgw_test_things{kind="a"} 3.0' in text


@pytest.mark.parametrize("server", [TOKEN], indirect=True)
def test_scrape_is_refused_with_401_unless_it_carries_the_bearer_token_when_one_is_configured(
        server: MetricsServer) -> None:
    assert server.port
    for wrong in (None, "", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer \u00e9"):
        status, text = scrape(server.port, wrong)
        assert status == 401 and "mgw_test_things" not in text, wrong
    status, text = scrape(server.port, f"Bearer {TOKEN}")
    assert status == 200 and 'mgw_test_things{kind="a"} 3.0' in text


def test_token_file_is_refused_with_its_reason_when_readable_by_others_or_too_short(tmp_path: Path) -> None:
    paths = Paths(tmp_path, tmp_path, tmp_path)
    assert backends.bearer_token(paths, "") == ""
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        backends.bearer_token(paths, "metrics.token")
    os.chmod(token_file, 0o600)
    assert backends.bearer_token(paths, "metrics.token") == TOKEN
    token_file.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        backends.bearer_token(paths, "metrics.token")
