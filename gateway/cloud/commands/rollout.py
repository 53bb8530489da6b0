"""Wave rollouts: one config or update command to a group of boxes, canary first, then waves, stop at a failure.

``start`` (any instance): the group is resolved to an ordered list of boxes (a site's boxes, or an
explicit list), checked and stored with the arguments sealed at rest; nothing is issued yet.
``advance`` (the leader, every round): a running rollout whose issued commands all succeeded issues its
next wave (the first ``canary`` boxes, then ``wave_size`` at a time) and finishes when every box
succeeded; a command of the current wave that failed, was refused or expired stops it (``stopped``,
with the box and the reason), and no further box gets the command. Progress is the rollout's
commands' states (``progress``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from gateway.cloud.commands.queue import CommandQueue
from gateway.cloud.commands.store import FAILED, FINAL_STATES, SUCCEEDED, Rollout
from gateway.core import command_rules
from gateway.core.command_wire import Kind
from gateway.core.errors import IntegrityError
from gateway.logs import MSG

log = logging.getLogger(__name__)
ROLLOUT_KINDS = (Kind.CONFIG, Kind.UPDATE)
MAX_BOXES = 1000
RUNNING, DONE, STOPPED = "running", "succeeded", "stopped"


class Rollouts:
    def __init__(self, queue: CommandQueue, ttl_s: Callable[[], float]) -> None:
        self.queue, self.store, self._ttl_s = queue, queue.store, ttl_s

    def start(self, kind: Kind, args: dict[str, Any], boxes: Sequence[str], by: str, canary: int = 1,
              wave_size: int = 5) -> Rollout:
        """A new rollout; ``ValueError`` for a kind, group or wave out of range, or arguments that do not fit."""
        if kind not in ROLLOUT_KINDS:
            raise ValueError("a rollout carries a config or an update")
        order = list(dict.fromkeys(boxes))
        if not 1 <= len(order) <= MAX_BOXES:
            raise ValueError(f"a rollout goes to 1 to {MAX_BOXES} boxes")
        if not 1 <= canary <= 10 or not 1 <= wave_size <= 100:
            raise ValueError("canary is 1 to 10 boxes, a wave 1 to 100")
        checked = command_rules.check_args(kind, args)
        if kind is Kind.CONFIG:
            checked.pop("version")  # each box gets its own next version at issue
        sealed = self.queue.seal_at_rest("rollout", "*", checked)
        rollout = self.store.add_rollout(kind.value, sealed, json.dumps(order), canary, wave_size, by,
                                         self.queue.now())
        log.info("rollout started", extra={"MESSAGE_ID": MSG.ROLLOUT_CHANGED.value, "ROLLOUT": rollout.id,
                                           "KIND": kind.value, "BOXES": len(order), "ISSUED": 0, "DETAIL": "started"})
        return rollout

    def advance(self) -> int:
        """Move every running rollout on (the leader calls this); the commands issued."""
        issued = 0
        for rollout in self.store.rollouts(running_only=True):
            try:
                issued += self._advance(rollout)
            except (IntegrityError, ValueError) as exc:
                self._finish(rollout, STOPPED, f"cannot issue: {exc}")
        return issued

    def _advance(self, rollout: Rollout) -> int:
        boxes: list[str] = json.loads(rollout.boxes)
        commands = {c.box_id: c for c in self.store.commands(rollout_id=rollout.id, limit=MAX_BOXES)}
        for box_id in boxes[:rollout.issued]:
            command = commands.get(box_id)
            if command is None or command.state not in FINAL_STATES:
                return 0  # the wave is still running (or its command is being issued by the claim below)
            if command.state != SUCCEEDED:
                self._finish(rollout, STOPPED, f"{box_id}: {command.state} {command.reason or command.message}"[:500])
                return 0
        if rollout.issued >= len(boxes):
            self._finish(rollout, DONE, f"{len(boxes)} boxes succeeded")
            return 0
        wave = boxes[rollout.issued:rollout.issued + (rollout.canary if rollout.issued == 0 else rollout.wave_size)]
        now = self.queue.now()
        if not self.store.update_rollout(rollout.id, RUNNING, rollout.issued + len(wave),
                                         f"wave of {len(wave)} issued", now, rollout.issued):
            return 0  # another instance moved it on meanwhile
        args = self.queue.open_at_rest("rollout", "*", rollout.sealed)
        for box_id in wave:
            self.queue.issue(box_id, Kind(rollout.kind), dict(args), rollout.created_by, self._ttl_s(), rollout.id)
        log.info("rollout wave issued", extra={"MESSAGE_ID": MSG.ROLLOUT_CHANGED.value, "ROLLOUT": rollout.id,
                                               "KIND": rollout.kind, "ISSUED": rollout.issued + len(wave),
                                               "BOXES": len(boxes), "DETAIL": ",".join(wave)[:500]})
        return len(wave)

    def _finish(self, rollout: Rollout, state: str, detail: str) -> None:
        if self.store.update_rollout(rollout.id, state, rollout.issued, detail, self.queue.now(), rollout.issued):
            log.log(logging.INFO if state == DONE else logging.WARNING, "rollout %s", state, extra={
                "MESSAGE_ID": MSG.ROLLOUT_CHANGED.value, "ROLLOUT": rollout.id, "KIND": rollout.kind,
                "ISSUED": rollout.issued, "BOXES": len(json.loads(rollout.boxes)), "DETAIL": detail})

    def progress(self, rollout: Rollout) -> dict[str, Any]:
        """The rollout as the console shows it: per box its command's state (``waiting``: not issued yet)."""
        boxes: list[str] = json.loads(rollout.boxes)
        commands = {c.box_id: c for c in self.store.commands(rollout_id=rollout.id, limit=MAX_BOXES)}
        rows = [{"box_id": b, "wave": _wave(n, rollout), "state": commands[b].state if b in commands else "waiting",
                 "command_id": commands[b].id if b in commands else None,
                 "updated_at": commands[b].updated_at if b in commands else None} for n, b in enumerate(boxes)]
        counts: dict[str, int] = {}
        for r in rows:
            counts[str(r["state"])] = counts.get(str(r["state"]), 0) + 1
        return {"id": rollout.id, "kind": rollout.kind, "state": rollout.state, "canary": rollout.canary,
                "wave_size": rollout.wave_size, "issued": rollout.issued, "total": len(boxes), "detail": rollout.detail,
                "created_by": rollout.created_by, "created_at": rollout.created_at, "updated_at": rollout.updated_at,
                "failed": counts.get(FAILED, 0), "counts": counts, "boxes": rows}


def _wave(index: int, rollout: Rollout) -> int:
    """0 for the canary, then 1, 2, ..."""
    return 0 if index < rollout.canary else 1 + (index - rollout.canary) // rollout.wave_size
