"""What provisioning records for the DICOM listener's address (`[dicom] bind_host`)."""

from __future__ import annotations

import pytest

from gateway.core.errors import ConfigError
from gateway.edge.provision import _dicom_table


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])  # noqa: S104 - the refused wildcards
def test_provisioning_refuses_every_interface_when_the_bundle_does_not_allow_it(bind: str) -> None:
    with pytest.raises(ConfigError, match="allow_any_address"):
        _dicom_table({"bind_host": bind})
    assert _dicom_table({"bind_host": bind, "allow_any_address": True})["bind_host"] == bind


def test_provisioning_records_the_given_address_when_it_is_the_modality_side() -> None:
    tables = {"allowed_peers": ["CT@192.168.10.21"], "bind_host": "192.168.10.5"}
    assert _dicom_table(tables)["bind_host"] == "192.168.10.5"
