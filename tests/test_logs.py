"""gateway/logs.py: what the service's logging lets through, in a real process."""

from __future__ import annotations

import subprocess
import sys

_INVALID_VALUES = r"""
from gateway import logs
logs.setup("INFO")
from pydicom import config
from pydicom.dataelem import DataElement
DataElement(0x00100030, "DA", "Secret-19700101", validation_mode=config.WARN)
DataElement(0x00100010, "PN", "Secret^Name=A=B=C", validation_mode=config.WARN)
import logging
logging.getLogger("gateway.test").warning("ours still logs")
"""


def test_pydicom_never_logs_or_warns_a_value_when_it_reads_an_invalid_one_under_the_service_logging() -> None:
    done = subprocess.run([sys.executable, "-c", _INVALID_VALUES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ours still logs" in done.stderr
    assert "Secret" not in done.stderr + done.stdout
