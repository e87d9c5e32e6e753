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


@dataclass(slots=True)
class Outcomes:
    """A batch of finished runs for `record_outcomes`, one column list per kind."""

    #: (run_id, result_json, finished_at)
    succeeded: list[tuple[uuid.UUID, str, datetime]] = field(default_factory=list)
    #: (run_id, error, finished_at, next_retry_at, new_run_id)
    retrying: list[tuple[uuid.UUID, str, datetime, datetime, uuid.UUID]] = field(default_factory=list)
    #: (run_id, error, finished_at)
    failed: list[tuple[uuid.UUID, str, datetime]] = field(default_factory=list)
    #: (run_id, reason, finished_at, new_run_id)
    interrupted: list[tuple[uuid.UUID, str, datetime, uuid.UUID]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.succeeded) + len(self.retrying) + len(self.failed) + len(self.interrupted)


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
        return [ClaimedRun(run_id=r["run_id"], task=_task(r), attempt=r["attempt"],
                           queue_name=r["queue_name"], message=str(r["run_id"]),
                           enqueued_at=r["available_at"]) for r in rows]

    async def record_outcomes(self, outcomes: Outcomes, *, worker_id: str) -> set[uuid.UUID]:
        """Write a batch of outcomes in one transaction; returns the run ids written.

        Fencing: a run is only written while it is still `running` under `worker_id`;
        a run taken over meanwhile is skipped, so a late result never overwrites it.
        """
        return await self._call(self._record_outcomes, outcomes, worker_id)

    async def _record_outcomes(self, o: Outcomes, worker_id: str) -> set[uuid.UUID]:
        written: set[uuid.UUID] = set()
        async with self._pool.connection() as conn:
            for sql, rows in ((SUCCEED_RUNS, o.succeeded), (RETRY_RUNS, o.retrying),
                              (FAIL_RUNS, o.failed), (INTERRUPT_RUNS, o.interrupted)):
                if rows:
                    columns = [list(col) for col in zip(*rows, strict=True)]
                    cur = await conn.execute(sql, (*columns, worker_id))
                    written.update(r[0] for r in await cur.fetchall())
            await conn.commit()
        return written

    # -- dead-letter queue -----------------------------------------------------------

    async def dead_tasks(self, task_ids: Sequence[uuid.UUID]) -> list[DeadTask]:
        """The failed tasks among `task_ids`, in the given order, with their last error."""
        return await self._call(self._dead_tasks, task_ids)

    async def _dead_tasks(self, task_ids: Sequence[uuid.UUID]) -> list[DeadTask]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(DEAD_TASKS, (list(task_ids),))
            by_id = {r["id"]: r for r in await cur.fetchall()}
            await conn.rollback()
        return [DeadTask(_task(r), r["attempts"], r["last_error"], r["failed_at"])
                for tid in task_ids if (r := by_id.get(tid))]

    async def replay(self, task_ids: Sequence[uuid.UUID], *, queue_name: str,
                     override_priority: int | None, now: datetime) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Give failed tasks a new queued run with fresh retries; returns (task_id, run_id).

        Tasks that are no longer failed (replayed concurrently) are skipped. The priority
        changes only when `override_priority` is given.
        """
        return await self._call(self._replay, task_ids, queue_name, override_priority, now)

    async def _replay(self, task_ids: Sequence[uuid.UUID], queue_name: str,
                      override_priority: int | None, now: datetime) -> list[tuple[uuid.UUID, uuid.UUID]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(REPLAY_TASKS, {
                "task_ids": list(task_ids), "queue_name": queue_name,
                "priority": override_priority, "now": now})
            rows = [(r[0], r[1]) for r in await cur.fetchall()]
            await conn.commit()
        return rows


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
RETURNING r.id AS run_id, r.attempt, r.available_at, t.*
"""

# The four outcome statements take column arrays and the worker id, and return the runs
# they wrote. `r.status = 'running' AND r.worker_id = …` is the fence: a run that was
# taken over is no longer running under this worker and is not touched.
SUCCEED_RUNS = """
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::jsonb[], %s::timestamptz[]) AS i(run_id, result, at)
), done AS (
    UPDATE task_runs r
    SET status = 'succeeded', result = i.result, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND r.status = 'running' AND r.worker_id = %s
    RETURNING r.id, r.task_id, i.at
), t AS (
    UPDATE tasks t SET status = 'completed', updated_at = done.at, finished_at = done.at
    FROM done WHERE t.id = done.task_id AND t.status = 'queued'
)
SELECT id FROM done
"""

RETRY_RUNS = """
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::uuid[])
        AS i(run_id, error, at, next_retry_at, new_run_id)
), done AS (
    UPDATE task_runs r
    SET status = 'retrying', error = i.error, finished_at = i.at,
        next_retry_at = i.next_retry_at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND r.status = 'running' AND r.worker_id = %s
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

FAIL_RUNS = """
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[]) AS i(run_id, error, at)
), done AS (
    UPDATE task_runs r
    SET status = 'failed', error = i.error, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND r.status = 'running' AND r.worker_id = %s
    RETURNING r.id, r.task_id, i.at
), t AS (
    UPDATE tasks t
    SET status = 'failed', failures = t.failures + 1, updated_at = done.at, finished_at = done.at
    FROM done WHERE t.id = done.task_id AND t.status = 'queued'
)
SELECT id FROM done
"""

# Interrupted by shutdown: not a failure, so `failures` stays; the next attempt is ready now.
INTERRUPT_RUNS = """
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::uuid[])
        AS i(run_id, error, at, new_run_id)
), done AS (
    UPDATE task_runs r
    SET status = 'interrupted', error = i.error, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND r.status = 'running' AND r.worker_id = %s
    RETURNING r.id, r.task_id, r.attempt, i.at, i.new_run_id
), next_run AS (
    INSERT INTO task_runs (id, task_id, attempt, created_at, available_at)
    SELECT new_run_id, task_id, attempt + 1, at, at FROM done
)
SELECT id FROM done
"""

DEAD_TASKS = """
SELECT t.*, last.attempt AS attempts, last.error AS last_error, last.finished_at AS failed_at
FROM tasks t
LEFT JOIN LATERAL (
    SELECT attempt, error, finished_at FROM task_runs
    WHERE task_id = t.id ORDER BY attempt DESC LIMIT 1
) last ON true
WHERE t.id = ANY(%s) AND t.status = 'failed'
"""

# `t.status = 'failed'` makes a replay happen once even when two callers race.
REPLAY_TASKS = """
WITH picked AS (
    UPDATE tasks t
    SET status = 'queued', failures = 0, priority = coalesce(%(priority)s, t.priority),
        updated_at = %(now)s, finished_at = NULL
    WHERE t.id = ANY(%(task_ids)s) AND t.status = 'failed' AND t.queue_name = %(queue_name)s
    RETURNING t.id
)
INSERT INTO task_runs (id, task_id, attempt, created_at, available_at)
SELECT gen_random_uuid(), p.id,
       (SELECT max(attempt) + 1 FROM task_runs WHERE task_id = p.id), %(now)s, %(now)s
FROM picked p
RETURNING task_id, id
"""


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
