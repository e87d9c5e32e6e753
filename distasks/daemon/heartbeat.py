"""Heartbeat: keeps this daemon's registration and its runs' leases alive.

Every third of a lease, one PostgreSQL transaction records that the daemon lives and
extends the leases of the runs it holds (running, or claimed and waiting for an
executor), and one Redis pipeline moves
their deadlines in the lease sets. A run whose lease was taken over meanwhile is
abandoned: its handler is cancelled, since its outcome would be fenced off anyway; a run
whose task was cancelled is stopped and recorded cancelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from distasks.broker import Broker
from distasks.daemon.health import Health
from distasks.daemon.worker import WorkerPool
from distasks.domain import backoff, times
from distasks.domain.errors import BrokerUnavailable, StoreUnavailable
from distasks.store import Store, WorkerInfo

log = logging.getLogger(__name__)

# How long the last heartbeat (the one saying "stopped") may take at shutdown.
FAREWELL_TIMEOUT_S = 2.0


async def beat_once(store: Store, broker: Broker, pool: WorkerPool, *, worker_id: str,
                    now_s: float, lease_s: float) -> int:
    """One heartbeat; returns how many runs were found taken over (and abandoned)."""
    # Runs waiting for an executor hold leases too (a shrunk pool may keep them waiting).
    in_flight = pool.leased_runs()
    lease_until_s = now_s + lease_s
    held = await store.heartbeat(worker_id, now=times.utc(now_s), run_ids=list(in_flight),
                                 lease_until=times.utc(lease_until_s))
    lost = set(in_flight) - held.extended
    if lost:
        pool.abandon(lost)
    if held.cancelled:
        # Normally the control channel said so at once; this is the fallback.
        pool.cancel_runs(held.cancelled)
    by_queue: dict[str, list[str]] = {}
    for run_id in held.extended:
        run = in_flight[run_id]
        by_queue.setdefault(run.queue_name, []).append(run.message)
    await broker.extend_leases(by_queue, lease_until_ms=times.ms(lease_until_s))
    return len(lost)


async def run(store: Store, broker: Broker, pool: WorkerPool, *, info: WorkerInfo, lease_s: float,
              health: Health, clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Register, then beat every lease_s / 3 until cancelled; say "stopped" on the way out."""
    interval_s = lease_s / 3
    # Leases expire after lease_s: a heartbeat silent that long is a real problem.
    health.expect("heartbeat", allowance_s=lease_s)
    failures = 0
    while True:
        try:
            await store.register_worker(info)
            break
        except StoreUnavailable as e:
            failures += 1
            log.warning("cannot register the daemon yet: %s", e, extra={"event": "register_retry"})
            await trio.sleep(backoff.delay_s(failures))
    task_status.started()
    try:
        failures = 0
        while True:
            # Alive even while PostgreSQL is down: the loop goes on trying.
            health.beat("heartbeat")
            try:
                await beat_once(store, broker, pool, worker_id=info.id, now_s=clock(),
                                lease_s=lease_s)
                failures = 0
            except (StoreUnavailable, BrokerUnavailable) as e:
                failures += 1
                log.warning("heartbeat failed: %s", e, extra={"event": "heartbeat_failed"})
                await trio.sleep(min(backoff.delay_s(failures), interval_s))
                continue
            await trio.sleep(interval_s)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(FAREWELL_TIMEOUT_S):
            try:
                await store.heartbeat(info.id, now=times.utc(clock()), stopped=True)
            except StoreUnavailable:
                pass
