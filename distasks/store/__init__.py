"""Store: every PostgreSQL read and write of tasks and runs, in domain terms.

Each public method is one crossing of the asyncio bridge and one transaction, and the
hot-path ones take whole batches (DESIGN §1). Connection failures surface as
StoreUnavailable, for the caller's loop to retry with backoff.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg.rows import dict_row

from distasks import aio
from distasks.errors import StoreUnavailable
from distasks.model import (
    ClaimedRun,
    CreateResult,
    NewTask,
    RunStatus,
    Task,
    TaskRun,
    TaskStatus,
    TaskType,
)
from distasks.store import migrate

P = ParamSpec("P")
T = TypeVar("T")

# How long closing the pool may take at shutdown.
CLOSE_TIMEOUT_S = 2.0
# How long a caller waits for a free connection before the store counts as unavailable.
POOL_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Fence:
    """Whose lease an outcome write needs: the run must still be running under
    `worker_id` and, for a takeover, its lease must have expired before `expired_before`."""

    worker_id: str
    expired_before: datetime | None = None


@dataclass(slots=True)
class Outcomes:
    """A batch of finished runs for `record_outcomes`, one row list per kind; every row
    starts with (run_id, fence)."""

    #: (run_id, fence, result_json, finished_at)
    succeeded: list[tuple[uuid.UUID, Fence, str, datetime]] = field(default_factory=list)
    #: (run_id, fence, error, finished_at, next_retry_at, new_run_id)
    retrying: list[tuple[uuid.UUID, Fence, str, datetime, datetime, uuid.UUID]] = field(
        default_factory=list)
    #: (run_id, fence, error, finished_at)
    failed: list[tuple[uuid.UUID, Fence, str, datetime]] = field(default_factory=list)
    #: (run_id, fence, reason, finished_at, new_run_id)
    interrupted: list[tuple[uuid.UUID, Fence, str, datetime, uuid.UUID]] = field(
        default_factory=list)

    def __len__(self) -> int:
        return len(self.succeeded) + len(self.retrying) + len(self.failed) + len(self.interrupted)


@dataclass(frozen=True, slots=True)
class PendingDispatch:
    """A run Redis should index: ready or delayed while queued, leased while running."""

    queue_name: str
    run_id: uuid.UUID
    available_at: datetime
    status: str
    lease_expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a daemon registers about itself."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    version: str
    started_at: datetime


@dataclass(frozen=True, slots=True)
class DeadTask:
    """A task in the DLQ with the error of its last attempt."""

    task: Task
    attempts: int
    last_error: str | None
    failed_at: datetime | None


class Store:
    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any]):
        self._pool = pool

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str, *, min_size: int = 2, max_size: int = 10) -> AsyncIterator[Store]:
        """Open a pool to `dsn` for the block; must run inside aio.open_loop()."""
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            dsn, min_size=min_size, max_size=max_size, open=False, timeout=POOL_TIMEOUT_S,
            name="distasks", kwargs={"application_name": "distasks"},
        )
        await aio.call(pool.open, wait=False)
        try:
            yield cls(pool)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await aio.call(pool.close, timeout=CLOSE_TIMEOUT_S)

    async def _call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """One crossing of the bridge, with connection failures mapped to StoreUnavailable."""
        try:
            return await aio.call(fn, *args, **kwargs)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            raise StoreUnavailable(str(e).strip() or type(e).__name__) from e

    async def migrate(self) -> list[int]:
        """Apply pending migrations; safe when several daemons start at once."""
        return await self._call(self._migrate)

    async def _migrate(self) -> list[int]:
        async with self._pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                return await migrate.apply(conn)
            finally:
                await conn.set_autocommit(False)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless PostgreSQL answers."""
        await self._call(self._ping)

    async def _ping(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")

    # -- create ----------------------------------------------------------------------

    async def create_tasks(self, tasks: Sequence[NewTask]) -> list[CreateResult]:
        """Insert tasks with their first run in one transaction; results in input order.

        A task whose dedup_key already exists (committed, or earlier in `tasks`) is not
        inserted: its result names the existing task with created=False.
        """
        return await self._call(self._create_tasks, tasks)

    async def _create_tasks(self, tasks: Sequence[NewTask]) -> list[CreateResult]:
        # Two items of one batch with one dedup_key: only the first is offered to INSERT.
        first_by_key: dict[str, NewTask] = {}
        to_insert = []
        for t in tasks:
            if t.dedup_key is None:
                to_insert.append(t)
            elif t.dedup_key not in first_by_key:
                first_by_key[t.dedup_key] = t
                to_insert.append(t)
        async with self._pool.connection() as conn:
            cur = await conn.execute(CREATE_TASKS, {
                "id": [t.id for t in to_insert],
                "run_id": [t.run_id for t in to_insert],
                "name": [t.name for t in to_insert],
                "handler": [t.handler for t in to_insert],
                "type": [t.type.value for t in to_insert],
                "queue_name": [t.queue_name for t in to_insert],
                "priority": [t.priority for t in to_insert],
                "payload": [t.payload_json for t in to_insert],
                "dedup_key": [t.dedup_key for t in to_insert],
                "max_retries": [t.max_retries for t in to_insert],
                "timeout_s": [t.timeout_s for t in to_insert],
                "run_at": [t.run_at for t in to_insert],
                "available_at": [t.run_at for t in to_insert],
            })
            inserted = {row[0] for row in await cur.fetchall()}
            existing: dict[str, tuple[uuid.UUID, str]] = {}
            lost_keys = [t.dedup_key for t in tasks if t.dedup_key and t.id not in inserted]
            if lost_keys:
                cur = await conn.execute(EXISTING_BY_DEDUP_KEY, (lost_keys,))
                existing = {key: (tid, status) for key, tid, status in await cur.fetchall()}
            await conn.commit()
        results = []
        for t in tasks:
            if t.id in inserted:
                results.append(CreateResult(t.id, TaskStatus.QUEUED, created=True))
            else:
                assert t.dedup_key is not None
                tid, status = existing[t.dedup_key]
                results.append(CreateResult(tid, TaskStatus(status), created=False))
        return results

    # -- read ------------------------------------------------------------------------

    async def get_task(self, task_id: uuid.UUID) -> tuple[Task, list[TaskRun]] | None:
        """The task and all its runs, oldest attempt first; None if there is no such task."""
        return await self._call(self._get_task, task_id)

    async def _get_task(self, task_id: uuid.UUID) -> tuple[Task, list[TaskRun]] | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(GET_TASK, (task_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(GET_RUNS, (task_id,))
            runs = [_run(r) for r in await cur.fetchall()]
            await conn.rollback()
        return _task(row), runs

    # -- claim and outcome (the hot path) ---------------------------------------------

    async def start_runs(self, run_ids: Sequence[uuid.UUID], *, worker_id: str, now: datetime,
                         lease_until: datetime) -> list[ClaimedRun]:
        """Mark queued runs running under `worker_id`'s lease; returns those that were.

        A run that is not queued any more (claimed elsewhere after a fault, its task
        finished or cancelled) is left alone and not returned.
        """
        return await self._call(self._start_runs, run_ids, worker_id, now, lease_until)

    async def _start_runs(self, run_ids: Sequence[uuid.UUID], worker_id: str, now: datetime,
                          lease_until: datetime) -> list[ClaimedRun]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(START_RUNS, {"run_ids": list(run_ids), "worker_id": worker_id,
                                           "now": now, "lease_until": lease_until})
            rows = await cur.fetchall()
            await conn.commit()
        return [_claimed(r) for r in rows]

    async def record_outcomes(self, outcomes: Outcomes) -> set[uuid.UUID]:
        """Write a batch of outcomes in one transaction; returns the run ids written.

        Fencing: a run is written only while its Fence holds (still `running` under that
        worker, and for a takeover still expired); a run taken over meanwhile is skipped,
        so a late result never overwrites the attempt that took over.
        """
        return await self._call(self._record_outcomes, outcomes)

    async def _record_outcomes(self, o: Outcomes) -> set[uuid.UUID]:
        written: set[uuid.UUID] = set()
        async with self._pool.connection() as conn:
            for sql, rows in ((SUCCEED_RUNS, o.succeeded), (RETRY_RUNS, o.retrying),
                              (FAIL_RUNS, o.failed), (INTERRUPT_RUNS, o.interrupted)):
                if rows:
                    run_ids = [row[0] for row in rows]
                    worker_ids = [row[1].worker_id for row in rows]
                    expired_before = [row[1].expired_before for row in rows]
                    rest = [list(col) for col in zip(*(row[2:] for row in rows), strict=True)]
                    cur = await conn.execute(sql, (run_ids, worker_ids, expired_before, *rest))
                    written.update(r[0] for r in await cur.fetchall())
            await conn.commit()
        return written

    # -- dead-letter queue -----------------------------------------------------------

    async def dead_tasks(self, queue_name: str, *, limit: int) -> list[DeadTask]:
        """The oldest `limit` failed tasks of a queue (the DLQ), with their last error.

        PostgreSQL keeps the DLQ; the Redis list only indexes it for fast depth counts.
        """
        return await self._call(self._dead_tasks, queue_name, limit)

    async def _dead_tasks(self, queue_name: str, limit: int) -> list[DeadTask]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(DEAD_TASKS, {"queue_name": queue_name, "limit": limit})
            rows = await cur.fetchall()
            await conn.rollback()
        return [DeadTask(_task(r), r["attempts"], r["last_error"], r["failed_at"]) for r in rows]

    async def replay(self, queue_name: str, *, limit: int, override_priority: int | None,
                     now: datetime) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Give the oldest `limit` failed tasks of a queue a new queued run with fresh
        retries; returns (task_id, run_id) oldest first.

        Concurrent replays take disjoint tasks (SKIP LOCKED). The priority changes only
        when `override_priority` is given.
        """
        return await self._call(self._replay, queue_name, limit, override_priority, now)

    async def _replay(self, queue_name: str, limit: int, override_priority: int | None,
                      now: datetime) -> list[tuple[uuid.UUID, uuid.UUID]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(REPLAY_TASKS, {
                "queue_name": queue_name, "limit": limit, "priority": override_priority,
                "now": now})
            rows = [(r[0], r[1]) for r in await cur.fetchall()]
            await conn.commit()
        return rows

    # -- leases and takeover -----------------------------------------------------------

    async def expired_runs(self, *, now: datetime, limit: int) -> list[ClaimedRun]:
        """Running runs whose lease expired before `now`, oldest deadline first."""
        return await self._call(self._expired_runs, now, limit)

    async def _expired_runs(self, now: datetime, limit: int) -> list[ClaimedRun]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(EXPIRED_RUNS, {"now": now, "limit": limit})
            rows = await cur.fetchall()
            await conn.rollback()
        return [_claimed(r) for r in rows]

    async def run_states(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RunStatus]:
        """Status of each existing run among `run_ids`."""
        return await self._call(self._run_states, run_ids)

    async def _run_states(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RunStatus]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(RUN_STATES, (list(run_ids),))
            states = {r[0]: RunStatus(r[1]) for r in await cur.fetchall()}
            await conn.rollback()
        return states

    # -- dispatch bookkeeping -----------------------------------------------------------

    async def mark_dispatched(self, run_ids: Sequence[uuid.UUID], *, now: datetime) -> None:
        """Record that these runs' ids are in Redis."""
        if run_ids:
            await self._call(self._mark_dispatched, run_ids, now)

    async def _mark_dispatched(self, run_ids: Sequence[uuid.UUID], now: datetime) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(MARK_DISPATCHED, {"run_ids": list(run_ids), "now": now})
            await conn.commit()

    async def undispatched_runs(self, *, created_before: datetime,
                                limit: int) -> list[PendingDispatch]:
        """Queued runs created before `created_before` that never reached Redis."""
        return await self._call(self._undispatched_runs, created_before, limit)

    async def _undispatched_runs(self, created_before: datetime,
                                 limit: int) -> list[PendingDispatch]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(UNDISPATCHED_RUNS,
                                     {"created_before": created_before, "limit": limit})
            rows = [PendingDispatch(*r) for r in await cur.fetchall()]
            await conn.rollback()
        return rows

    async def dispatch_snapshot(self, queue_name: str, *, after: PendingDispatch | None,
                                limit: int) -> list[PendingDispatch]:
        """Unfinished runs of a queue (queued or running) in the order they became
        available, continuing after `after`: what Redis must index, for a rebuild."""
        return await self._call(self._dispatch_snapshot, queue_name, after, limit)

    async def _dispatch_snapshot(self, queue_name: str, after: PendingDispatch | None,
                                 limit: int) -> list[PendingDispatch]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(DISPATCH_SNAPSHOT, {
                "queue_name": queue_name, "limit": limit,
                "after_at": after.available_at if after else None,
                "after_id": after.run_id if after else None})
            rows = [PendingDispatch(*r) for r in await cur.fetchall()]
            await conn.rollback()
        return rows

    async def dead_task_ids(self, queue_name: str) -> list[uuid.UUID]:
        """Every failed task of a queue, oldest failure first (to rebuild the DLQ index)."""
        return await self._call(self._dead_task_ids, queue_name)

    async def _dead_task_ids(self, queue_name: str) -> list[uuid.UUID]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(DEAD_TASK_IDS, (queue_name,))
            ids = [r[0] for r in await cur.fetchall()]
            await conn.rollback()
        return ids

    async def active_queues(self) -> list[str]:
        """Queues with unfinished or failed tasks: those whose Redis index matters."""
        return await self._call(self._active_queues)

    async def _active_queues(self) -> list[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(ACTIVE_QUEUES)
            names = [r[0] for r in await cur.fetchall()]
            await conn.rollback()
        return names

    # -- workers ---------------------------------------------------------------------

    async def register_worker(self, w: WorkerInfo) -> None:
        await self._call(self._register_worker, w)

    async def _register_worker(self, w: WorkerInfo) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(REGISTER_WORKER, {
                "id": w.id, "host": w.host, "pid": w.pid, "queues": list(w.queues),
                "concurrency": w.concurrency, "version": w.version, "now": w.started_at})
            await conn.commit()

    async def heartbeat(self, worker_id: str, *, now: datetime, run_ids: Sequence[uuid.UUID] = (),
                        lease_until: datetime | None = None,
                        stopped: bool = False) -> set[uuid.UUID]:
        """Record that the daemon lives (or, with `stopped`, that it stopped cleanly) and
        extend to `lease_until` the leases it still holds among `run_ids`; returns those.

        A run missing from the answer was taken over: its handler should stop.
        """
        return await self._call(self._heartbeat, worker_id, now, run_ids, lease_until, stopped)

    async def _heartbeat(self, worker_id: str, now: datetime, run_ids: Sequence[uuid.UUID],
                         lease_until: datetime | None, stopped: bool) -> set[uuid.UUID]:
        held: set[uuid.UUID] = set()
        async with self._pool.connection() as conn:
            await conn.execute(HEARTBEAT, {"id": worker_id, "now": now, "stopped": stopped})
            if run_ids:
                cur = await conn.execute(EXTEND_LEASES, {
                    "run_ids": list(run_ids), "worker_id": worker_id, "lease_until": lease_until})
                held = {r[0] for r in await cur.fetchall()}
            await conn.commit()
        return held

    async def list_workers(self, *, since: datetime) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Daemons that heartbeat since `since`, newest first, each with its running runs."""
        return await self._call(self._list_workers, since)

    async def _list_workers(self, since: datetime) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(LIST_WORKERS, {"since": since})
            workers = await cur.fetchall()
            await cur.execute(RUNNING_BY_WORKER, ([w["id"] for w in workers],))
            runs = await cur.fetchall()
            await conn.rollback()
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            by_worker.setdefault(r["worker_id"], []).append(r)
        return [(w, by_worker.get(w["id"], [])) for w in workers]


# -- SQL ------------------------------------------------------------------------------
# Each constant is named after the method that runs it.

# Batch insert: tasks and their first runs in one statement. ON CONFLICT skips a
# dedup_key that exists (waiting for a concurrent inserter to commit or roll back
# first), and the runs CTE joins on what was really inserted.
CREATE_TASKS = """
WITH input AS (
    SELECT * FROM unnest(
        %(id)s::uuid[], %(run_id)s::uuid[], %(name)s::text[], %(handler)s::text[],
        %(type)s::text[], %(queue_name)s::text[], %(priority)s::int[], %(payload)s::jsonb[],
        %(dedup_key)s::text[], %(max_retries)s::int[], %(timeout_s)s::float8[],
        %(run_at)s::timestamptz[], %(available_at)s::timestamptz[]
    ) AS i(id, run_id, name, handler, type, queue_name, priority, payload, dedup_key,
           max_retries, timeout_s, run_at, available_at)
), inserted AS (
    INSERT INTO tasks (id, name, handler, type, queue_name, priority, payload, dedup_key,
                       max_retries, timeout_s, run_at)
    SELECT id, name, handler, type, queue_name, priority, payload, dedup_key,
           max_retries, timeout_s, run_at
    FROM input
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id
), runs AS (
    INSERT INTO task_runs (id, task_id, attempt, available_at)
    SELECT i.run_id, i.id, 1, coalesce(i.available_at, now())
    FROM input i JOIN inserted USING (id)
)
SELECT id FROM inserted
"""

EXISTING_BY_DEDUP_KEY = "SELECT dedup_key, id, status FROM tasks WHERE dedup_key = ANY(%s)"

GET_TASK = "SELECT * FROM tasks WHERE id = %s"

GET_RUNS = "SELECT * FROM task_runs WHERE task_id = %s ORDER BY attempt"

# Claim in PostgreSQL: only a queued run of a queued task starts, so a message that
# Redis delivers twice after a fault does not start the run twice.
START_RUNS = """
UPDATE task_runs r
SET status = 'running', worker_id = %(worker_id)s, started_at = %(now)s,
    lease_expires_at = %(lease_until)s
FROM tasks t
WHERE r.id = ANY(%(run_ids)s) AND r.status = 'queued'
  AND t.id = r.task_id AND t.status = 'queued'
RETURNING r.id AS run_id, r.attempt, r.available_at, r.worker_id, t.*
"""

# The four outcome statements take column arrays and return the runs they wrote. FENCE
# is the fencing condition: a run that was taken over is no longer running under the
# worker that reports on it and is not touched; a takeover (expired_before set) only
# applies while the lease is still expired, so a heartbeat that got in first wins.
FENCE = ("r.status = 'running' AND r.worker_id = i.worker_id"
         " AND (i.expired_before IS NULL OR r.lease_expires_at < i.expired_before)")

SUCCEED_RUNS = f"""
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[],
                         %s::jsonb[], %s::timestamptz[])
        AS i(run_id, worker_id, expired_before, result, at)
), done AS (
    UPDATE task_runs r
    SET status = 'succeeded', result = i.result, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND {FENCE}
    RETURNING r.id, r.task_id, i.at
), t AS (
    UPDATE tasks t SET status = 'completed', updated_at = done.at, finished_at = done.at
    FROM done WHERE t.id = done.task_id AND t.status = 'queued'
)
SELECT id FROM done
"""

RETRY_RUNS = f"""
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[],
                         %s::text[], %s::timestamptz[], %s::timestamptz[], %s::uuid[])
        AS i(run_id, worker_id, expired_before, error, at, next_retry_at, new_run_id)
), done AS (
    UPDATE task_runs r
    SET status = 'retrying', error = i.error, finished_at = i.at,
        next_retry_at = i.next_retry_at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND {FENCE}
    RETURNING r.id, r.task_id, r.attempt, i.at, i.next_retry_at, i.new_run_id
), t AS (
    UPDATE tasks t SET failures = t.failures + 1, updated_at = done.at
    FROM done WHERE t.id = done.task_id
), next_run AS (
    INSERT INTO task_runs (id, task_id, attempt, created_at, available_at)
    SELECT new_run_id, task_id, attempt + 1, at, next_retry_at FROM done
)
SELECT id FROM done
"""

FAIL_RUNS = f"""
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[],
                         %s::text[], %s::timestamptz[])
        AS i(run_id, worker_id, expired_before, error, at)
), done AS (
    UPDATE task_runs r
    SET status = 'failed', error = i.error, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND {FENCE}
    RETURNING r.id, r.task_id, i.at
), t AS (
    UPDATE tasks t
    SET status = 'failed', failures = t.failures + 1, updated_at = done.at, finished_at = done.at
    FROM done WHERE t.id = done.task_id AND t.status = 'queued'
)
SELECT id FROM done
"""

# Interrupted by shutdown: not a failure, so `failures` stays; the next attempt is ready now.
INTERRUPT_RUNS = f"""
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[],
                         %s::text[], %s::timestamptz[], %s::uuid[])
        AS i(run_id, worker_id, expired_before, error, at, new_run_id)
), done AS (
    UPDATE task_runs r
    SET status = 'interrupted', error = i.error, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND {FENCE}
    RETURNING r.id, r.task_id, r.attempt, i.at, i.new_run_id
), next_run AS (
    INSERT INTO task_runs (id, task_id, attempt, created_at, available_at)
    SELECT new_run_id, task_id, attempt + 1, at, at FROM done
)
SELECT id FROM done
"""

DEAD_TASKS = """
SELECT t.*, last.attempt AS attempts, last.error AS last_error, t.finished_at AS failed_at
FROM tasks t
LEFT JOIN LATERAL (
    SELECT attempt, error FROM task_runs
    WHERE task_id = t.id ORDER BY attempt DESC LIMIT 1
) last ON true
WHERE t.queue_name = %(queue_name)s AND t.status = 'failed'
ORDER BY t.finished_at, t.id
LIMIT %(limit)s
"""

# SKIP LOCKED: two replays at once take different tasks instead of waiting or doubling.
REPLAY_TASKS = """
WITH oldest AS (
    SELECT id FROM tasks
    WHERE queue_name = %(queue_name)s AND status = 'failed'
    ORDER BY finished_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    UPDATE tasks t
    SET status = 'queued', failures = 0, priority = coalesce(%(priority)s, t.priority),
        updated_at = %(now)s, finished_at = NULL
    FROM oldest WHERE t.id = oldest.id
    RETURNING t.id, t.finished_at
)
INSERT INTO task_runs (id, task_id, attempt, created_at, available_at)
SELECT gen_random_uuid(), p.id,
       (SELECT max(attempt) + 1 FROM task_runs WHERE task_id = p.id), %(now)s, %(now)s
FROM picked p
RETURNING task_id, id
"""

# Only runs still running under this worker: a run taken over is not extended.
EXTEND_LEASES = """
UPDATE task_runs SET lease_expires_at = %(lease_until)s
WHERE id = ANY(%(run_ids)s) AND status = 'running' AND worker_id = %(worker_id)s
RETURNING id
"""

EXPIRED_RUNS = """
SELECT r.id AS run_id, r.attempt, r.available_at, r.worker_id, t.*
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status = 'running' AND r.lease_expires_at < %(now)s
ORDER BY r.lease_expires_at
LIMIT %(limit)s
"""

RUN_STATES = "SELECT id, status FROM task_runs WHERE id = ANY(%s)"

MARK_DISPATCHED = """
UPDATE task_runs SET dispatched_at = %(now)s
WHERE id = ANY(%(run_ids)s) AND dispatched_at IS NULL
"""

UNDISPATCHED_RUNS = """
SELECT t.queue_name, r.id, r.available_at, r.status, r.lease_expires_at
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status = 'queued' AND r.dispatched_at IS NULL AND r.created_at < %(created_before)s
ORDER BY r.created_at
LIMIT %(limit)s
"""

DISPATCH_SNAPSHOT = """
SELECT t.queue_name, r.id, r.available_at, r.status, r.lease_expires_at
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status IN ('queued', 'running') AND t.queue_name = %(queue_name)s
  AND (%(after_at)s::timestamptz IS NULL
       OR (r.available_at, r.id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY r.available_at, r.id
LIMIT %(limit)s
"""

DEAD_TASK_IDS = """
SELECT id FROM tasks WHERE queue_name = %s AND status = 'failed' ORDER BY finished_at, id
"""

ACTIVE_QUEUES = """
SELECT DISTINCT queue_name FROM tasks WHERE status IN ('queued', 'failed') ORDER BY 1
"""

REGISTER_WORKER = """
INSERT INTO workers (id, host, pid, queues, concurrency, version, started_at, heartbeat_at)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s, %(version)s, %(now)s, %(now)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, stopped_at = NULL
"""

HEARTBEAT = """
UPDATE workers
SET heartbeat_at = %(now)s, stopped_at = CASE WHEN %(stopped)s THEN %(now)s END
WHERE id = %(id)s
"""

LIST_WORKERS = """
SELECT * FROM workers WHERE heartbeat_at >= %(since)s ORDER BY started_at DESC
"""

RUNNING_BY_WORKER = """
SELECT r.worker_id, r.id AS run_id, r.task_id, r.attempt, r.started_at, r.lease_expires_at,
       t.name, t.handler, t.queue_name
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status = 'running' AND r.worker_id = ANY(%s)
ORDER BY r.started_at
"""


def _claimed(r: dict[str, Any]) -> ClaimedRun:
    return ClaimedRun(run_id=r["run_id"], task=_task(r), attempt=r["attempt"],
                      queue_name=r["queue_name"], message=str(r["run_id"]),
                      enqueued_at=r["available_at"], worker_id=r["worker_id"])


def _task(r: dict[str, Any]) -> Task:
    return Task(
        id=r["id"], name=r["name"], handler=r["handler"], type=TaskType(r["type"]),
        queue_name=r["queue_name"], priority=r["priority"], payload=r["payload"],
        dedup_key=r["dedup_key"], max_retries=r["max_retries"], timeout_s=r["timeout_s"],
        status=TaskStatus(r["status"]), failures=r["failures"], run_at=r["run_at"],
        created_at=r["created_at"], updated_at=r["updated_at"], finished_at=r["finished_at"],
    )


def _run(r: dict[str, Any]) -> TaskRun:
    return TaskRun(
        id=r["id"], task_id=r["task_id"], attempt=r["attempt"], status=RunStatus(r["status"]),
        worker_id=r["worker_id"], lease_expires_at=r["lease_expires_at"],
        available_at=r["available_at"], next_retry_at=r["next_retry_at"], error=r["error"],
        result=r["result"], created_at=r["created_at"], started_at=r["started_at"],
        finished_at=r["finished_at"],
    )


def dumps(value: Any) -> str:
    """JSON for jsonb columns: compact, and never NaN (PostgreSQL rejects it)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
