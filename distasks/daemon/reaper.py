"""Reaper: takes over runs whose lease expired (their daemon died or hung).

Safe on every daemon at once: the takeover write is fenced on the lease still being
expired, so of several reapers (or a late heartbeat) exactly one wins. A run taken over
is recorded as a failed attempt (`lease_expired`) and retried at once, or dead-lettered
when it has no retries left. It also hands back ids leased in Redis whose run never
started (a daemon died between its Redis claim and its PostgreSQL update).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import trio

from distasks.broker import Broker, printable
from distasks.daemon import completer, periodic
from distasks.daemon.health import Health
from distasks.daemon.metrics import Metrics
from distasks.daemon.tunables import Tunables
from distasks.domain import times
from distasks.domain.model import ClaimedRun, RunStatus, TaskStatus
from distasks.domain.outcome import Outcome, OutcomeKind, failure
from distasks.domain.retry import RetryPolicy
from distasks.store import Store

log = logging.getLogger(__name__)

# Most runs taken over in one pass.
BATCH = 500


async def reap_once(store: Store, broker: Broker, queues: Sequence[str], *, now_s: float,
                    policy: RetryPolicy, metrics: Metrics | None = None) -> int:
    """One pass; returns how many runs were taken over or handed back."""
    now = times.utc(now_s)
    expired = await store.expired_runs(now=now, limit=BATCH)
    taken = 0
    if expired:
        outcomes = [_takeover(run, now_s=now_s, now=now, policy=policy) for run in expired]
        taken = await completer.record_once(outcomes, store=store, broker=broker, metrics=metrics)
        if taken and metrics is not None:
            metrics.takeovers.inc(taken)
        if taken:
            log.warning("took over %d runs whose lease expired", taken,
                        extra={"event": "lease_takeover", "count": taken})
    for queue in queues:
        taken += await _hand_back_unstarted(store, broker, queue, now_ms=times.ms(now_s))
    return taken


def _takeover(run: ClaimedRun, *, now_s: float, now: datetime, policy: RetryPolicy) -> Outcome:
    if run.task.status is TaskStatus.CANCELLED:
        return Outcome(run, OutcomeKind.CANCELLED, now, error="cancelled; its worker died",
                       expired_before=now)
    return failure(run, f"lease_expired: worker {run.worker_id} stopped heartbeating",
                   now_s=now_s, policy=policy, retry_now=True, expired_before=now)


async def _hand_back_unstarted(store: Store, broker: Broker, queue: str, *, now_ms: int) -> int:
    """Redis leases past their deadline whose run is still queued in PostgreSQL were
    claimed but never started: back to ready. Leases of finished or unknown runs go."""
    stale = await broker.expired_leases(queue, before_ms=now_ms, limit=BATCH)
    if not stale:
        return 0
    ids: dict[str, uuid.UUID | None] = {}
    for m in stale:
        try:
            ids[m] = uuid.UUID(m)
        except ValueError:
            log.warning("dropped an undecodable leased entry: %s", printable(m),
                        extra={"event": "lease_dropped", "queue": queue})
            ids[m] = None
    states = await store.run_states([i for i in ids.values() if i])
    unstarted = [m for m, i in ids.items() if i and states.get(i) is RunStatus.QUEUED]
    # Running ones are the PostgreSQL takeover's business (its lease is there).
    gone = [m for m, i in ids.items() if i is None or i not in states
            or states[i] not in (RunStatus.QUEUED, RunStatus.RUNNING)]
    handed_back = await broker.requeue(queue, unstarted)
    await broker.release(queue, gone)
    if handed_back:
        log.warning("handed back %d runs claimed but never started", handed_back,
                    extra={"event": "claim_recovered", "queue": queue, "count": handed_back})
    return handed_back


async def run(store: Store, broker: Broker, tunables: Tunables, *, interval_s: float,
              metrics: Metrics, health: Health, clock: Callable[[], float] = time.time,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Reap every `interval_s` until cancelled (queues and retry policy as tuned now)."""
    await periodic.every(
        "reaper", interval_s,
        lambda: reap_once(store, broker, tunables.queues, now_s=clock(), policy=tunables.retry,
                          metrics=metrics),
        health=health, allowance_s=max(30.0, 10 * interval_s), task_status=task_status)
