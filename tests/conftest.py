"""Fixtures shared across test packages: the cloud index backends, and the check that the run
leaves no process behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.adapters.postgres_cluster import PostgresCluster, server_bin_dir
from tests import leftovers
from tests.backends import CLUSTER_ROOTS, Backend, start_cluster
from tests.peers import _missing

LEFTOVER_GRACE_S = 30.0  # a process told to stop at a test's end may take a moment on a loaded machine


@pytest.fixture(scope="session", autouse=True)
def no_process_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run (an error at the last teardown) if a process the tests started still runs.

    Set up first, torn down last: every other fixture has stopped what it started by then.
    """
    yield
    left = leftovers.wait_gone([tmp_path_factory.getbasetemp(), *CLUSTER_ROOTS], LEFTOVER_GRACE_S)
    if left:
        pytest.fail(f"{len(left)} process(es) the tests started still run after the last test:\n"
                    + "\n".join(p.describe() for p in left), pytrace=False)


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
