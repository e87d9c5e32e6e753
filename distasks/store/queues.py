"""Queues: pause and resume, and what the queue list shows from PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from distasks.model import Actor
from distasks.store.base import StoreBase, query, record_audit


@dataclass(frozen=True, slots=True)
class QueueRecord:
    name: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    completed_last_minute: int
    failed_last_minute: int


SET_PAUSED = """
INSERT INTO queues (name, paused, paused_at, paused_by)
VALUES (%(name)s, %(paused)s, CASE WHEN %(paused)s THEN %(now)s END,
        CASE WHEN %(paused)s THEN %(actor)s END)
ON CONFLICT (name) DO UPDATE
SET paused = excluded.paused, paused_at = excluded.paused_at, paused_by = excluded.paused_by
"""

QUEUES = "SELECT name, paused, paused_at, paused_by FROM queues ORDER BY name"

FINISHED_LAST_MINUTE = """
SELECT queue_name, status, count(*) FROM tasks
WHERE finished_at >= %(since)s AND status IN ('completed', 'failed')
GROUP BY 1, 2
"""

AVAILABLE_SINCE = "SELECT id, available_at FROM task_runs WHERE id = ANY(%s)"


class QueueQueries(StoreBase):
    @query
    async def set_paused(self, queue_name: str, paused: bool, *, actor: Actor,
                         now: datetime) -> None:
        """Pause or resume a queue (PostgreSQL keeps the flag; Redis mirrors it)."""
        async with self._pool.transaction() as conn:
            await conn.execute(SET_PAUSED, {"name": queue_name, "paused": paused, "now": now,
                                            "actor": actor.id})
            await record_audit(conn, at=now, actor=actor, action="pause" if paused else "resume",
                               queue_name=queue_name, detail={})

    @query
    async def copy_pause_flags(self, apply: Callable[[dict[str, bool]], Awaitable[None]]) -> None:
        """Call `apply` with every queue ever paused or resumed and whether it is paused
        now, holding those rows so that no pause or resume commits meanwhile: a copy of
        a flag can then never land in Redis after the copy of a newer one."""
        async with self._pool.transaction() as conn:
            cur = await conn.execute("SELECT name, paused FROM queues FOR SHARE")
            await apply({name: paused for name, paused in await cur.fetchall()})

    @query
    async def queues(self, *, now: datetime) -> list[QueueRecord]:
        """Every known queue with its pause flag and its completions and failures in the
        minute before `now`."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUEUES)
            rows = await cur.fetchall()
            cur = await conn.execute(FINISHED_LAST_MINUTE, {"since": now - timedelta(minutes=1)})
            counts = {(q, s): n for q, s, n in await cur.fetchall()}
        return [QueueRecord(name, paused, paused_at, paused_by,
                            counts.get((name, "completed"), 0), counts.get((name, "failed"), 0))
                for name, paused, paused_at, paused_by in rows]

    @query
    async def available_since(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """When each run became available (for the age of the oldest ready run)."""
        if not run_ids:
            return {}
        async with self._pool.connection() as conn:
            cur = await conn.execute(AVAILABLE_SINCE, (list(run_ids),))
            found = {r[0]: r[1] for r in await cur.fetchall()}
        return found

