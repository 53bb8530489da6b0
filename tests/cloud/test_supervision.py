"""A restart shows: the start record counts unclean restarts, /metrics exports them, and the
Prometheus rules shipped in deploy/prometheus/ alert on them (checked by promtool itself)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from gateway.supervision import StartRecord
from tests.peers import _missing

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_start_after_a_crash_counts_as_unclean_when_the_previous_run_never_stopped(tmp_path: Path) -> None:
    first = StartRecord(tmp_path, "ingest-ingest-1", lambda: 100.0)
    assert first.started().unclean == 0
    first.stopped()  # a clean stop
    second = StartRecord(tmp_path, "ingest-ingest-1", lambda: 200.0)
    assert (second.started().starts, second.current.unclean) == (2, 0)
    # no stopped(): the process died (kill -9, a dead loop, the watchdog)
    third = StartRecord(tmp_path, "ingest-ingest-1", lambda: 300.0)
    assert (third.started().starts, third.current.unclean) == (3, 1)
    samples = {s.name: s.value for s in third.samples()}
    assert samples["mgw_service_unclean_restarts_total"] == 1 and samples["mgw_service_start_time_seconds"] == 300.0


def test_unreadable_start_record_counts_as_a_first_start_when_it_is_garbage(tmp_path: Path) -> None:
    (tmp_path / "starts").mkdir()
    (tmp_path / "starts" / "fleet-1.json").write_bytes(b"\x00not json")
    assert StartRecord(tmp_path, "fleet-1", lambda: 1.0).started().starts == 1


def test_prometheus_rules_alert_on_a_restart_when_promtool_runs_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        _missing("promtool not installed (apt-get install prometheus)")
    check = subprocess.run([promtool, "check", "rules", "mgw.rules.yml"], cwd=RULES, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "mgw.rules.test.yml"], cwd=RULES, capture_output=True,
                          text=True, timeout=120)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_example_prometheus_configuration_is_valid_and_loads_the_rules_when_promtool_checks_it() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        _missing("promtool not installed (apt-get install prometheus)")
    check = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=RULES, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout + check.stderr
    jobs = (RULES / "prometheus.yml").read_text()
    for job in ("mgw-ingest", "mgw-fleet", "mgw-enrol"):  # the jobs MgwServiceDown and the docs name
        assert f"job_name: {job}\n" in jobs
