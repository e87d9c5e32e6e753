"""Reconciler: keeps the Redis index true to PostgreSQL.

Four jobs, every few seconds (the repairs that distasks.daemon.mirror leaves to it):
- Rebuild. When the epoch key is gone, Redis lost our data (restarted without
  persistence, failed over, flushed): one daemon, under a lock, re-adds every unfinished
  run (ready, delayed, leased) and the DLQ index from PostgreSQL. On a cluster each master
  has its own epoch marker, and only the queues of a master that lost its data or failed
  over (broker/rebuild.py) are rebuilt.
- Pause flags and limits. Every queue's flag and max_running are copied from
  PostgreSQL, so that a pause, resume or limit committed while Redis was unreachable (or
  lost with it) takes effect once it answers. The count a limit checks is the lease set,
  which the rebuild restores from the runs PostgreSQL has running.
- Dispatch. A queued run that never reached Redis (committed while Redis was down, or the
  daemon died between commit and push) is pushed, then marked dispatched.
- DLQ index. Every DLQ_CHECK_S, a queue whose Redis DLQ list is longer or shorter than
  PostgreSQL's DLQ (an entry dropped, a duplicate left by a mirror racing a repair) on
  two checks in a row gets its list rebuilt from PostgreSQL. One check is not enough: a
  dead-lettering or replay between its commit and its copy into Redis looks like drift
  for a moment, and a busy DLQ would be rebuilt on every check.
Both may add an id that is already there; that is harmless, since a run starts at most
once (PostgreSQL's conditional update decides) and a stale id is dropped when claimed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import trio

from distasks.broker import Broker, Rank, rank
from distasks.daemon import periodic
from distasks.daemon.health import Health
from distasks.domain import times
from distasks.domain.errors import BrokerUnavailable, StoreUnavailable
from distasks.store import PendingDispatch, Store

log = logging.getLogger(__name__)

# Runs read from PostgreSQL per round trip.
PAGE = 1000
# How long a rebuild may hold its lock; another daemon may try again after that.
REBUILD_LOCK_MS = 120_000
# Seconds between two comparisons of the DLQ index with PostgreSQL: each counts every
# DLQ entry, so it runs far less often than the other jobs.
DLQ_CHECK_S = 30.0


async def rebuild(store: Store, broker: Broker, *, now_s: float,
                  only: Callable[[str], bool] = lambda queue: True) -> int:
    """Re-add every unfinished run and every DLQ entry to Redis (of the queues `only`
    accepts); returns runs added."""
    now_ms = times.ms(now_s)
    added = 0
    # Pause flags first, so that no paused queue is claimed from while runs come back.
    await copy_pause_flags(store, broker)
    for queue in await store.active_queues():
        if not only(queue):
            continue
        after: PendingDispatch | None = None
        while True:
            page = await store.dispatch_snapshot(queue, after=after, limit=PAGE)
            if not page:
                break
            ready, delayed, leased = _split(page, now_ms)
            await broker.restore(queue, ready=ready, delayed=delayed, leased=leased)
            added += len(page)
            after = page[-1]
            if len(page) < PAGE:
                break
        await broker.restore_dlq(queue, [str(i) for i in await store.dead_task_ids(queue)])
    return added


def _split(page: list[PendingDispatch], now_ms: int) -> tuple[
        list[tuple[str, Rank]], list[tuple[str, int, Rank]], list[tuple[str, int, Rank]]]:
    """(ready, delayed, leased) entries for broker.restore, each with its rank (priority
    and concurrency key). The page is in order of availability, so each priority's (and
    key's) ready list is rebuilt FIFO."""
    ready: list[tuple[str, Rank]] = []
    delayed: list[tuple[str, int, Rank]] = []
    leased: list[tuple[str, int, Rank]] = []
    for p in page:
        r = rank(p.priority, p.concurrency_key)
        if p.status == "running":
            deadline = p.lease_expires_at or times.utc_of_ms(now_ms)
            leased.append((str(p.run_id), times.ms_of(deadline), r))
        elif (due_ms := times.ms_of(p.available_at)) > now_ms:
            delayed.append((str(p.run_id), due_ms, r))
        else:
            ready.append((str(p.run_id), r))
    return ready, delayed, leased


async def dispatch_pending(store: Store, broker: Broker, *, now_s: float, grace_s: float) -> int:
    """Push queued runs older than `grace_s` that never reached Redis; returns how many."""
    now = times.utc(now_s)
    pending = await store.undispatched_runs(created_before=now - timedelta(seconds=grace_s),
                                            limit=PAGE)
    if not pending:
        return 0
    now_ms = times.ms(now_s)
    ready: list[tuple[str, str, Rank]] = []
    delayed: list[tuple[str, str, int, Rank]] = []
    for p in pending:
        due_ms = times.ms_of(p.available_at)
        r = rank(p.priority, p.concurrency_key)
        if due_ms > now_ms:
            delayed.append((p.queue_name, str(p.run_id), due_ms, r))
        else:
            ready.append((p.queue_name, str(p.run_id), r))
    await broker.dispatch(ready=ready, delayed=delayed)
    await store.mark_dispatched([p.run_id for p in pending], now=now)
    log.warning("pushed %d committed runs that had not reached Redis", len(pending),
                extra={"event": "dispatch_recovered", "count": len(pending)})
    return len(pending)


async def repair_dlq_index(store: Store, broker: Broker,
                           suspects: set[str] | None = None) -> int:
    """Rebuild from PostgreSQL the Redis DLQ list of every queue whose length differs
    from its DLQ in PostgreSQL; returns how many lists were rebuilt. With `suspects`
    (the queues that differed on the previous check, updated here), only those that
    differ again are rebuilt. A dead-lettering committed between the count and the
    rebuild may be pushed twice: a later check sees the list too long and rebuilds it."""
    queues = await store.active_queues()
    if not queues:
        return 0
    dead = await store.dlq_depths(queues)
    indexed = await broker.queue_depths(queues)
    differing = {q for q in queues if indexed[q]["dlq"] != dead[q]}
    drifted = sorted(differing if suspects is None else differing & suspects)
    if suspects is not None:
        suspects.clear()
        suspects.update(differing)
    for queue in drifted:
        await broker.restore_dlq(queue, [str(i) for i in await store.dead_task_ids(queue)])
    if drifted:
        log.warning("rebuilt the Redis DLQ index of %d queues from PostgreSQL", len(drifted),
                    extra={"event": "dlq_index_repaired", "count": len(drifted)})
    return len(drifted)


async def copy_pause_flags(store: Store, broker: Broker) -> None:
    """Set or clear every queue's pause flag and max-running limit in Redis as PostgreSQL
    has them."""
    await store.copy_pause_flags(broker.set_pause_flags)
    await store.copy_queue_limits(broker.mirror_limits)


async def reconcile_once(store: Store, broker: Broker, *, now_s: float, grace_s: float,
                         check_dlq: bool = True, dlq_suspects: set[str] | None = None) -> int:
    """One pass: rebuild if Redis lost its data, else copy the pause flags; push
    undispatched runs; then, with `check_dlq`, repair the DLQ index (after the dispatch,
    so that a failing repair never holds back a committed run; see repair_dlq_index for
    `dlq_suspects`). Returns the runs pushed."""
    rebuilt = False
    if (lost := await broker.lost_epochs()) and (
            token := await broker.begin_rebuild(lock_ms=REBUILD_LOCK_MS)):
        rebuilt = True
        started = time.monotonic()
        try:
            added = await rebuild(store, broker, now_s=now_s,
                                  only=lambda queue: broker.on_lost(lost, queue))
            await broker.end_rebuild(lost)
        except (StoreUnavailable, BrokerUnavailable):
            # Redis is often still settling after it came back: let the next pass retry.
            with contextlib.suppress(BrokerUnavailable):
                await broker.abandon_rebuild(token)
            raise
        # A first start finds nothing to rebuild; a rebuild that restored runs is news.
        log.log(logging.WARNING if added else logging.INFO,
                "rebuilt the Redis index from PostgreSQL: %d runs in %.2fs (%s)", added,
                time.monotonic() - started, ", ".join(sorted(set(lost.values()))),
                extra={"event": "redis_rebuilt", "count": added})
    else:
        await copy_pause_flags(store, broker)
    pushed = await dispatch_pending(store, broker, now_s=now_s, grace_s=grace_s)
    if check_dlq and not rebuilt:
        await repair_dlq_index(store, broker, dlq_suspects)
    return pushed


async def run(store: Store, broker: Broker, *, interval_s: float, grace_s: float,
              health: Health, clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Reconcile at once, then every `interval_s`, until cancelled; the DLQ index is
    checked at most every DLQ_CHECK_S."""
    dlq_checked_at: float | None = None
    dlq_suspects: set[str] = set()

    async def one_pass() -> int:
        nonlocal dlq_checked_at
        now_s = clock()
        check_dlq = dlq_checked_at is None or now_s - dlq_checked_at >= DLQ_CHECK_S
        if check_dlq:
            dlq_checked_at = now_s  # a check that fails waits its turn like one that works
        return await reconcile_once(store, broker, now_s=now_s, grace_s=grace_s,
                                    check_dlq=check_dlq, dlq_suspects=dlq_suspects)

    # A rebuild of a large index may take a while: a generous allowance.
    await periodic.every(
        "reconciler", interval_s, one_pass,
        health=health, allowance_s=max(120.0, 10 * interval_s), task_status=task_status)
