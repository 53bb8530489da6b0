"""Remote commands with two fleet instances on one store (SQLite file or PostgreSQL), against a real mosquitto:
a command issued through either is published once, by the leader only, and the box runs it once; when the
leader stops, the other instance takes the lease and publishes the next command."""

from __future__ import annotations

from pathlib import Path

from gateway.adapters.mosquitto import MosquittoBroker
from gateway.core.command_wire import Kind
from tests.cloud.test_commands_api import StandInBox
from tests.cloud.test_fleet_ha import Pair, pair  # noqa: F401 - the fixture
from tests.peers import wait_for


def test_only_the_leader_publishes_and_the_box_runs_each_command_once_when_two_instances_share_a_store(
        pair: Pair, broker: MosquittoBroker, tmp_path: Path) -> None:  # noqa: F811
    leader = pair.leader()
    other = pair.b if leader is pair.a else pair.a
    box = StandInBox(broker, leader, "box-h")
    try:
        box.born()
        for svc in (pair.a, pair.b):
            wait_for(lambda s=svc: (b := s.box("box-h")) is not None and b.online, 60, "box-h online on both")
        wait_for(lambda: (k := leader.store.commands.box("box-h")) is not None and k.inbound_key != "", 60,
                 "the box's inbound key stored")
        first = other.commands.issue("box-h", Kind.ECHO, {}, "ada")  # issued through the instance that does not lead
        wait_for(lambda: leader.store.commands.command(first.id).state == "succeeded", 60,  # type: ignore[union-attr]
                 "the echo ran")
        assert [c.id for c in box.executed] == [first.id]
        assert (leader.commands.published, other.commands.published) == (1, 0)
        wait_for(lambda: other.store.commands.command(first.id).state == "succeeded", 60,  # type: ignore[union-attr]
                 "the other instance reads the same result")

        pair.stop(leader)
        new_leader = pair.leader()
        assert new_leader is other
        second = new_leader.commands.issue("box-h", Kind.ECHO, {}, "ada")
        wait_for(lambda: new_leader.store.commands.command(second.id).state == "succeeded", 60,  # type: ignore[union-attr]
                 "the new leader published the next command")
        assert [c.seq for c in box.executed] == [1, 2]
    finally:
        box.link.stop()
