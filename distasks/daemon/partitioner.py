"""Partitioner: makes the day partitions of the history tables ahead of time
(store/partitions.py; architecture, "Partitioned history").

Every daemon runs it, whether or not it cleans: a create or an outcome whose day has no
partition would fail, so a daemon makes sure of yesterday's, today's and the next
`days_ahead` days' before it serves (`ensure`), then every hour. Making one that is
already there costs nothing; the daemons take turns on an advisory lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

import trio

from distasks.daemon import periodic
from distasks.daemon.health import Health
from distasks.domain import times
from distasks.store import Store

log = logging.getLogger(__name__)

INTERVAL_S = 3600.0


async def ensure(store: Store, *, now_s: float, days_ahead: int) -> int:
    """Make the partitions missing from yesterday to `days_ahead` days after today (UTC);
    how many were made."""
    today = times.utc(now_s).date()
    made, failed = await store.ensure_partitions(today - timedelta(days=1),
                                                 today + timedelta(days=days_ahead))
    if made:
        log.info("made %d history partitions up to %s", made, today + timedelta(days=days_ahead),
                 extra={"event": "partitions_made", "count": made})
    if failed:
        # Rows of those days go to the default partition meanwhile: nothing is lost.
        log.warning("%d history partitions not made (busy, or rows of their day in the"
                    " default partition could not be moved); trying again later", failed,
                    extra={"event": "partitions_not_made", "count": failed})
    return made


async def run(store: Store, *, days_ahead: int, health: Health,
              interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """`ensure` every `interval_s` until cancelled."""
    async def one_pass() -> None:
        await ensure(store, now_s=clock(), days_ahead=days_ahead)

    await periodic.every("partitioner", interval_s, one_pass, health=health,
                         allowance_s=3 * interval_s, task_status=task_status)
