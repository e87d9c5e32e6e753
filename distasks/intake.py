"""Intake: group commit of creates.

Concurrent API requests hand their validated task here; a loop writes everything
waiting in one transaction and pushes it to Redis in one pipeline, so the bridge and
the commit are paid once per batch instead of once per task (DESIGN §1). No batch
waits for a timer: what arrives while one batch commits forms the next. (Several loops
may share one Intake; one is best on a busy small box: fewer, larger transactions.)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from distasks.broker import Broker
from distasks.errors import BrokerUnavailable, DistasksError, StoreRejected, StoreUnavailable
from distasks.metrics import Metrics
from distasks.model import CreateResult, NewTask, TaskType
from distasks.store import Store

log = logging.getLogger(__name__)

# Longest a batch commit may take; shutdown waits for it (a hung server fails the batch).
COMMIT_TIMEOUT_S = 10.0
# Most creates committed in one transaction.
MAX_BATCH = 500


@dataclass(slots=True)
class _Request:
    """One caller's tasks; they always land in the same transaction."""

    tasks: list[NewTask]
    done: trio.Event = field(default_factory=trio.Event)
    results: list[CreateResult] = field(default_factory=list)
    error: DistasksError | None = None


class Intake:
    def __init__(self, store: Store, broker: Broker, metrics: Metrics | None = None):
        self._store = store
        self._broker = broker
        self._metrics = metrics or Metrics()
        self._send, self._receive = trio.open_memory_channel[_Request](math.inf)

    async def create(self, task: NewTask) -> CreateResult:
        """Record `task` durably and dispatch it; returns once committed.

        Raises StoreUnavailable when it could not be committed. A task committed while
        Redis is down is still accepted: it is dispatched when Redis returns.
        """
        return (await self.create_many([task]))[0]

    async def create_many(self, tasks: list[NewTask]) -> list[CreateResult]:
        """Like `create`, for several tasks that share one transaction (all or nothing)."""
        request = _Request(tasks)
        self._send.send_nowait(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.results

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit whatever is waiting, batch after batch, until cancelled."""
        task_status.started()
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
            # The whole batch at once: one commit, one Redis pipeline, one mark.
            results, deferred = await self._commit_and_dispatch(tasks)
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
                self._metrics.created.labels(t.queue_name, t.handler).inc()
        if deferred is not None:
            # Committed, so accepted: the reconciler pushes what is not marked dispatched.
            log.warning("created tasks not dispatched yet: %s", deferred,
                        extra={"event": "dispatch_deferred", "count": len(tasks)})
        position = 0
        for request in batch:
            request.results = results[position:position + len(request.tasks)]
            position += len(request.tasks)
            request.done.set()

    async def _commit_and_dispatch(self, tasks: list[NewTask]) -> tuple[
            list[CreateResult], BrokerUnavailable | StoreUnavailable | None]:
        """Insert, then push and mark what was created. Only a failed insert raises; a
        failed push comes back as the second value."""
        results = await self._store.create_tasks(tasks)
        ready, delayed = [], []
        for t, result in zip(tasks, results, strict=True):
            if not result.created:
                continue
            if t.type is TaskType.DELAYED and t.run_at is not None:
                delayed.append((t.queue_name, str(t.run_id), int(t.run_at.timestamp() * 1000)))
            else:
                ready.append((t.queue_name, str(t.run_id)))
        try:
            await self._broker.dispatch(ready=ready, delayed=delayed)
            pushed = [t.run_id for t, r in zip(tasks, results, strict=True) if r.created]
            await self._store.mark_dispatched(pushed, now=datetime.now(UTC))
        except (BrokerUnavailable, StoreUnavailable) as e:
            return results, e
        return results, None
