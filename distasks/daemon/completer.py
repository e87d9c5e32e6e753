"""Completer: group commit of run outcomes.

Workers hand finished runs here; one loop writes everything waiting in one PostgreSQL
transaction (fenced on this daemon's leases), then applies the Redis side in one
pipeline. PostgreSQL first: Redis only ever indexes what is already true.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

import trio

from distasks.broker import Broker, Settlement, rank
from distasks.daemon import mirror
from distasks.daemon.health import Health
from distasks.daemon.metrics import Metrics
from distasks.domain import backoff, times
from distasks.domain.errors import StoreRejected, StoreUnavailable
from distasks.domain.outcome import Outcome, OutcomeKind
from distasks.domain.secret_fields import scrub, scrub_json, secret_values
from distasks.store import (
    Cancelled,
    Failed,
    Fence,
    Interrupted,
    Outcomes,
    ReleasedRun,
    Retrying,
    Store,
    Succeeded,
    Written,
)

log = logging.getLogger(__name__)

# Most outcomes written in one transaction.
MAX_BATCH = 1000
# While idle, the loop still says it lives this often.
IDLE_BEAT_S = 5.0
# Outcomes after which the task is final (waiters of GET …?wait= are told).
FINAL_KINDS = frozenset({OutcomeKind.SUCCEEDED, OutcomeKind.FAILED, OutcomeKind.CANCELLED})


async def run(outcomes: trio.MemoryReceiveChannel[Outcome], *, store: Store, broker: Broker,
              metrics: Metrics, health: Health,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Record outcomes until the channel is closed and drained (or until cancelled)."""
    health.expect("completer", allowance_s=IDLE_BEAT_S * 6)
    task_status.started()
    async with outcomes:
        while True:
            health.beat("completer")
            first: Outcome | None = None
            with trio.move_on_after(IDLE_BEAT_S):
                try:
                    first = await outcomes.receive()
                except trio.EndOfChannel:
                    health.forget("completer")
                    return
            if first is None:
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(outcomes.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await record_once(batch, store=store, broker=broker, metrics=metrics, health=health)


async def record_once(batch: list[Outcome], *, store: Store, broker: Broker,
                      metrics: Metrics | None = None, health: Health | None = None) -> int:
    """Write one batch, retrying while PostgreSQL is unavailable; returns how many were
    written (the others had lost their lease). Used by the workers and the reaper."""
    outcomes = _store_outcomes(batch)
    failures = 0
    while True:
        try:
            # Write in PostgreSQL, then index in Redis (one crossing of the bridge).
            written = await _record_and_settle(batch, outcomes, store, broker)
            break
        except StoreRejected as e:
            # Data PostgreSQL refuses must not take the batch (or the daemon) down with it.
            return await _record_rejected(batch, e, store=store, broker=broker,
                                          metrics=metrics, health=health)
        except StoreUnavailable as e:
            failures += 1
            if health is not None:
                health.beat("completer")  # alive and retrying: an outage is not a hang
            log.warning("outcomes not recorded yet, retrying: %s", e,
                        extra={"event": "record_retry", "count": len(batch)})
            await trio.sleep(backoff.delay_s(failures))
    fenced = [o for o in batch if o.run.run_id not in written.runs]
    for o in fenced:
        log.warning("run lost its lease; outcome %s discarded", o.kind,
                    extra={"event": "outcome_fenced", "run_id": str(o.run.run_id),
                           "task_id": str(o.run.task.id), "attempt": o.run.attempt})
    if metrics is not None:
        _count(batch, written, metrics)
    return len(written.runs)


async def _record_rejected(batch: list[Outcome], error: StoreRejected, *, store: Store,
                           broker: Broker, metrics: Metrics | None,
                           health: Health | None) -> int:
    """Write the outcomes of a refused batch one by one; one still refused becomes a
    plain failure saying why, and if even that is refused it is left to the reaper."""
    if len(batch) > 1:
        written = 0
        for outcome in batch:
            written += await record_once([outcome], store=store, broker=broker, metrics=metrics,
                                         health=health)
        return written
    [outcome] = batch
    log.error("outcome refused by PostgreSQL: %s", scrub(str(error), secret_values(
        outcome.run.task)), extra={
        "event": "outcome_rejected", "run_id": str(outcome.run.run_id),
        "task_id": str(outcome.run.task.id)})
    if outcome.kind is OutcomeKind.FAILED and outcome.result_json is None and (
            outcome.error or "").startswith("outcome could not be stored"):
        return 0  # the lease runs out and the reaper records a takeover
    plain = dataclasses.replace(outcome, kind=OutcomeKind.FAILED, result_json=None,
                                error=f"outcome could not be stored: {error}"[:4000],
                                next_retry_at_ms=None, new_run_id=None)
    return await record_once([plain], store=store, broker=broker, metrics=metrics,
                             health=health)


async def _record_and_settle(batch: list[Outcome], outcomes: Outcomes, store: Store,
                             broker: Broker) -> Written:
    """Write in PostgreSQL, then settle in Redis and mark the next attempts dispatched.
    Only a failed PostgreSQL write raises: once recorded, the outcomes stand."""
    written = await store.record_outcomes(outcomes)
    settlement = _settlement(batch, written)
    new_runs = [o.new_run_id for o in batch if o.run.run_id in written.advanced and o.new_run_id]
    # Workflow nodes released in the same transaction: pushed as a create pushes them.
    new_runs += add_released(settlement, written.released.runs)
    settlement.finished += [str(t) for t in written.released.closed]
    await mirror.copy("outcomes", lambda: broker.settle(settlement), count=len(batch),
                      store=store, pushed=new_runs,
                      now=times.utc_of_ms(settlement.now_ms))
    return written


def add_released(s: Settlement, runs: list[ReleasedRun]) -> list[uuid.UUID]:
    """File released first runs in `s` (ready at the tail, or delayed until their
    run_at); returns their ids, to mark dispatched."""
    for r in runs:
        due_ms = times.ms_of(r.available_at)
        if due_ms > s.now_ms:
            s.delayed.setdefault(r.queue_name, []).append(
                (due_ms, str(r.run_id), rank(r.priority, r.concurrency_key)))
        else:
            s.ready.setdefault(r.queue_name, []).append(
                (str(r.run_id), rank(r.priority, r.concurrency_key)))
    return [r.run_id for r in runs]


def _count(batch: list[Outcome], written: Written, metrics: Metrics) -> None:
    counters = {OutcomeKind.SUCCEEDED: metrics.completed, OutcomeKind.RETRYING: metrics.retries,
                OutcomeKind.FAILED: metrics.failed}
    for o in batch:
        counter = counters.get(o.kind)
        if counter is not None and o.run.run_id in written.advanced:
            counter.labels(o.run.queue_name, o.run.task.handler).inc()
    if written.runs:
        metrics.progressed(time.time())


def _store_outcomes(batch: list[Outcome]) -> Outcomes:
    o = Outcomes(workflow=any(x.run.task.workflow_id is not None for x in batch))
    for x in map(_without_secrets, batch):
        run_id, at = x.run.run_id, x.finished_at
        fence = Fence(x.run.worker_id, x.expired_before)
        match x.kind:
            case OutcomeKind.SUCCEEDED:
                o.succeeded.append(Succeeded(run_id, fence, x.result_json or "null", at))
            case OutcomeKind.RETRYING:
                assert x.next_retry_at_ms is not None and x.new_run_id is not None
                due = times.utc_of_ms(x.next_retry_at_ms)
                o.retrying.append(Retrying(run_id, fence, x.error or "", at, due, x.new_run_id))
            case OutcomeKind.FAILED:
                o.failed.append(Failed(run_id, fence, x.error or "", at))
            case OutcomeKind.INTERRUPTED:
                assert x.new_run_id is not None
                o.interrupted.append(Interrupted(run_id, fence, x.error or "interrupted", at,
                                             x.new_run_id))
            case OutcomeKind.CANCELLED:
                o.cancelled.append(Cancelled(run_id, fence, x.error or "cancelled", at))
    return o


def _without_secrets(outcome: Outcome) -> Outcome:
    """`outcome` with its task's secret values (distasks.domain.secret_fields) replaced in its
    error and result. Here, where every outcome is written (workers and reaper alike),
    so that no handler that quotes its payload in an exception or a return value puts
    a secret into a run, the DLQ listing or a log line."""
    values = secret_values(outcome.run.task)
    if not values:
        return outcome
    return dataclasses.replace(
        outcome, error=None if outcome.error is None else scrub(outcome.error, values),
        result_json=None if outcome.result_json is None else scrub_json(outcome.result_json,
                                                                         values))


def _settlement(batch: list[Outcome], written: Written) -> Settlement:
    s = Settlement(now_ms=times.ms_of(max(x.finished_at for x in batch)))
    for x in batch:
        queue, priority = x.run.queue_name, rank(x.run.task.priority, x.run.task.concurrency_key)
        s.unleased.setdefault(queue, []).append(x.run.message)
        if x.run.run_id not in written.runs:
            continue
        if x.kind in FINAL_KINDS:
            s.finished.append(str(x.run.task.id))
        if x.run.run_id not in written.advanced:
            continue  # cancelled meanwhile: no next attempt, no DLQ entry
        if x.kind is OutcomeKind.RETRYING:
            assert x.next_retry_at_ms is not None
            if x.next_retry_at_ms <= times.ms_of(x.finished_at):
                # Due at once (a takeover): straight to ready, no mover tick to wait for.
                s.urgent.setdefault(queue, []).append((str(x.new_run_id), priority))
            else:
                s.delayed.setdefault(queue, []).append(
                    (x.next_retry_at_ms, str(x.new_run_id), priority))
        elif x.kind is OutcomeKind.FAILED:
            s.dead.setdefault(queue, []).append(str(x.run.task.id))
        elif x.kind is OutcomeKind.INTERRUPTED:
            s.urgent.setdefault(queue, []).append((str(x.new_run_id), priority))
    return s
