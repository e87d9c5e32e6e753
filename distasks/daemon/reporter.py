"""Reporter: owns liveness. It turns what the components say (distasks.daemon.health) and what
Redis holds into metrics gauges, judges whether work is progressing, and pings the
systemd watchdog while every component loop is alive.

Outages of PostgreSQL or Redis do not stop the pings: the loops keep running and
retrying (architecture §5.6), and killing the daemon would not bring the database back.
A hung loop does stop them, and systemd then restarts the daemon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from distasks.broker import Broker
from distasks.daemon import sdnotify
from distasks.daemon.health import Health
from distasks.daemon.metrics import Metrics
from distasks.daemon.progress import Progress
from distasks.daemon.queue_state import queue_states
from distasks.daemon.tunables import Tunables
from distasks.daemon.worker import WorkerPool
from distasks.domain import times
from distasks.domain.errors import BrokerUnavailable, StoreUnavailable
from distasks.store import Store

log = logging.getLogger(__name__)

# How often queue gauges are refreshed from Redis.
GAUGE_INTERVAL_S = 5.0
# Work waiting, executors free, and no outcome for this long: progress has stalled.
STALL_AFTER_S = 60.0


async def report_once(store: Store, broker: Broker, pool: WorkerPool, tunables: Tunables,
                      metrics: Metrics, health: Health, progress: Progress, *,
                      now_s: float) -> None:
    """Refresh the gauges and the progress verdict."""
    states = await queue_states(store, broker, tunables.queues, now=times.utc(now_s),
                                exact_dlq=False)
    # Cleared and set again with no await in between, so that a scrape never sees a half
    # update, and components or queues dropped by a reload leave no stale series behind.
    metrics.component_up.clear()
    for name, alive in health.status().items():
        metrics.component_up.labels(name).set(1 if alive else 0)
    metrics.queue_depth.clear()
    metrics.oldest_ready_age.clear()
    for queue, st in states.items():
        for state in ("ready", "delayed", "leased", "dlq", "waiting_for_limit"):
            metrics.queue_depth.labels(queue, state).set(getattr(st, state))
        metrics.oldest_ready_age.labels(queue).set(st.oldest_ready_age_s or 0.0)
    # A paused queue waits on purpose, and so do runs a limit holds back: no sign of a
    # stall.
    working = [st for st in states.values() if not st.paused]
    last = metrics.last_outcome_s
    progress.ready = sum(st.ready - st.waiting_for_limit for st in working)
    progress.last_outcome_age_s = now_s - last if last else None
    idle = pool.busy() < tunables.concurrency
    quiet = progress.last_outcome_age_s is None or progress.last_outcome_age_s > STALL_AFTER_S
    waited = any((st.oldest_ready_age_s or 0.0) > STALL_AFTER_S for st in working)
    stalled = progress.ready > 0 and idle and quiet and waited
    if stalled and not progress.stalled:
        log.warning("no progress: %d runs ready, executors free, no outcome for %.0fs",
                    progress.ready, STALL_AFTER_S, extra={"event": "progress_stalled"})
    progress.stalled = stalled


async def run(store: Store, broker: Broker, pool: WorkerPool, tunables: Tunables, *,
              metrics: Metrics, health: Health, progress: Progress,
              clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Report until cancelled; ping the watchdog at systemd's requested pace."""
    watchdog_s = sdnotify.watchdog_interval_s()
    tick_s = min(GAUGE_INTERVAL_S, watchdog_s) if watchdog_s else GAUGE_INTERVAL_S
    next_gauges = 0.0
    task_status.started()
    while True:
        if trio.current_time() >= next_gauges:
            next_gauges = trio.current_time() + GAUGE_INTERVAL_S
            try:
                await report_once(store, broker, pool, tunables, metrics, health, progress,
                                  now_s=clock())
            except (StoreUnavailable, BrokerUnavailable) as e:
                log.debug("gauges not refreshed: %s", e, extra={"event": "report_skipped"})
        down = [name for name, alive in health.status().items() if not alive]
        if watchdog_s:
            if down:
                log.error("components not ticking: %s; withholding the watchdog ping",
                          ", ".join(down), extra={"event": "watchdog_withheld"})
            else:
                sdnotify.watchdog()
        await trio.sleep(tick_s)
