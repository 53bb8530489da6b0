"""The edge unit's state as `systemctl show` reports it (the commit gate's view of systemd)."""

from __future__ import annotations

from pathlib import Path

from gateway.adapters import systemd_unit

SHOW = "ActiveState=active\nSubState=running\nNRestarts=2\nMainPID=812\n"


def test_state_is_running_with_its_restart_count_when_systemctl_shows_an_active_unit() -> None:
    state = systemd_unit.parse_show(SHOW)
    assert state == systemd_unit.UnitState("active", "running", 2, 812) and state.running


def test_state_is_not_running_when_the_unit_waits_to_restart() -> None:
    state = systemd_unit.parse_show("ActiveState=activating\nSubState=auto-restart\nNRestarts=3\nMainPID=0\n")
    assert not state.running and state.restarts == 3 and state.main_pid == 0


def test_no_state_when_systemd_does_not_manage_the_machine(tmp_path: Path) -> None:
    assert systemd_unit.unit_state("mgw-edge.service", system_root=tmp_path / "absent") is None
