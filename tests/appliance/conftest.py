"""The appliance tests use the same real loopback deployment as tests/system."""

from tests.system.conftest import deploy  # noqa: F401 - the fixture, shared
