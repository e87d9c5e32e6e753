"""Completer: group commit of run outcomes.

Workers hand finished runs here; one loop writes everything waiting in one PostgreSQL
transaction (fenced on this daemon's leases), then applies the Redis side in one
pipeline. PostgreSQL first: Redis only ever indexes what is already true.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import trio

from distasks import backoff
from distasks.broker import Broker, Settlement
from distasks.errors import BrokerUnavailable, StoreUnavailable
from distasks.outcome import Outcome, OutcomeKind
from distasks.store import Fence, Outcomes, Store, Written

log = logging.getLogger(__name__)

# Most outcomes written in one transaction.
MAX_BATCH = 1000
# Outcomes after which the task is final (waiters of GET …?wait= are told).
FINAL_KINDS = frozenset({OutcomeKind.SUCCEEDED, OutcomeKind.FAILED, OutcomeKind.CANCELLED})


async def run(outcomes: trio.MemoryReceiveChannel[Outcome], *, store: Store, broker: Broker,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Record outcomes until the channel is closed and drained (or until cancelled)."""
    task_status.started()
    async with outcomes:
        async for first in outcomes:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(outcomes.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await record_once(batch, store=store, broker=broker)


async def record_once(batch: list[Outcome], *, store: Store, broker: Broker) -> int:
    """Write one batch, retrying while PostgreSQL is unavailable; returns how many were
    written (the others had lost their lease). Used by the workers and the reaper."""
    outcomes = _store_outcomes(batch)
    failures = 0
    while True:
        try:
            written = await store.record_outcomes(outcomes)
            break
        except StoreUnavailable as e:
            failures += 1
            log.warning("outcomes not recorded yet, retrying: %s", e,
                        extra={"event": "record_retry", "count": len(batch)})
            await trio.sleep(backoff.delay_s(failures))
    fenced = [o for o in batch if o.run.run_id not in written.runs]
    for o in fenced:
        log.warning("run lost its lease; outcome %s discarded", o.kind,
                    extra={"event": "outcome_fenced", "run_id": str(o.run.run_id),
                           "task_id": str(o.run.task.id), "attempt": o.run.attempt})
    settlement = _settlement(batch, written)
    try:
        await broker.settle(settlement)
        new_runs = [o.new_run_id for o in batch
                    if o.run.run_id in written.advanced and o.new_run_id]
        await store.mark_dispatched(new_runs, now=datetime.now(UTC))
    except (BrokerUnavailable, StoreUnavailable) as e:
        # PostgreSQL holds the truth: the reconciler pushes runs never marked dispatched,
        # and stale leases left in Redis are cleaned by the reaper.
        log.warning("outcomes recorded, Redis index deferred: %s", e,
                    extra={"event": "settle_deferred", "count": len(batch)})
    return len(written.runs)


def _store_outcomes(batch: list[Outcome]) -> Outcomes:
    o = Outcomes()
    for x in batch:
        run_id, at = x.run.run_id, x.finished_at
        fence = Fence(x.run.worker_id, x.expired_before)
        match x.kind:
            case OutcomeKind.SUCCEEDED:
                o.succeeded.append((run_id, fence, x.result_json or "null", at))
            case OutcomeKind.RETRYING:
                assert x.next_retry_at_ms is not None and x.new_run_id is not None
                due = datetime.fromtimestamp(x.next_retry_at_ms / 1000, UTC)
                o.retrying.append((run_id, fence, x.error or "", at, due, x.new_run_id))
            case OutcomeKind.FAILED:
                o.failed.append((run_id, fence, x.error or "", at))
            case OutcomeKind.INTERRUPTED:
                assert x.new_run_id is not None
                o.interrupted.append((run_id, fence, x.error or "interrupted", at, x.new_run_id))
            case OutcomeKind.CANCELLED:
                o.cancelled.append((run_id, fence, x.error or "cancelled", at))
    return o


def _settlement(batch: list[Outcome], written: Written) -> Settlement:
    s = Settlement()
    for x in batch:
        queue = x.run.queue_name
        s.unleased.setdefault(queue, []).append(x.run.message)
        if x.run.run_id not in written.runs:
            continue
        if x.kind in FINAL_KINDS:
            s.finished.append(str(x.run.task.id))
        if x.run.run_id not in written.advanced:
            continue  # cancelled meanwhile: no next attempt, no DLQ entry
        if x.kind is OutcomeKind.RETRYING:
            assert x.next_retry_at_ms is not None
            if x.next_retry_at_ms <= x.finished_at.timestamp() * 1000:
                # Due at once (a takeover): straight to ready, no mover tick to wait for.
                s.urgent.setdefault(queue, []).append(str(x.new_run_id))
            else:
                s.delayed.setdefault(queue, []).append((x.next_retry_at_ms, str(x.new_run_id)))
        elif x.kind is OutcomeKind.FAILED:
            s.dead.setdefault(queue, []).append(str(x.run.task.id))
        elif x.kind is OutcomeKind.INTERRUPTED:
            s.urgent.setdefault(queue, []).append(str(x.new_run_id))
    return s
