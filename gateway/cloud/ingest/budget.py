"""Per-box budgets at the cloud ingest: what one box may hold of the cloud.

One box, buggy or hostile, must not slow or stop ingest for the others. Three limits
(``[budgets]`` in the cloud configuration, docs/config.md):

* **rate** — chunk messages a second, a token bucket per box (``core.ratelimit``), checked
  before any parsing or cryptography, so a flood costs a dictionary look-up per message;
* **open transfers** — unfinished transfers staged for the box, counted afresh whenever a chunk
  would open one more (once per object); that chunk waits while the box is at the limit;
* **staging bytes** — staged bytes of the box; a new transfer may start only below
  ``max_staging_bytes``, and no chunk is staged once the box holds ``max_staging_bytes +
  max_object_bytes`` (so an object that started below the limit can always finish).

A box over budget is slowed, not refused: its chunk is not acknowledged, so the edge resends
it later, as after any loss. The caller dead-letters it (reason ``budget``), which raises the
box's ``dead_letters`` alert; BOX_OVER_BUDGET is logged at most once a minute per box and limit.
Every figure is per worker process; staging usage is shared, and re-read from the staging
after ``usage_refresh_s``. Not thread safe: one per ``Ingest``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.cloud.ingest.staging import Staging
from gateway.config import BudgetSettings
from gateway.core.ratelimit import Rate, TokenBuckets
from gateway.logs import MSG

log = logging.getLogger(__name__)
MAX_BOXES = 100_000  # boxes whose usage and log times are remembered (least recently used go)
LOG_EVERY_S = 60.0


@dataclass
class _Usage:
    transfers: int
    size: int
    read_at: float


LIMITS = ("rate", "open_transfers", "staging_bytes")  # what an OverBudget names (its ``limit``)


class OverBudget(Exception):
    def __init__(self, limit: str, used: float, allowed: float) -> None:
        super().__init__(f"over budget: {limit} {used:.0f} of {allowed:.0f}")
        self.limit, self.used, self.allowed = limit, used, allowed


class BoxBudgets:
    def __init__(self, settings: BudgetSettings, max_object_bytes: int, staging: Staging,
                 clock: Callable[[], float]) -> None:
        self._settings, self._staging, self._clock = settings, staging, clock
        self._hard_bytes = settings.max_staging_bytes + max_object_bytes
        self._rates: TokenBuckets[str] = TokenBuckets(
            Rate(settings.max_messages_per_s, max(1.0, float(settings.burst_messages))), MAX_BOXES)
        self._usage: OrderedDict[str, _Usage] = OrderedDict()
        self._logged: OrderedDict[tuple[str, str], float] = OrderedDict()

    def admit_message(self, box_id: str) -> None:
        """The rate limit, before anything else is done with a message; ``OverBudget`` if over."""
        wait_s = self._rates.take(box_id, self._clock())
        if wait_s:
            self._over(box_id, OverBudget("rate", self._settings.max_messages_per_s + 1,
                                          self._settings.max_messages_per_s))

    def admit_chunk(self, box_id: str, new_transfer: bool) -> None:
        """The staging limits, for a verified chunk about to be staged; ``OverBudget`` if over.

        A chunk that opens a transfer (once per object) is checked against the staging as it is
        now; other chunks against a count at most ``usage_refresh_s`` old."""
        usage = self._current(box_id, fresh=new_transfer)
        if usage.size >= self._hard_bytes:
            self._over(box_id, OverBudget("staging_bytes", usage.size, self._hard_bytes))
        if not new_transfer:
            return
        if usage.transfers >= self._settings.max_open_transfers:
            self._over(box_id, OverBudget("open_transfers", usage.transfers, self._settings.max_open_transfers))
        if usage.size >= self._settings.max_staging_bytes:
            self._over(box_id, OverBudget("staging_bytes", usage.size, self._settings.max_staging_bytes))

    def staged(self, box_id: str, size: int, new_transfer: bool) -> None:
        """A chunk was staged: count it until the next re-read."""
        usage = self._usage.get(box_id)
        if usage is not None:
            usage.size += size
            usage.transfers += int(new_transfer)

    def _current(self, box_id: str, fresh: bool) -> _Usage:
        now = self._clock()
        usage = self._usage.get(box_id)
        if fresh or usage is None or now - usage.read_at >= self._settings.usage_refresh_s:
            transfers, size = self._staging.usage(box_id)
            usage = _Usage(transfers, size, now)
            self._usage[box_id] = usage
            while len(self._usage) > MAX_BOXES:
                self._usage.popitem(last=False)
        self._usage.move_to_end(box_id)
        return usage

    def _over(self, box_id: str, over: OverBudget) -> None:
        now, key = self._clock(), (box_id, over.limit)
        if now - self._logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[key] = now
            self._logged.move_to_end(key)
            while len(self._logged) > MAX_BOXES:
                self._logged.popitem(last=False)
            log.warning("box over budget", extra={
                "MESSAGE_ID": MSG.BOX_OVER_BUDGET.value, "BOX_ID": box_id, "LIMIT": over.limit,
                "USED": round(over.used), "ALLOWED": round(over.allowed)})
        raise over
