"""What Redis should index: runs not yet pushed, and full snapshots for a rebuild."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from distasks.store.base import StoreBase, by_bucket, query


@dataclass(frozen=True, slots=True)
class PendingDispatch:
    """A run Redis should index: ready or delayed while queued, leased while running."""

    queue_name: str
    run_id: uuid.UUID
    available_at: datetime
    status: str
    lease_expires_at: datetime | None
    #: the task's priority, which orders its ready list in Redis
    priority: int
    #: the task's concurrency key, whose list it waits in and whose count it is part of
    concurrency_key: str | None = None


# SKIP LOCKED: a locked run is being started or finished by a worker right now, so it
# is no longer queued and the reconciler will not look at it; waiting for it could only
# deadlock with the worker's statement.
MARK_DISPATCHED = """
UPDATE task_runs SET dispatched_at = %(now)s
WHERE bucket = %(bucket)s
  AND id IN (SELECT id FROM task_runs
             WHERE id = ANY(%(run_ids)s) AND bucket = %(bucket)s AND dispatched_at IS NULL
             ORDER BY id FOR UPDATE SKIP LOCKED)
"""

# Over every day's partition (a run of any day may wait): run on a generic plan
# (StoreBase.over_every_day).
UNDISPATCHED_RUNS = """
SELECT t.queue_name, r.id, r.available_at, r.status, r.lease_expires_at, t.priority,
       t.concurrency_key
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status = 'queued' AND r.dispatched_at IS NULL AND r.created_at < %(created_before)s
ORDER BY r.created_at
LIMIT %(limit)s
"""

DISPATCH_SNAPSHOT = """
SELECT t.queue_name, r.id, r.available_at, r.status, r.lease_expires_at, t.priority,
       t.concurrency_key
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status IN ('queued', 'running') AND t.queue_name = %(queue_name)s
  AND (%(after_at)s::timestamptz IS NULL
       OR (r.available_at, r.id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY r.available_at, r.id
LIMIT %(limit)s
"""

# Every queue a task was ever created in (creates record new ones).
ACTIVE_QUEUES = "SELECT name FROM queues ORDER BY name"


class DispatchQueries(StoreBase):
    @query
    async def mark_dispatched(self, run_ids: Sequence[uuid.UUID], *, now: datetime) -> None:
        """Record that these runs' ids are in Redis."""
        if not run_ids:
            return
        async with self._pool.connection() as conn:
            for day, ids in by_bucket(run_ids).items():
                await conn.execute(await self.for_day(conn, MARK_DISPATCHED, day),
                                   {"run_ids": ids, "bucket": day, "now": now})

    @query
    async def undispatched_runs(self, *, created_before: datetime,
                                limit: int) -> list[PendingDispatch]:
        """Queued runs created before `created_before` that never reached Redis."""
        async with self._pool.connection() as conn:
            cur = conn.cursor()
            await self.over_every_day(cur, UNDISPATCHED_RUNS,
                                      {"created_before": created_before, "limit": limit})
            rows = [PendingDispatch(*r) for r in await cur.fetchall()]
        return rows

    @query
    async def dispatch_snapshot(self, queue_name: str, *, after: PendingDispatch | None,
                                limit: int) -> list[PendingDispatch]:
        """Unfinished runs of a queue (queued or running) in the order they became
        available, continuing after `after`: what Redis must index, for a rebuild."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(DISPATCH_SNAPSHOT, {
                "queue_name": queue_name, "limit": limit,
                "after_at": after.available_at if after else None,
                "after_id": after.run_id if after else None})
            rows = [PendingDispatch(*r) for r in await cur.fetchall()]
        return rows

    @query
    async def active_queues(self) -> list[str]:
        """Every queue that ever had a task: those whose Redis index may matter."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(ACTIVE_QUEUES)
            names = [r[0] for r in await cur.fetchall()]
        return names
