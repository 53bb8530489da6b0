"""The dataset reader's fuzz target (tests/fuzz_dataset.py) in a child process under a memory
limit (RLIMIT_AS) and a per-case time limit, with the issue's regression cases fixed.

MGW_FUZZ_CASES raises the number of mutated cases for a longer run (default keeps this test
near 10 s); MGW_FUZZ_SEED picks another sequence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEMORY_MIB, CASE_S = 512, 5.0


def _fuzz(seed: int, cases: int) -> tuple[int, dict[str, object], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-m", "tests.fuzz_dataset", str(seed), str(cases), str(MEMORY_MIB),
                          str(CASE_S)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    return out.returncode, (json.loads(lines[-1]) if lines else {}), out.stderr[-2000:]


def test_reader_holds_its_invariant_within_memory_and_time_when_real_files_are_mutated_in_every_syntax() -> None:
    seed = int(os.environ.get("MGW_FUZZ_SEED", "20261124"))
    code, summary, stderr = _fuzz(seed, int(os.environ.get("MGW_FUZZ_CASES", "5000")))
    assert code == 0, (summary, stderr)
    assert summary["rlimit_as"] == MEMORY_MIB << 20
    assert set(summary["families"]) >= {"implicit LE", "explicit LE", "explicit BE", "deflated", "encapsulated"}
    outcomes = summary["outcomes"]
    assert isinstance(outcomes, dict) and outcomes.get("ok", 0) > 0 and outcomes.get("structure", 0) > 0
    regression = summary["regression"]
    assert isinstance(regression, dict)
    assert regression["deflate bomb"]["outcome"] == "limit" and regression["deflate bomb"]["bytes"] > 1_000_000
    assert regression["item flood"]["outcome"] == "limit" and regression["item flood"]["bytes"] < 2500
    assert regression["truncation length"]["outcome"] == "ok"
    assert all(r["seconds"] < CASE_S for r in regression.values())
