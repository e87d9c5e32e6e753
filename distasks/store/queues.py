"""Queues: pause and resume, delete, how many a tenant has, and what the queue list
shows from PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from distasks.domain import tenancy
from distasks.domain.errors import NotFound, QueueNotEmpty, TooManyQueues
from distasks.domain.model import Actor
from distasks.store.base import StoreBase, query, record_audit


@dataclass(frozen=True, slots=True)
class QueueRecord:
    name: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    completed_last_minute: int
    failed_last_minute: int
    #: most runs of the queue leased at once across every daemon; None: no limit
    max_running: int | None = None
    #: most runs of one concurrency key leased at once across every daemon; None: no limit
    max_running_per_key: int | None = None
    #: most runs claimed per second across every daemon; None: no rate
    max_starts_per_second: float | None = None
    #: most runs claimed at once after a quiet spell; None: one second's worth
    burst: int | None = None


SET_PAUSED = """
INSERT INTO queues (name, paused, paused_at, paused_by)
VALUES (%(name)s, %(paused)s, CASE WHEN %(paused)s THEN %(now)s END,
        CASE WHEN %(paused)s THEN %(actor)s END)
ON CONFLICT (name) DO UPDATE
SET paused = excluded.paused, paused_at = excluded.paused_at, paused_by = excluded.paused_by
"""

# The limits a queue may have, each a column of `queues` (NULL: no limit).
LIMIT_COLUMNS = ("max_running", "max_running_per_key", "max_starts_per_second", "burst")

# Whether a create may insert its run already running (`i`: its input row, with `start`
# when this daemon has an idle executor for it): not for a task with a concurrency_key
# (counted per key in Redis's lease set, and served round robin by the claim), nor in a
# queue that is paused, has a max_running (counted in the lease set, which such a run
# never enters) or a start rate (its token bucket is in the claim). The creates of tasks
# (store/tasks.py CREATE_TASKS) and of a workflow's roots (store/workflows.py
# CREATE_NODES) both ask this, so a root has no side door past the claim's rules.
STARTS_AT_CREATE = """i.start AND i.concurrency_key IS NULL AND NOT EXISTS (
        SELECT 1 FROM queues q
        WHERE q.name = i.queue_name
          AND (q.paused OR q.max_running IS NOT NULL OR q.max_starts_per_second IS NOT NULL)
        )"""

# Held (per tenant, to the end of the transaction) by whoever may add a queue row through
# the API, so that two pauses of new names cannot both take the last place under the cap.
QUEUES_LOCK_KEY = 0x71756575  # "queu"

# The tenant of a qualified queue name, as distasks.domain.tenancy.tenant_of says it.
TENANT_OF_NAME = ("CASE WHEN strpos(name, '/') = 0 THEN 'default' "
                  "ELSE split_part(name, '/', 1) END")

QUEUE_EXISTS = "SELECT 1 FROM queues WHERE name = %s"

TENANT_QUEUE_COUNT = f"SELECT count(*) FROM queues WHERE {TENANT_OF_NAME} = %s"

# A queue row locked for its delete, and what still needs it: unfinished tasks (waiting,
# running or awaiting a retry) and dead-lettered ones (failed, not deleted from the DLQ).
# The lock makes a concurrent create's `INSERT INTO queues … ON CONFLICT DO NOTHING`
# (store/tasks.py CREATE_TASKS) wait, and then write the row again: a task committed
# after this check keeps its queue listed, so the reconciler still rebuilds it.
QUEUE_FOR_DELETE = "SELECT name FROM queues WHERE name = %s FOR UPDATE"

QUEUE_CONTENTS = """
SELECT count(*) FILTER (WHERE status IN ('queued', 'pending')),
       count(*) FILTER (WHERE status = 'failed' AND dlq_deleted_at IS NULL)
FROM tasks WHERE queue_name = %s AND status IN ('queued', 'pending', 'failed')
"""

QUEUE_NAMES = "SELECT name FROM queues"

# Of the ids a deleted queue's Redis structures hold, those still needed: runs waiting or
# running, tasks dead-lettered.
LIVE_RUNS = ("SELECT id FROM task_runs WHERE id = ANY(%(ids)s)"
             " AND bucket = ANY(distasks_buckets(%(ids)s)) AND status IN ('queued', 'running')")
LIVE_DEAD = "SELECT id FROM tasks WHERE id = ANY(%s) AND status = 'failed' AND dlq_deleted_at IS NULL"

QUEUES = ("SELECT name, paused, paused_at, paused_by, max_running, max_running_per_key,"
          " max_starts_per_second, burst FROM queues ORDER BY name")

FINISHED_LAST_MINUTE = """
SELECT queue_name, status, count(*) FROM tasks
WHERE finished_at >= %(since)s AND status IN ('completed', 'failed')
GROUP BY 1, 2
"""

AVAILABLE_SINCE = ("SELECT id, available_at FROM task_runs"
                   " WHERE id = ANY(%(ids)s) AND bucket = ANY(distasks_buckets(%(ids)s))")


class QueueQueries(StoreBase):
    @query
    async def set_paused(self, queue_name: str, paused: bool, *, actor: Actor,
                         now: datetime, max_queues: int | None = None) -> None:
        """Pause or resume a queue (PostgreSQL keeps the flag; Redis mirrors it).

        Raises TooManyQueues when `queue_name` is new and its tenant has `max_queues`
        queues already (exact: the tenant's queue lock is held for the count)."""
        async with self._pool.transaction() as conn:
            if max_queues is not None:
                await self._check_room(conn, queue_name, max_queues)
            await conn.execute(SET_PAUSED, {"name": queue_name, "paused": paused, "now": now,
                                            "actor": actor.id})
            await record_audit(conn, at=now, actor=actor, action="pause" if paused else "resume",
                               queue_name=queue_name, detail={})

    @query
    async def set_max_running(self, queue_name: str, max_running: int | None, *,
                              actor: Actor, now: datetime,
                              max_queues: int | None = None) -> None:
        """Set (None: lift) a queue's global concurrency limit; see set_queue_limits."""
        await self.set_queue_limits(queue_name, {"max_running": max_running}, actor=actor,
                                    now=now, max_queues=max_queues)

    @query
    async def set_queue_limits(self, queue_name: str, limits: Mapping[str, float | None], *,
                               actor: Actor, now: datetime,
                               max_queues: int | None = None) -> dict[str, Any]:
        """Set (None: lift) some of a queue's limits (LIMIT_COLUMNS), audited with the
        values they replaced (PostgreSQL keeps them; Redis mirrors them); returns all of
        the queue's limits as they are now. Raises TooManyQueues as set_paused does for a
        new name."""
        columns = [c for c in LIMIT_COLUMNS if c in limits]
        assert columns and len(columns) == len(limits), limits
        async with self._pool.transaction() as conn:
            if max_queues is not None:
                await self._check_room(conn, queue_name, max_queues)
            cur = await conn.execute(f"SELECT {', '.join(LIMIT_COLUMNS)} FROM queues "
                                     "WHERE name = %s FOR UPDATE", (queue_name,))
            row = await cur.fetchone()
            was = dict(zip(LIMIT_COLUMNS, row or (None,) * len(LIMIT_COLUMNS), strict=True))
            sets = ", ".join(f"{c} = excluded.{c}" for c in columns)
            await conn.execute(
                f"INSERT INTO queues (name, {', '.join(columns)}) "
                f"VALUES (%(name)s, {', '.join(f'%({c})s' for c in columns)}) "
                f"ON CONFLICT (name) DO UPDATE SET {sets}", {"name": queue_name, **limits})
            await record_audit(conn, at=now, actor=actor, action="queue_limits",
                               queue_name=queue_name, detail={
                                   **{c: limits[c] for c in columns},
                                   "was": {c: was[c] for c in columns}})
        return {**was, **{c: limits[c] for c in columns}}

    @query
    async def copy_queue_limits(self, apply: Callable[[dict[str, dict[str, Any]]],
                                                      Awaitable[None]]) -> None:
        """Call `apply` with every queue's limits (LIMIT_COLUMNS, None: no limit) by
        name, holding those rows as copy_pause_flags does, so an older copy never lands
        after a newer one."""
        async with self._pool.transaction() as conn:
            cur = await conn.execute(
                f"SELECT name, {', '.join(LIMIT_COLUMNS)} FROM queues FOR SHARE")
            await apply({name: dict(zip(LIMIT_COLUMNS, limits, strict=True))
                         for name, *limits in await cur.fetchall()})

    @staticmethod
    async def _check_room(conn: Any, queue_name: str, max_queues: int) -> None:
        tenant = tenancy.tenant_of(queue_name)
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                           (QUEUES_LOCK_KEY, tenant))
        cur = await conn.execute(QUEUE_EXISTS, (queue_name,))
        if await cur.fetchone() is not None:
            return
        cur = await conn.execute(TENANT_QUEUE_COUNT, (tenant,))
        row = await cur.fetchone()
        if row is not None and row[0] >= max_queues:
            raise TooManyQueues(queue_name, tenant, max_queues)

    @query
    async def delete_queue(self, queue_name: str, *, actor: Actor, now: datetime) -> None:
        """Remove a queue's row, audited. Raises NotFound if there is none, QueueNotEmpty
        while it holds unfinished or dead-lettered tasks."""
        async with self._pool.transaction() as conn:
            cur = await conn.execute(QUEUE_FOR_DELETE, (queue_name,))
            if await cur.fetchone() is None:
                raise NotFound(f"no queue named {tenancy.shown(queue_name)!r}")
            cur = await conn.execute(QUEUE_CONTENTS, (queue_name,))
            row = await cur.fetchone()
            unfinished, dead = row if row is not None else (0, 0)
            if unfinished or dead:
                raise QueueNotEmpty(queue_name, unfinished=unfinished, dead=dead)
            await conn.execute("DELETE FROM queues WHERE name = %s", (queue_name,))
            await record_audit(conn, at=now, actor=actor, action="queue_delete",
                               queue_name=queue_name, detail={})

    @query
    async def live_entries(self, run_ids: Collection[str], task_ids: Collection[str]
                           ) -> tuple[set[str], set[str]]:
        """Which of `run_ids` are runs still waiting or running, and which of `task_ids`
        tasks still dead-lettered (ids that are not UUIDs are neither)."""
        runs, dead = _uuids(run_ids), _uuids(task_ids)
        async with self._pool.connection() as conn:
            cur = await conn.execute(LIVE_RUNS, {"ids": list(runs)})
            live_runs = {runs[r] for (r,) in await cur.fetchall()}
            cur = await conn.execute(LIVE_DEAD, (list(dead),))
            live_dead = {dead[t] for (t,) in await cur.fetchall()}
        return live_runs, live_dead

    @query
    async def queue_names(self) -> list[str]:
        """The name of every queue in the queues table (every tenant's)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUEUE_NAMES)
            return [name for (name,) in await cur.fetchall()]

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
                            counts.get((name, "completed"), 0), counts.get((name, "failed"), 0),
                            *limits)
                for name, paused, paused_at, paused_by, *limits in rows]

    @query
    async def available_since(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """When each run became available (for the age of the oldest ready run)."""
        if not run_ids:
            return {}
        async with self._pool.connection() as conn:
            cur = await conn.execute(AVAILABLE_SINCE, {"ids": list(run_ids)})
            found = {r[0]: r[1] for r in await cur.fetchall()}
        return found



def _uuids(ids: Collection[str]) -> dict[uuid.UUID, str]:
    """The ids that read as UUIDs, by UUID, each with its text as given."""
    out = {}
    for text in ids:
        try:
            out[uuid.UUID(text)] = text
        except ValueError:
            pass
    return out
