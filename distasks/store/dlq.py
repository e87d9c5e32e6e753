"""The dead-letter queue as PostgreSQL keeps it: failed tasks of a queue, oldest failure
first, never trimmed or expired. Replays and deletions are recorded in the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from distasks.domain.model import SYSTEM, Actor, Task
from distasks.store.base import (
    Page,
    StoreBase,
    fetch_yielding,
    page_of,
    payloads_as_text,
    query,
    record_audit,
    task_columns,
    task_from_row,
    within_payload_budget,
)

# DLQ entries per queue, as the DLQ listing counts them (_where with no filter): a count
# over the partial index tasks_dead (queue_name, finished_at, id) WHERE status =
# 'failed' AND dlq_deleted_at IS NULL (migration 0003), which grows with the DLQ.
DLQ_DEPTHS = """
SELECT queue_name, count(*) FROM tasks
WHERE queue_name = ANY(%s) AND status = 'failed' AND dlq_deleted_at IS NULL
GROUP BY queue_name
"""


@dataclass(frozen=True, slots=True)
class DlqFilter:
    """Which DLQ entries an operation touches; None means any. `task_ids` restricts to
    those tasks (still only failed ones of the queue)."""

    handler: str | None = None
    #: a substring of the last attempt's error, case-insensitive
    error: str | None = None
    failed_since: datetime | None = None
    task_ids: tuple[uuid.UUID, ...] | None = None


@dataclass(frozen=True, slots=True)
class DeadTask:
    """A task in the DLQ with the error of its last attempt."""

    task: Task
    attempts: int
    last_error: str | None
    failed_at: datetime | None


LAST_ERROR = ("(SELECT error FROM task_runs lr"
              " WHERE lr.task_id = t.id AND lr.bucket = distasks_bucket(t.id)"
              " ORDER BY lr.attempt DESC LIMIT 1)")


def _where(queue_name: str, f: DlqFilter) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of DLQ entries of `queue_name` matching `f` (fixed fragments only;
    every value is a parameter)."""
    where = ["t.queue_name = %(queue_name)s", "t.status = 'failed'", "t.dlq_deleted_at IS NULL"]
    params: dict[str, Any] = {"queue_name": queue_name}
    if f.handler is not None:
        where.append("t.handler = %(handler)s")
        params["handler"] = f.handler
    if f.error is not None:
        where.append(f"{LAST_ERROR} ILIKE %(error)s ESCAPE '\\'")
        escaped = f.error.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["error"] = f"%{escaped}%"
    if f.failed_since is not None:
        where.append("t.finished_at >= %(failed_since)s")
        params["failed_since"] = f.failed_since
    if f.task_ids is not None:
        where.append("t.id = ANY(%(task_ids)s)")
        params["task_ids"] = list(f.task_ids)
    return " AND ".join(where), params


REPLAY_PICKED = """
WITH picked AS (
    UPDATE tasks t
    SET status = 'queued', failures = 0, priority = coalesce(%(priority)s, t.priority),
        updated_at = %(now)s, finished_at = NULL
    -- A workflow's node runs again through the workflow's resume, which releases its
    -- dependents too; a replay would leave them cancelled.
    WHERE t.id = ANY(%(ids)s) AND t.status = 'failed' AND t.workflow_id IS NULL
    RETURNING t.id, t.priority, t.concurrency_key
), added AS (
    INSERT INTO task_runs (id, task_id, bucket, attempt, created_at, available_at)
    SELECT distasks_run_id(p.id), p.id, distasks_bucket(p.id),
           (SELECT max(attempt) + 1 FROM task_runs
            WHERE task_id = p.id AND bucket = distasks_bucket(p.id)), %(now)s, %(now)s
    FROM picked p
    RETURNING task_id, id
)
-- The priority the new run is claimed at (the override, if any) and its concurrency key:
-- Redis needs them.
SELECT a.task_id, a.id, p.priority, p.concurrency_key
FROM added a JOIN picked p ON p.id = a.task_id
"""


class DlqQueries(StoreBase):
    @query
    async def dead_tasks(self, queue_name: str, f: DlqFilter = DlqFilter(), *, limit: int,
                         after: tuple[datetime, uuid.UUID] | None = None,
                         with_payload: bool = True, max_payload_bytes: int | None = None,
                         payload_text: bool = False) -> Page[DeadTask]:
        """DLQ entries of a queue matching `f`, oldest failure first, continuing after the
        (failed_at, id) key, with their last error; without payloads unless asked (as
        JsonText with `payload_text`); cut short (`cut`) once their payloads pass
        `max_payload_bytes` (base.within_payload_budget)."""
        where, params = _where(queue_name, f)
        if after is not None:
            where += " AND (t.finished_at, t.id) > (%(after_at)s, %(after_id)s)"
            params["after_at"], params["after_id"] = after
        params["limit"] = limit
        sql = f"""
            SELECT {task_columns(with_payload=with_payload, alias="t")},
                   last.attempt AS attempts, last.error AS last_error
            FROM tasks t
            LEFT JOIN LATERAL (
                SELECT attempt, error FROM task_runs
                WHERE task_id = t.id AND bucket = distasks_bucket(t.id)
                ORDER BY attempt DESC LIMIT 1
            ) last ON true
            WHERE {where}
            ORDER BY t.finished_at, t.id
            LIMIT %(limit)s"""
        if with_payload and max_payload_bytes is not None:
            sql = within_payload_budget(sql, "finished_at, id")
            params["max_payload_bytes"] = max_payload_bytes
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            if payload_text:
                payloads_as_text(cur)
            await cur.execute(sql.encode(), params)
            rows = await (fetch_yielding(cur) if with_payload else cur.fetchall())
        return page_of(rows, lambda r: DeadTask(task_from_row(r), r["attempts"],
                                                r["last_error"], r["finished_at"]))

    @query
    async def replay(self, queue_name: str, f: DlqFilter = DlqFilter(), *, limit: int,
                     override_priority: int | None, now: datetime, actor: Actor = SYSTEM,
                     dry_run: bool = False
                     ) -> list[tuple[uuid.UUID, uuid.UUID | None, int, str | None]]:
        """Give the oldest `limit` DLQ entries matching `f` a new queued run with fresh
        retries; returns (task_id, new run_id, priority, concurrency_key) oldest first
        (run_id None, priority 0 and no key on a dry run).

        Concurrent replays take disjoint tasks (SKIP LOCKED). The priority changes only
        when `override_priority` is given.
        """
        async with self._pool.transaction() as conn:
            ids = await self._pick(conn, queue_name, f, limit)
            if dry_run or not ids:
                return [(i, None, 0, None) for i in ids]
            cur = await conn.execute(REPLAY_PICKED, {"ids": ids, "priority": override_priority,
                                                     "now": now})
            run_by_task = {task_id: (run_id, priority, key)
                           for task_id, run_id, priority, key in await cur.fetchall()}
            await record_audit(conn, at=now, actor=actor, action="dlq_replay",
                               queue_name=queue_name, detail={
                                   "task_ids": [str(i) for i in ids],
                                   "override_priority": override_priority,
                                   "filter": _describe(f)})
        return [(i, *run_by_task[i]) for i in ids if i in run_by_task]

    @query
    async def delete_dead(self, queue_name: str, f: DlqFilter = DlqFilter(), *, limit: int,
                          now: datetime, actor: Actor = SYSTEM,
                          dry_run: bool = False) -> list[uuid.UUID]:
        """Take the oldest `limit` DLQ entries matching `f` out of the DLQ (the tasks and
        their runs stay on record); returns their ids."""
        async with self._pool.transaction() as conn:
            ids = await self._pick(conn, queue_name, f, limit)
            if dry_run or not ids:
                return ids
            await conn.execute("UPDATE tasks SET dlq_deleted_at = %s, updated_at = %s"
                               " WHERE id = ANY(%s)", (now, now, ids))
            await record_audit(conn, at=now, actor=actor, action="dlq_delete",
                               queue_name=queue_name, detail={
                                   "task_ids": [str(i) for i in ids], "filter": _describe(f)})
        return ids

    async def _pick(self, conn: Any, queue_name: str, f: DlqFilter, limit: int) -> list[uuid.UUID]:
        # SKIP LOCKED: two replays at once take different tasks instead of one waiting.
        where, params = _where(queue_name, f)
        params["limit"] = limit
        cur = await conn.execute((f"SELECT t.id FROM tasks t WHERE {where}"
                                  " ORDER BY t.finished_at, t.id LIMIT %(limit)s"
                                  " FOR UPDATE SKIP LOCKED").encode(), params)
        return [r[0] for r in await cur.fetchall()]

    @query
    async def dlq_depths(self, queue_names: Sequence[str]) -> dict[str, int]:
        """How many DLQ entries each of `queue_names` has (0 for none): the depth the
        queue list and the gauges show, so that they agree with the DLQ listing."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(DLQ_DEPTHS, (list(queue_names),))
            found = {name: n for name, n in await cur.fetchall()}
        return {name: found.get(name, 0) for name in queue_names}

    @query
    async def dead_task_ids(self, queue_name: str) -> list[uuid.UUID]:
        """Every DLQ entry of a queue, oldest failure first (to rebuild the Redis index)."""
        where, params = _where(queue_name, DlqFilter())
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT t.id FROM tasks t WHERE {where} ORDER BY t.finished_at, t.id".encode(),
                params)
            ids = [r[0] for r in await cur.fetchall()]
        return ids


def _describe(f: DlqFilter) -> dict[str, Any]:
    return {"handler": f.handler, "error": f.error,
            "failed_since": f.failed_since.isoformat() if f.failed_since else None,
            "by_ids": f.task_ids is not None}
