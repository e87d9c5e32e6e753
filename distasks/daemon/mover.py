"""Mover: makes delayed runs ready when their time comes (architecture §3, step 5).

Every tick, for each subscribed queue, one Lua script moves the due members of the
delayed set to the ready list, under a short lock so that of many daemons one moves
each queue per tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import trio

from distasks.broker import Broker
from distasks.daemon import periodic
from distasks.daemon.health import Health
from distasks.daemon.tunables import Tunables
from distasks.domain import times

log = logging.getLogger(__name__)


async def move_once(broker: Broker, queues: Sequence[str], *, now_ms: int, batch: int,
                    lock_ms: int) -> int:
    """One pass over `queues`; returns how many runs became ready."""
    moved = 0
    for queue in queues:
        n = await broker.move_due(queue, now_ms=now_ms, limit=batch, lock_ms=lock_ms)
        if n:
            log.debug("moved %d due runs", n, extra={"event": "moved_due", "queue": queue})
            moved += n
    return moved


async def run(broker: Broker, tunables: Tunables, *, interval_s: float, batch: int,
              health: Health, clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Move due runs of the queues as tuned now, every `interval_s`, until cancelled."""
    # The lock lasts a little less than a tick, so the next tick finds it free.
    lock_ms = max(1, int(interval_s * 900))
    await periodic.every(
        "mover", interval_s,
        lambda: move_once(broker, tunables.queues, now_ms=times.ms(clock()), batch=batch,
                          lock_ms=lock_ms),
        health=health, allowance_s=max(30.0, 10 * interval_s), task_status=task_status)
