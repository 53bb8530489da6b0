"""Fuzz the bundle reader and the export path in a child process with a memory limit and a
per-case time limit (tests/appliance/fuzz_usb.py), seeded with real bundles; the classes found
against the box (nesting, huge numbers, forged log lines, wrong types) are fixed cases in it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMORY_BYTES = 1 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def fuzz(what: str, seed: int, cases: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.appliance.fuzz_usb", what, str(seed), str(cases)],
                          capture_output=True, text=True, timeout=600, preexec_fn=_limited, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("seed", [1, 2])
def test_bundle_reader_only_verifies_or_refuses_when_fuzzed_under_memory_and_time_limits(seed: int) -> None:
    out = fuzz("bundle", seed, 400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bundle: 0 failure(s)" in out.stderr


def test_export_matches_its_manifest_and_touches_nothing_outside_when_fuzzed_with_hostile_sticks() -> None:
    out = fuzz("export", 7, 25)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "export: 0 failure(s)" in out.stderr
