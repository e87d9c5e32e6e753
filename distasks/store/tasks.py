"""Tasks: create (in batches), read, list, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from distasks.domain.model import Actor, CreateResult, NewTask, Task, TaskRun, TaskStatus
from distasks.store.base import (
    Page,
    StoreBase,
    dumps,
    fetch_yielding,
    page_of,
    payloads_as_text,
    query,
    record_audit,
    run_from_row,
    task_columns,
    task_from_row,
    within_payload_budget,
)
from distasks.store.queues import STARTS_AT_CREATE
from distasks.store.workflows import LOCK_WORKFLOWS, Released, release


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What `list_tasks` keeps; None means any (but for the tenant: one tenant's tasks)."""

    tenant: str = "default"
    status: str | None = None
    queue_name: str | None = None
    name: str | None = None
    handler: str | None = None
    dedup_key: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: JSON text of an object the payload must contain (jsonb @>), looked for only among
    #: the newest `recent_window` tasks that match the rest of the filter: a payload has
    #: no index, so the search is bounded, and says so where it is offered
    payload_contains: str | None = None
    recent_window: int = 100_000


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What `cancel_task` did: the task's status after it, and the run to stop, if one
    was running (its daemon records it cancelled once the handler has stopped)."""

    status: TaskStatus
    cancelled: bool
    #: (queue, run_id) of runs that were waiting and are now cancelled
    waiting: list[tuple[str, uuid.UUID]]
    #: the running run, if any
    running: uuid.UUID | None
    queue_name: str | None = None
    handler: str | None = None
    #: a workflow node's dependents released by the cancel, to push into Redis
    released: Released = field(default_factory=lambda: Released())


# Batch insert: tasks and their first runs in one statement. ON CONFLICT skips a
# dedup_key that exists (waiting for a concurrent inserter to commit or roll back
# first), and the runs CTE joins on what was really inserted. A run offered to start at
# once (`start`: this daemon has an idle executor for its queue) is inserted running
# under the daemon's lease where the queue's rules allow it (store/queues.py
# STARTS_AT_CREATE); it never needs Redis. New queue names are recorded for the queue list.
#
# The rows come as one JSON array (built by `create_tasks_input`): dumping thirteen parameter
# arrays element by element in Python cost about a quarter of a batch create's CPU.
CREATE_TASKS = """
WITH input AS (
    SELECT * FROM json_to_recordset(%(input)s::json) AS i(
        id uuid, run_id uuid, tenant text, name text, handler text, type text,
        queue_name text, priority int, payload json, dedup_key text, max_retries int,
        timeout_s float8, run_at timestamptz, start bool, secret_fields text[],
        concurrency_key text)
), inserted AS (
    INSERT INTO tasks (id, tenant, name, handler, type, queue_name, priority, payload,
                       dedup_key, max_retries, timeout_s, run_at, secret_fields,
                       concurrency_key)
    -- json_to_recordset reads a JSON null payload as SQL NULL: it is JSON's null.
    SELECT id, tenant, name, handler, type, queue_name, priority, coalesce(payload, 'null'),
           dedup_key, max_retries, timeout_s, run_at, coalesce(secret_fields, '{}'),
           concurrency_key
    FROM input
    -- One order for every batch: concurrent batches sharing dedup keys wait, not deadlock.
    ORDER BY tenant, dedup_key
    ON CONFLICT (tenant, dedup_key) DO NOTHING
    RETURNING id
), runs AS (
    INSERT INTO task_runs (id, task_id, bucket, attempt, available_at, status, worker_id,
                           started_at, lease_expires_at, dispatched_at)
    SELECT i.run_id, i.id, distasks_bucket(i.id), 1, coalesce(i.run_at, now()),
           CASE WHEN s.now THEN 'running' ELSE 'queued' END,
           CASE WHEN s.now THEN %(worker_id)s END, CASE WHEN s.now THEN now() END,
           CASE WHEN s.now THEN %(lease_until)s::timestamptz END,
           CASE WHEN s.now THEN now() END
    FROM input i JOIN inserted USING (id)
    CROSS JOIN LATERAL (SELECT %(starts_at_create)s) AS s(now)
    RETURNING id, status = 'running' AS started
), new_queues AS (
    -- No NOT EXISTS filter: ON CONFLICT also waits for a queue delete in progress and
    -- then writes the row again (store/queues.py QUEUE_FOR_DELETE).
    INSERT INTO queues (name)
    SELECT DISTINCT queue_name FROM input
    ON CONFLICT DO NOTHING
)
SELECT i.id, runs.started FROM input i JOIN runs ON runs.id = i.run_id
""".replace("%(starts_at_create)s", STARTS_AT_CREATE)

# What a create with a taken dedup_key is compared with: the request that made the task
# (run_at aside, since a delay_seconds gives a new one on every try), real payload values
# and secret marks included.
EXISTING_BY_DEDUP_KEY = """
SELECT tenant, dedup_key, id, status, name, handler, type, queue_name, priority, payload,
       max_retries, timeout_s, secret_fields, concurrency_key
FROM tasks WHERE (tenant, dedup_key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

GET_TASK = "SELECT * FROM tasks WHERE id = %s"

# The bucket condition names the one partition of task_runs that holds them.
GET_RUNS = ("SELECT * FROM task_runs WHERE task_id = %(id)s"
            " AND bucket = distasks_bucket(%(id)s) ORDER BY attempt")

# Two statements in one transaction: the runs are read after the task row is locked and
# updated, so an attempt that an outcome write created just before (a retry, a hand-back)
# is seen and cancelled too. A running run is left to its daemon, which stops the handler
# and records the run cancelled (fenced like any outcome).
CANCEL_TASK = """
UPDATE tasks
SET status = 'cancelled', cancelled_at = %(now)s, cancelled_by = %(actor)s,
    cancel_reason = %(reason)s, updated_at = %(now)s, finished_at = %(now)s
WHERE id = %(id)s AND tenant = %(tenant)s AND status IN ('queued', 'pending')
RETURNING queue_name, handler, workflow_id
"""

CANCEL_RUNS = """
WITH waiting AS (
    UPDATE task_runs SET status = 'cancelled', finished_at = %(now)s
    WHERE task_id = %(id)s AND bucket = distasks_bucket(%(id)s) AND status = 'queued'
    RETURNING id
)
SELECT (SELECT array_agg(id) FROM waiting),
       (SELECT id FROM task_runs
        WHERE task_id = %(id)s AND bucket = distasks_bucket(%(id)s) AND status = 'running')
"""


# Tasks that reached a final state in a window, per minute: the console's charts. The
# range on finished_at uses the partial index tasks_finished; only the window's rows count.
FINISHED_BY_MINUTE = """
SELECT date_trunc('minute', finished_at) AS minute, status, count(*)
  FROM tasks
 WHERE finished_at >= %(since)s AND tenant = %(tenant)s
 GROUP BY 1, 2
 ORDER BY 1
"""

# How long runs waited from ready to started, per minute they started, for the runs of
# the latest few thousand tasks that finished in a window: found through tasks_finished
# (newest first), then each task's runs by their (task_id, attempt) key. Joining every
# task of a busy hour took 0.5 s at 36,000 tasks; the latest few thousand show the
# recent minutes of a busy queue and the whole hour of a quiet one.
START_LATENCY_BY_MINUTE = """
SELECT date_trunc('minute', r.started_at) AS minute,
       avg(extract(epoch FROM r.started_at - r.available_at)) AS avg_s,
       max(extract(epoch FROM r.started_at - r.available_at)) AS max_s
  FROM (SELECT id FROM tasks
         WHERE finished_at >= %(since)s AND tenant = %(tenant)s
         ORDER BY finished_at DESC LIMIT %(tasks)s) t
  JOIN task_runs r ON r.task_id = t.id AND r.bucket = distasks_bucket(t.id)
 WHERE r.started_at >= %(since)s
 GROUP BY 1
 ORDER BY 1
"""

# The same two figures for whole hours [since, until), for the console's day charts:
# finished tasks counted through the finished_at index, waits sampled from the latest
# `per_hour` tasks of each hour (one index range per hour), so that an hour of a busy
# day costs what the last hour's chart costs.
FINISHED_BY_HOUR = """
SELECT date_trunc('hour', finished_at) AS hour, status, count(*)
  FROM tasks
 WHERE finished_at >= %(since)s AND finished_at < %(until)s AND tenant = %(tenant)s
 GROUP BY 1, 2
 ORDER BY 1
"""

START_LATENCY_BY_HOUR = """
SELECT h.hour,
       avg(extract(epoch FROM r.started_at - r.available_at)) AS avg_s,
       max(extract(epoch FROM r.started_at - r.available_at)) AS max_s
  FROM generate_series(%(since)s::timestamptz, %(until)s::timestamptz - interval '1 hour',
                       interval '1 hour') AS h(hour)
 CROSS JOIN LATERAL (
       SELECT id FROM tasks
        WHERE finished_at >= h.hour AND finished_at < h.hour + interval '1 hour'
          AND tenant = %(tenant)s
        ORDER BY finished_at DESC LIMIT %(per_hour)s) t
  JOIN task_runs r ON r.task_id = t.id AND r.bucket = distasks_bucket(t.id)
 WHERE r.started_at IS NOT NULL
 GROUP BY 1
 ORDER BY 1
"""


class TaskQueries(StoreBase):
    @query
    async def create_tasks(self, tasks: Sequence[NewTask], *,
                           start: Collection[uuid.UUID] = frozenset(), worker_id: str = "",
                           lease_until: datetime | None = None) -> list[CreateResult]:
        """Insert tasks with their first run in one statement; results in input order.

        A task whose dedup_key already exists (committed, or earlier in `tasks`) is not
        inserted: its result names the existing task with created=False. Runs named in
        `start` begin running under `worker_id`'s lease until `lease_until` (`started` in
        their result), unless their queue is paused.
        """
        # Two items of one batch with one tenant's dedup_key: only the first is offered
        # to INSERT.
        first_by_key: dict[tuple[str, str], NewTask] = {}
        to_insert = []
        for t in tasks:
            if t.dedup_key is None:
                to_insert.append(t)
            elif (t.tenant, t.dedup_key) not in first_by_key:
                first_by_key[t.tenant, t.dedup_key] = t
                to_insert.append(t)
        async with self._pool.connection() as conn:
            cur = await conn.execute(CREATE_TASKS, {
                "input": create_tasks_input(to_insert, start),
                "worker_id": worker_id, "lease_until": lease_until,
            })
            inserted = dict(await cur.fetchall())  # task id -> started
            existing: dict[tuple[str, str], tuple[Any, ...]] = {}
            lost = [(t.tenant, t.dedup_key) for t in tasks if t.dedup_key and t.id not in inserted]
            if lost:
                cur = await conn.execute(EXISTING_BY_DEDUP_KEY, ([k[0] for k in lost],
                                                                 [k[1] for k in lost]))
                existing = {(row[0], row[1]): row[2:] for row in await cur.fetchall()}
        results = []
        for t in tasks:
            if t.id in inserted:
                results.append(CreateResult(t.id, TaskStatus.QUEUED, created=True,
                                            started=inserted[t.id]))
            else:
                assert t.dedup_key is not None
                tid, status, *made_from = existing[t.tenant, t.dedup_key]
                asked = (t.name, t.handler, t.type.value, t.queue_name, t.priority, t.payload,
                         t.max_retries, t.timeout_s, list(t.secret_fields), t.concurrency_key)
                results.append(CreateResult(tid, TaskStatus(status), created=False,
                                            conflict=tuple(made_from) != asked))
        return results

    @query
    async def queued_count(self, tenant: str) -> int:
        """How many of `tenant`'s tasks are not finished (its quota, distasks.access.quotas)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM tasks WHERE tenant = %s AND status IN ('queued', 'pending')",
                (tenant,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    @query
    async def final_among(self, task_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Those of `task_ids` that are completed, failed, cancelled or skipped."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM tasks WHERE id = ANY(%s) AND status NOT IN ('queued', 'pending')",
                (list(task_ids),))
            return [row[0] for row in await cur.fetchall()]

    @query
    async def get_task(self, task_id: uuid.UUID, *, payload_text: bool = False,
                       ) -> tuple[Task, list[TaskRun]] | None:
        """The task and all its runs, oldest attempt first; None if there is no such task.
        With `payload_text`, its payload is the JsonText PostgreSQL returned."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            if payload_text:
                payloads_as_text(cur)
            await cur.execute(GET_TASK, (task_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(GET_RUNS, {"id": task_id})
            runs = [run_from_row(r) for r in await cur.fetchall()]
        return task_from_row(row), runs

    @query
    async def list_tasks(self, f: TaskFilter, *, limit: int,
                         after: tuple[datetime, uuid.UUID] | None,
                         with_payload: bool = True, max_payload_bytes: int | None = None,
                         payload_text: bool = False) -> Page[Task]:
        """Tasks matching `f`, newest first, continuing after the (created_at, id) key;
        without their payloads (None) unless `with_payload`, as JsonText with
        `payload_text`."""
        where, params = _filtered(f)
        if after is not None:
            where.append("(created_at, id) < (%(after_at)s, %(after_id)s)")
            params["after_at"], params["after_id"] = after
        params["limit"] = limit
        # Only fixed fragments are joined into the text; every value is a parameter.
        sql = (f"SELECT {task_columns(with_payload=with_payload)} FROM tasks WHERE "
               + " AND ".join(where)
               + " ORDER BY created_at DESC, id DESC LIMIT %(limit)s")
        if f.payload_contains is not None:
            # The newest recent_window rows of the rest of the filter (an index scan),
            # then containment on those only.
            params["window"], params["contains"] = f.recent_window, f.payload_contains
            sql = (f"SELECT {task_columns(with_payload=with_payload, alias='recent')} FROM ("
                   "SELECT * FROM tasks WHERE " + " AND ".join(where)
                   + " ORDER BY created_at DESC, id DESC LIMIT %(window)s) recent"
                   " WHERE recent.payload::jsonb @> %(contains)s::jsonb"
                   " ORDER BY created_at DESC, id DESC LIMIT %(limit)s")
        if with_payload and max_payload_bytes is not None:
            # The page ends once its payloads pass the budget; `cut` says more follow.
            sql = within_payload_budget(sql, "created_at DESC, id DESC")
            params["max_payload_bytes"] = max_payload_bytes
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            if payload_text:
                payloads_as_text(cur)
            await cur.execute(sql.encode(), params)
            rows = await (fetch_yielding(cur) if with_payload else cur.fetchall())
        return page_of(rows, task_from_row)

    @query
    async def count_tasks(self, f: TaskFilter, *, cap: int, budget_ms: int) -> int | None:
        """How many tasks match `f`, counted up to `cap + 1` at most: a number above `cap`
        means "more than cap" (a count of millions of rows is seconds; a page needs
        only to say so). None when counting would take over `budget_ms` (a filter no
        index serves, such as a name, counts by reading the whole table)."""
        where, params = _filtered(f)
        params["cap"] = cap + 1
        sql = ("SELECT count(*) FROM (SELECT 1 FROM tasks WHERE " + " AND ".join(where)
               + " LIMIT %(cap)s) capped")
        try:
            async with self._pool.transaction() as conn:
                await conn.execute(f"SET LOCAL statement_timeout = {int(budget_ms)}".encode())
                cur = await conn.execute(sql.encode(), params)
                row = await cur.fetchone()
        except psycopg.errors.QueryCanceled:
            return None
        return int(row[0]) if row else 0

    @query
    async def finished_by_minute(self, tenant: str, *, since: datetime,
                                 ) -> list[tuple[datetime, str, int]]:
        """(minute, final status, count) of `tenant`'s tasks finished since `since`, by
        the partial index on finished_at."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(FINISHED_BY_MINUTE, {"tenant": tenant, "since": since})
            return [(at, status, int(n)) for at, status, n in await cur.fetchall()]

    @query
    async def start_latency_by_minute(self, tenant: str, *, since: datetime, tasks: int,
                                      ) -> list[tuple[datetime, float, float]]:
        """(minute, mean, longest) seconds from ready to started of the runs that started
        in each minute since `since`, of the latest `tasks` of `tenant`'s tasks that
        finished since then."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(START_LATENCY_BY_MINUTE,
                                     {"tenant": tenant, "since": since, "tasks": tasks})
            return [(at, float(avg_s), float(max_s))
                    for at, avg_s, max_s in await cur.fetchall()]

    @query
    async def finished_by_hour(self, tenant: str, *, since: datetime, until: datetime,
                               ) -> list[tuple[datetime, str, int]]:
        """(hour, final status, count) of `tenant`'s tasks finished in [since, until)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(FINISHED_BY_HOUR,
                                     {"tenant": tenant, "since": since, "until": until})
            return [(at, status, int(n)) for at, status, n in await cur.fetchall()]

    @query
    async def start_latency_by_hour(self, tenant: str, *, since: datetime, until: datetime,
                                    per_hour: int) -> list[tuple[datetime, float, float]]:
        """(hour, mean, longest) seconds from ready to started of the runs of the latest
        `per_hour` of `tenant`'s tasks that finished in each whole hour of [since, until)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(START_LATENCY_BY_HOUR,
                                     {"tenant": tenant, "since": since, "until": until,
                                      "per_hour": per_hour})
            return [(at, float(avg_s), float(max_s))
                    for at, avg_s, max_s in await cur.fetchall()]

    @query
    async def cancel_task(self, task_id: uuid.UUID, *, tenant: str, actor: Actor,
                          reason: str | None, now: datetime) -> Cancellation | None:
        """Cancel `tenant`'s queued task (waiting, delayed or running); None if the
        tenant has no such task. A task already finished is left as it is (`cancelled`
        False)."""
        async with self._pool.transaction() as conn:
            params = {"id": task_id, "tenant": tenant, "actor": actor.id, "reason": reason,
                      "now": now}
            # A workflow node's workflow is locked first, as every release locks it.
            await conn.execute(LOCK_WORKFLOWS, {"ids": [task_id]})
            cur = await conn.execute(CANCEL_TASK, params)
            task_row = await cur.fetchone()
            if task_row is not None:
                cur = await conn.execute(CANCEL_RUNS, params)
                runs_row = await cur.fetchone()
                assert runs_row is not None
                row = (*task_row[:2], *runs_row)
                released = (await release(conn, [task_id], now=now) if task_row[2] is not None
                            else Released())
                await record_audit(conn, at=now, actor=actor, action="cancel", queue_name=row[0],
                                   detail={"task_id": str(task_id), "reason": reason})
                return Cancellation(TaskStatus.CANCELLED, True,
                                    [(row[0], r) for r in row[2] or []], row[3],
                                    queue_name=row[0], handler=row[1], released=released)
            cur = await conn.execute("SELECT status FROM tasks WHERE id = %s AND tenant = %s",
                                     (task_id, tenant))
            found = await cur.fetchone()
        if found is None:
            return None
        return Cancellation(TaskStatus(found[0]), False, [], None)


def create_tasks_input(tasks: Sequence[NewTask], start: Collection[uuid.UUID]) -> str:
    """CREATE_TASKS' input: one JSON object per task, its payload spliced in as the JSON
    text the API already made (not parsed and dumped again)."""
    rows = []
    for t in tasks:
        head = dumps({
            "id": str(t.id), "run_id": str(t.run_id), "tenant": t.tenant, "name": t.name,
            "handler": t.handler,
            "type": t.type.value, "queue_name": t.queue_name, "priority": t.priority,
            "dedup_key": t.dedup_key, "max_retries": t.max_retries, "timeout_s": t.timeout_s,
            "run_at": t.run_at.isoformat() if t.run_at else None, "start": t.run_id in start,
            "secret_fields": list(t.secret_fields), "concurrency_key": t.concurrency_key})
        rows.append(f'{head[:-1]},"payload":{t.payload_json}}}')
    return f"[{','.join(rows)}]"


def _filtered(f: TaskFilter) -> tuple[list[str], dict[str, Any]]:
    """The WHERE clauses (fixed text) and parameters of `f`, for list_tasks and count_tasks."""
    where, params = ["tenant = %(tenant)s"], dict[str, Any](tenant=f.tenant)
    for column in ("status", "queue_name", "name", "handler", "dedup_key"):
        if (value := getattr(f, column)) is not None:
            where.append(f"{column} = %({column})s")
            params[column] = value
    if f.created_after is not None:
        where.append("created_at >= %(created_after)s")
        params["created_after"] = f.created_after
    if f.created_before is not None:
        where.append("created_at < %(created_before)s")
        params["created_before"] = f.created_before
    return where, params
