"""The loop shared by the periodic components (mover, reaper, reconciler): one pass
every interval, with jitter, until cancelled. A pass that finds PostgreSQL or Redis
unavailable is logged and retried with backoff (architecture §5.6: degrade, don't die)."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import trio

from distasks.daemon.health import Health
from distasks.domain import backoff
from distasks.domain.errors import BrokerUnavailable, StoreUnavailable

log = logging.getLogger(__name__)


async def every(name: str, interval_s: float, one_pass: Callable[[], Awaitable[object]], *,
                health: Health, allowance_s: float, jitter: float = 0.1,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call `one_pass()` now and then every `interval_s` (± `jitter` of it, so that the
    daemons of a fleet do not tick in lockstep); beat `name` in `health` each round."""
    health.expect(name, allowance_s=allowance_s)
    task_status.started()
    failures = 0
    while True:
        health.beat(name)
        try:
            await one_pass()
            failures = 0
        except (StoreUnavailable, BrokerUnavailable) as e:
            failures += 1
            log.warning("%s pass failed: %s", name, e, extra={"event": f"{name}_failed"})
            await trio.sleep(backoff.delay_s(failures))
            continue
        await trio.sleep(interval_s * random.uniform(1 - jitter, 1 + jitter))
