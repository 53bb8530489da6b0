"""The whole ``gateway`` package type-checks under ``mypy --strict`` (docs/development.md, "Types").

Strictness comes from pyproject.toml (``[tool.mypy] strict = true``), so an editor's mypy and this
test agree; no module is excused by an override.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_strict_for_every_module_when_configured_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config.get("strict") is True
    loosened = [o for o in config.get("overrides", []) if any(k.startswith(("disallow", "allow", "ignore_errors",
                                                                              "strict", "check", "warn"))
                                                              for k in o if k != "module")]
    assert not loosened, f"an override loosens mypy for some modules: {loosened}"


def test_gateway_has_no_mypy_error_when_checked_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "gateway"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
