"""The pure core and the configuration type-check under ``mypy --strict`` (STYLE.md section 6).

The strictness comes from pyproject.toml (``[[tool.mypy.overrides]]`` for ``gateway.core.*`` and
``gateway.config``); adapters are not held to it yet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_and_config_pass_mypy_strict_when_type_checked(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "gateway/core", "gateway/config.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
