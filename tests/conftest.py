"""Fixtures shared across test packages: the cloud index backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.adapters.postgres_cluster import PostgresCluster, server_bin_dir
from tests.backends import Backend, start_cluster
from tests.peers import _missing


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    if server_bin_dir() is None:
        _missing("the PostgreSQL server is not installed (apt-get install postgresql)")
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite")
    return Backend("postgres", request.getfixturevalue("pg_cluster"))
