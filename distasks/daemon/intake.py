"""Intake: group commit of creates.

Concurrent API requests hand their validated task here; a loop writes everything
waiting in one transaction, so the commit is paid once per batch instead of once per task
(architecture §1). No batch waits for a timer: what arrives while one batch commits forms
the next. The callers are answered once their batch committed; the copy into Redis
follows, batched further by the intake's Copier (daemon/copier.py).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import trio

from distasks.broker import Broker, rank
from distasks.daemon.copier import FLUSH_TIMEOUT_S, Copier
from distasks.daemon.metrics import Metrics
from distasks.daemon.queue_census import QueueCensus
from distasks.domain import times
from distasks.domain.errors import DistasksError, StoreRejected, StoreUnavailable
from distasks.domain.model import ClaimedRun, CreateResult, NewTask, Task, TaskStatus, TaskType
from distasks.store import ReleasedRun, Store

if TYPE_CHECKING:
    from distasks.daemon.worker import WorkerPool

log = logging.getLogger(__name__)

# Longest a batch commit may take; shutdown waits for it (a hung server fails the batch).
COMMIT_TIMEOUT_S = 10.0
# Most creates committed in one transaction.
MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class Starts:
    """What a create may start at once: the runs it has idle executors for
    (`Intake.reserve_starts`), and the lease they would start under."""

    run_ids: frozenset[uuid.UUID] = frozenset()
    worker_id: str = ""
    lease_until: datetime | None = None


@dataclass(slots=True)
class _Request:
    """One caller's tasks; they always land in the same transaction."""

    tasks: list[NewTask]
    done: trio.Event = field(default_factory=trio.Event)
    results: list[CreateResult] = field(default_factory=list)
    error: DistasksError | None = None


class Intake:
    """Group commit of creates. Given this daemon's worker `pool`, a create for a queue
    the pool serves while it has idle executors starts its run in the same statement and
    hands it to the pool: no Redis push, no claim, no second statement."""

    def __init__(self, store: Store, broker: Broker, metrics: Metrics | None = None, *,
                 pool: WorkerPool | None = None, clock: Callable[[], float] = time.time,
                 census: QueueCensus | None = None):
        self._store = store
        self._census = census
        self._broker = broker
        self._metrics = metrics or Metrics()
        self._pool = pool
        self._clock = clock
        self._copier = Copier(store, broker, clock=clock)
        self._send, self._receive = trio.open_memory_channel[_Request](math.inf)

    async def create(self, task: NewTask) -> CreateResult:
        """Record `task` durably and dispatch it; returns once committed.

        Raises StoreUnavailable when it could not be committed. A task committed while
        Redis is down is still accepted: it is dispatched when Redis returns.
        """
        return (await self.create_many([task]))[0]

    async def create_many(self, tasks: list[NewTask]) -> list[CreateResult]:
        """Like `create`, for several tasks that share one transaction (all or nothing).

        Raises TooManyQueues (naming the first task's index) when a task names a new
        queue its tenant has no room for (limits.max_queues); nothing is written then."""
        if self._census is not None:
            await self._census.admit([t.queue_name for t in tasks])
        request = _Request(tasks)
        self._send.send_nowait(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.results

    def reserve_starts(self, tasks: Sequence[NewTask]) -> Starts:
        """Set aside this daemon's idle executors for those of `tasks` its create
        statement may start (immediate tasks of queues the pool serves, and only while
        no backlog is known there: WorkerPool.reserve). After the create, pass them to
        `start_created`, or to `unreserve` if it failed."""
        if self._pool is None:
            return Starts()
        by_queue: dict[str, list[uuid.UUID]] = {}
        for t in tasks:
            if t.type is TaskType.IMMEDIATE:
                by_queue.setdefault(t.queue_name, []).append(t.run_id)
        start: set[uuid.UUID] = set()
        for queue, run_ids in by_queue.items():
            start.update(run_ids[:self._pool.reserve(queue, len(run_ids))])
        return Starts(frozenset(start), self._pool.worker_id,
                      times.utc(self._clock() + self._pool.lease_s))

    def unreserve(self, starts: Starts) -> None:
        """Give back the executors of a create that did not commit."""
        if self._pool is not None:
            self._pool.unreserve(len(starts.run_ids))

    def start_created(self, starts: Starts, runs: list[ClaimedRun]) -> None:
        """Run `runs`, those of `starts` that the committed create started (its queue
        may have said no: paused, limited), and give back the executors of the others."""
        if self._pool is None:
            return
        self._pool.unreserve(len(starts.run_ids) - len(runs))
        # The delay to start is measured from here, once the create has committed.
        self._pool.start_created(runs, committed_s=self._clock())

    def copy_committed(self, runs: list[ReleasedRun]) -> None:
        """Have the copier push runs another writer committed (a workflow's roots, or
        nodes a cancel or a resume released), as it pushes creates: no side door."""
        ready, delayed = [], []
        now_ms = times.ms(self._clock())
        for r in runs:
            due_ms, priority = times.ms_of(r.available_at), rank(r.priority, r.concurrency_key)
            if due_ms > now_ms:
                delayed.append((r.queue_name, str(r.run_id), due_ms, priority))
            else:
                ready.append((r.queue_name, str(r.run_id), priority))
        if runs:
            self._copier.add(ready, delayed, [r.run_id for r in runs])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit whatever is waiting, batch after batch, until cancelled; the copier runs
        beside, and copies what the last batch left once the loop is over."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._copier.run)
            task_status.started()
            try:
                await self._commit_batches()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT_S):
                    await self._copier.flush()

    async def _commit_batches(self) -> None:
        async for first in self._receive:
            batch, size = [first], len(first.tasks)
            while size < MAX_BATCH:
                try:
                    request = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(request)
                size += len(request.tasks)
            # Shielded so that shutdown never leaves a caller without an answer for a
            # batch that did commit; the pool's timeout bounds it.
            with trio.CancelScope(shield=True), trio.move_on_after(COMMIT_TIMEOUT_S):
                await self._commit(batch)
            for request in batch:
                if not request.done.is_set():  # the commit hung, outcome unknown
                    request.error = StoreUnavailable(f"no answer within {COMMIT_TIMEOUT_S}s")
                    request.done.set()

    async def _commit(self, batch: list[_Request]) -> None:
        tasks = [t for request in batch for t in request.tasks]
        try:
            # The whole batch at once: one statement, one commit.
            results = await self._commit_and_dispatch(tasks)
        except StoreRejected as e:
            if len(batch) > 1:
                # One request's data was refused: commit the others without it.
                for request in batch:
                    await self._commit([request])
                return
            log.error("create refused by PostgreSQL: %s", e,
                      extra={"event": "create_rejected", "count": len(tasks)})
            batch[0].error = e
            batch[0].done.set()
            return
        except StoreUnavailable as e:
            # Every caller of the batch gets the error; the intake itself goes on.
            log.warning("create batch not recorded: %s", e,
                        extra={"event": "create_failed", "count": len(tasks)})
            for request in batch:
                request.error = e
                request.done.set()
            return
        for t, result in zip(tasks, results, strict=True):
            if result.created:
                self._metrics.created.labels(self._metrics.queue_label(t.queue_name),
                                             t.handler).inc()
                self._metrics.tenant_created.labels(self._metrics.tenant_label(t.tenant)).inc()
        position = 0
        for request in batch:
            request.results = results[position:position + len(request.tasks)]
            position += len(request.tasks)
            request.done.set()

    async def _commit_and_dispatch(self, tasks: list[NewTask]) -> list[CreateResult]:
        """Insert (starting what this daemon can run now), then leave the rest to the
        copier. Only a failed insert raises: once committed, the tasks are accepted."""
        now_s = self._clock()
        starts = self.reserve_starts(tasks)
        try:
            results = await self._store.create_tasks(
                tasks, start=starts.run_ids, worker_id=starts.worker_id,
                lease_until=starts.lease_until)
        except BaseException:
            self.unreserve(starts)
            raise
        ready, delayed, started = [], [], []
        for t, result in zip(tasks, results, strict=True):
            if not result.created:
                continue
            if result.started:
                started.append(claimed_at_create(t, worker_id=starts.worker_id,
                                                 now=times.utc(now_s)))
            elif t.type is TaskType.DELAYED and t.run_at is not None:
                delayed.append((t.queue_name, str(t.run_id), times.ms_of(t.run_at),
                                rank(t.priority, t.concurrency_key)))
            else:
                ready.append((t.queue_name, str(t.run_id), rank(t.priority, t.concurrency_key)))
        self.start_created(starts, started)
        if ready or delayed:
            self._copier.add(ready, delayed, [t.run_id for t, r in zip(tasks, results, strict=True)
                                              if r.created and not r.started])
        return results


def claimed_at_create(t: NewTask, *, worker_id: str, now: datetime,
                      workflow_id: uuid.UUID | None = None,
                      workflow_key: str | None = None) -> ClaimedRun:
    """The first run of `t` (a workflow's root when `workflow_id` is given), started at
    create under `worker_id`'s lease."""
    task = Task(id=t.id, name=t.name, handler=t.handler, type=t.type, queue_name=t.queue_name,
                priority=t.priority, payload=t.payload, dedup_key=t.dedup_key,
                max_retries=t.max_retries, timeout_s=t.timeout_s, status=TaskStatus.QUEUED,
                failures=0, run_at=t.run_at, created_at=now, updated_at=now, finished_at=None,
                tenant=t.tenant, secret_fields=t.secret_fields, workflow_id=workflow_id,
                workflow_key=workflow_key)
    return ClaimedRun(run_id=t.run_id, task=task, attempt=1, queue_name=t.queue_name,
                      message=str(t.run_id), enqueued_at=now, worker_id=worker_id)
