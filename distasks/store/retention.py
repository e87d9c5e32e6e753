"""Retention: the cleaner's statements (distasks.daemon.cleaner; architecture, "Retention").

Each batch is one short transaction: claim (or renew) the cleaner's leader row, lock up
to `limit` removable rows that nothing else holds (SKIP LOCKED), delete them, hand their
JSON to the archive before the commit, commit. `lock_timeout` and `statement_timeout`
are set for the transaction only (`set_config(..., true)`), so a batch never waits behind
the hot path and leaves nothing on a pooled connection. A daemon that is not the leader
gets NotLeader and cleans nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg.errors

from distasks.store.base import StoreBase, query
from distasks.store.pg import TrioConnection

#: the task states the cleaner removes, in the order a pass takes them
FINISHED = ("completed", "cancelled", "failed")

#: a finished workflow's state, and the task state whose retention applies to it
WORKFLOW_RETENTION = {"succeeded": "completed", "cancelled": "cancelled", "failed": "failed"}

#: the leader row of the cleaner (table maintenance_leaders, migration 0014)
CLEANER = "cleaner"

# Takes the leader row for `holder` until `lease_s` from PostgreSQL's clock, unless
# another holder has it and it has not expired: a row back means `holder` leads. The
# row stays locked until the batch commits, so two batches never run at once.
CLAIM_LEADER = """
INSERT INTO maintenance_leaders AS l (name, holder, expires_at)
VALUES (%(name)s, %(holder)s, clock_timestamp() + make_interval(secs => %(lease_s)s))
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at < clock_timestamp()
RETURNING l.holder
"""

# Gives the row back (at shutdown), so that another daemon need not wait for the lease.
RELEASE_LEADER = """
UPDATE maintenance_leaders SET expires_at = clock_timestamp()
WHERE name = %(name)s AND holder = %(holder)s
"""

# Whether a workflow may still need the task `t` (DESIGN §5.10: nothing still needed is
# removed): a node of a workflow (migration 0013) is never removed on its own, since its
# children read its outcome and its workflow counts it; the whole workflow goes, with all
# its nodes, once it is finished and past its retention (REMOVE_WORKFLOWS).
NOT_NEEDED_BY_A_WORKFLOW = "t.workflow_id IS NULL"

# Up to %(limit)s tasks of one finished state past their retention, oldest first: the
# retention is the queue's override, else the tenant's, else the state's (seconds; 0
# keeps forever). %(oldest_cutoff)s (now less the shortest retention that applies to
# the state) bounds the index range read (tasks_retention). A task with a run still
# queued or running is not removed, whatever its state says. Its runs are read (for the
# count and the archive) and, with %(delete_runs)s, deleted with it; otherwise they stay
# in their day's partition of task_runs, which the cleaner drops once no task of that
# day is left (store/partitions.py), unless they are in the default partition (a day
# that had none), which is never dropped. The CTEs see the rows as they were before.
REMOVE_TASKS = f"""
WITH doomed AS (
    SELECT t.id FROM tasks t
    LEFT JOIN unnest(%(queues)s::text[], %(queue_keep_s)s::float8[]) AS q(name, keep_s)
           ON q.name = t.queue_name
    LEFT JOIN unnest(%(tenants)s::text[], %(tenant_keep_s)s::float8[]) AS tn(name, keep_s)
           ON tn.name = t.tenant
    WHERE t.status = %(status)s
      AND t.finished_at < %(oldest_cutoff)s
      AND coalesce(q.keep_s, tn.keep_s, %(keep_s)s) > 0
      AND t.finished_at < %(now)s
          - make_interval(secs => coalesce(q.keep_s, tn.keep_s, %(keep_s)s))
      AND NOT EXISTS (SELECT 1 FROM task_runs r
                      WHERE r.task_id = t.id AND r.bucket = distasks_bucket(t.id)
                        AND r.status IN ('queued', 'running'))
      AND {NOT_NEEDED_BY_A_WORKFLOW}
    ORDER BY t.finished_at
    LIMIT %(limit)s
    FOR UPDATE OF t SKIP LOCKED
), runs AS (
    -- Per task through its (task_id, attempt) index: never a scan of every run.
    SELECT d.id, each.run_count, each.runs
    FROM doomed d CROSS JOIN LATERAL (
        SELECT count(*) AS run_count,
               CASE WHEN %(archive)s THEN coalesce(json_agg(r ORDER BY r.attempt), '[]'::json)
               END AS runs
        FROM task_runs r WHERE r.task_id = d.id AND r.bucket = distasks_bucket(d.id)
    ) each
), gone_runs AS (
    DELETE FROM task_runs r USING doomed d
    WHERE (%(delete_runs)s OR r.tableoid = 'task_runs_default'::regclass)
      AND r.task_id = d.id AND r.bucket = distasks_bucket(d.id)
)
DELETE FROM tasks t USING runs
WHERE t.id = runs.id
  -- by the primary key, however few rows the planner expects from the CTEs
  AND t.id = ANY(ARRAY(SELECT id FROM doomed))
RETURNING t.id, t.queue_name, t.status = 'failed' AND t.dlq_deleted_at IS NULL AS in_dlq,
          runs.run_count,
          CASE WHEN %(archive)s THEN
              json_build_object('table', 'tasks', 'row', row_to_json(t), 'runs', runs.runs)::text
          END AS doc
"""

# Up to %(limit)s workflows of one finished state past their retention (the tenant's
# override, else the state's: a workflow spans queues, so queue overrides do not apply),
# oldest first, with every node (tasks.workflow_id ON DELETE CASCADE, their edges with
# them; their runs as REMOVE_TASKS says). Not one with a node still pending or queued, or a run still queued or
# running (a resume puts a workflow back to running first). Returns a row per node (for
# the DLQ and the archive) and one per workflow.
REMOVE_WORKFLOWS = """
WITH doomed AS (
    SELECT w.id FROM workflows w
    LEFT JOIN unnest(%(tenants)s::text[], %(tenant_keep_s)s::float8[]) AS tn(name, keep_s)
           ON tn.name = w.tenant
    WHERE w.state = %(state)s
      AND w.finished_at < %(oldest_cutoff)s
      AND coalesce(tn.keep_s, %(keep_s)s) > 0
      AND w.finished_at < %(now)s - make_interval(secs => coalesce(tn.keep_s, %(keep_s)s))
      AND NOT EXISTS (SELECT 1 FROM tasks t
                      WHERE t.workflow_id = w.id AND t.status IN ('pending', 'queued'))
      AND NOT EXISTS (SELECT 1 FROM tasks t JOIN task_runs r
                             ON r.task_id = t.id AND r.bucket = distasks_bucket(t.id)
                      WHERE t.workflow_id = w.id AND r.status IN ('queued', 'running'))
    ORDER BY w.finished_at
    LIMIT %(limit)s
    FOR UPDATE OF w SKIP LOCKED
), nodes AS (
    SELECT t.id, t.queue_name, t.status = 'failed' AND t.dlq_deleted_at IS NULL AS in_dlq,
           each.run_count,
           CASE WHEN %(archive)s THEN
               json_build_object('table', 'tasks', 'row', row_to_json(t), 'runs', each.runs)::text
           END AS doc
    FROM doomed d JOIN tasks t ON t.workflow_id = d.id
    CROSS JOIN LATERAL (
        SELECT count(*) AS run_count,
               CASE WHEN %(archive)s THEN coalesce(json_agg(r ORDER BY r.attempt), '[]'::json)
               END AS runs
        FROM task_runs r WHERE r.task_id = t.id AND r.bucket = distasks_bucket(t.id)
    ) each
), gone_runs AS (
    DELETE FROM task_runs r USING nodes n
    WHERE (%(delete_runs)s OR r.tableoid = 'task_runs_default'::regclass)
      AND r.task_id = n.id AND r.bucket = distasks_bucket(n.id)
), gone AS (
    DELETE FROM workflows w WHERE w.id = ANY(ARRAY(SELECT id FROM doomed))
    RETURNING w.id, CASE WHEN %(archive)s THEN
        json_build_object('table', 'workflows', 'row', row_to_json(w))::text END AS doc
)
SELECT 'task' AS kind, id, queue_name, in_dlq, run_count, doc FROM nodes
UNION ALL
SELECT 'workflow', id, NULL, false, 0, doc FROM gone
"""

# Where the dated partitions of a table start (migration 0015).
DATED_FROM = ("(SELECT first_day::timestamp AT TIME ZONE 'UTC' FROM history_partitioning"
              " WHERE parent = '{}')")

# Up to %(limit)s audit rows older than %(cutoff)s, oldest first (audit_log_at), from
# the legacy partition (before the first dated one, history_partitioning) and up to as
# many from the default partition: a dated partition goes whole, once all of it is past
# the cutoff (store/partitions.py).
REMOVE_AUDIT = """
WITH old AS (
    SELECT id, at FROM audit_log WHERE at < least(%(cutoff)s, %(dated_from)s)
    ORDER BY at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), stray AS (
    SELECT id, at FROM audit_log_default WHERE at < %(cutoff)s
    ORDER BY at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), doomed AS (
    SELECT * FROM old UNION ALL SELECT * FROM stray
)
DELETE FROM audit_log a USING doomed d WHERE a.id = d.id AND a.at = d.at
RETURNING CASE WHEN %(archive)s THEN
    json_build_object('table', 'audit_log', 'row', row_to_json(a))::text END
""".replace("%(dated_from)s", DATED_FROM.format("audit_log"))

# Up to %(limit)s records of schedule slots fired before %(cutoff)s (schedule_fires_fired_at),
# from the legacy and the default partitions, as REMOVE_AUDIT. A slot's record is only
# needed while the slot could fire again, and a schedule's next_fire_at only moves forward.
REMOVE_FIRES = """
WITH old AS (
    SELECT schedule_id, fire_at FROM schedule_fires
    WHERE fired_at < %(cutoff)s AND fire_at < %(dated_from)s
    ORDER BY fired_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), stray AS (
    SELECT schedule_id, fire_at FROM schedule_fires_default WHERE fired_at < %(cutoff)s
    ORDER BY fired_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), doomed AS (
    SELECT * FROM old UNION ALL SELECT * FROM stray
)
DELETE FROM schedule_fires f USING doomed d
WHERE f.schedule_id = d.schedule_id AND f.fire_at = d.fire_at
RETURNING CASE WHEN %(archive)s THEN
    json_build_object('table', 'schedule_fires', 'row', row_to_json(f))::text END
""".replace("%(dated_from)s", DATED_FROM.format("schedule_fires"))

#: Writes the JSON lines of one batch (`kind`: tasks, workflows, audit_log, schedule_fires) where
#: they are kept, before the batch commits; raising rolls the batch back.
Archive = Callable[[str, Sequence[str]], Awaitable[None]]


class NotLeader(Exception):
    """Another daemon holds the cleaner's leader row: this one cleans nothing now."""


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who asks (`holder`, a daemon's worker id), for how long a batch keeps the lead."""

    holder: str
    lease_s: float


@dataclass(frozen=True, slots=True)
class Gentle:
    """How a batch stays out of the hot path's way."""

    lock_timeout_ms: int = 200
    statement_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class TaskRetention:
    """How long tasks of one finished state are kept, in seconds (0: forever): the
    state's, and the overrides of queues (qualified names) and tenants."""

    status: str
    keep_s: float
    queues: Mapping[str, float]
    tenants: Mapping[str, float]

    def shortest_s(self) -> float | None:
        """The shortest retention that applies to some task (None: all kept forever)."""
        kept = [s for s in (self.keep_s, *self.queues.values(), *self.tenants.values()) if s > 0]
        return min(kept) if kept else None


@dataclass(frozen=True, slots=True)
class RemovedTask:
    id: uuid.UUID
    queue_name: str
    #: it was in its queue's DLQ, so its id leaves the Redis index too
    in_dlq: bool
    runs: int


@dataclass(frozen=True, slots=True)
class RemovedWorkflows:
    """What one batch of workflows took: the workflows, and their nodes."""

    workflows: int
    tasks: list[RemovedTask]


class RetentionQueries(StoreBase):
    @query
    async def remove_tasks(self, r: TaskRetention, *, now: datetime, limit: int,
                           lead: Leadership, gentle: Gentle = Gentle(),
                           archive: Archive | None = None,
                           delete_runs: bool = True) -> list[RemovedTask]:
        """One batch: remove up to `limit` tasks of `r.status` past their retention at
        `now`, and their runs with them if `delete_runs` (else their partition takes them
        later). NotLeader if another daemon leads."""
        shortest = r.shortest_s()
        if shortest is None:
            return []
        params: dict[str, Any] = {
            "status": r.status, "keep_s": r.keep_s, "now": now,
            "oldest_cutoff": now - timedelta(seconds=shortest),
            "queues": list(r.queues), "queue_keep_s": list(r.queues.values()),
            "tenants": list(r.tenants), "tenant_keep_s": list(r.tenants.values()),
            "limit": limit, "archive": archive is not None, "delete_runs": delete_runs}
        rows = await self._batch(REMOVE_TASKS, params, lead=lead, gentle=gentle,
                                 archive=archive, kind="tasks", doc_column=4)
        return [RemovedTask(id=row[0], queue_name=row[1], in_dlq=bool(row[2]), runs=int(row[3]))
                for row in rows]

    @query
    async def remove_workflows(self, r: TaskRetention, *, state: str, now: datetime, limit: int,
                               lead: Leadership, gentle: Gentle = Gentle(),
                               archive: Archive | None = None,
                               delete_runs: bool = True) -> RemovedWorkflows:
        """One batch: remove up to `limit` workflows in `state` past the retention `r`
        gives (its tenants' overrides; its queues' do not apply), with all their nodes."""
        tenants_only = TaskRetention(r.status, r.keep_s, queues={}, tenants=r.tenants)
        shortest = tenants_only.shortest_s()
        if shortest is None:
            return RemovedWorkflows(0, [])
        params: dict[str, Any] = {
            "state": state, "keep_s": r.keep_s, "now": now,
            "oldest_cutoff": now - timedelta(seconds=shortest),
            "tenants": list(r.tenants), "tenant_keep_s": list(r.tenants.values()),
            "limit": limit, "archive": archive is not None, "delete_runs": delete_runs}
        rows = await self._batch(REMOVE_WORKFLOWS, params, lead=lead, gentle=gentle,
                                 archive=archive, kind="workflows", doc_column=5)
        return RemovedWorkflows(
            workflows=sum(1 for row in rows if row[0] == "workflow"),
            tasks=[RemovedTask(id=row[1], queue_name=row[2], in_dlq=bool(row[3]),
                               runs=int(row[4])) for row in rows if row[0] == "task"])

    @query
    async def remove_audit(self, *, cutoff: datetime, limit: int, lead: Leadership,
                           gentle: Gentle = Gentle(), archive: Archive | None = None) -> int:
        """One batch: remove up to `limit` audit rows older than `cutoff`."""
        rows = await self._batch(REMOVE_AUDIT, {"cutoff": cutoff, "limit": limit,
                                                "archive": archive is not None},
                                 lead=lead, gentle=gentle, archive=archive, kind="audit_log",
                                 doc_column=0)
        return len(rows)

    @query
    async def remove_schedule_fires(self, *, cutoff: datetime, limit: int, lead: Leadership,
                                    gentle: Gentle = Gentle(),
                                    archive: Archive | None = None) -> int:
        """One batch: remove up to `limit` schedule fire records older than `cutoff`."""
        rows = await self._batch(REMOVE_FIRES, {"cutoff": cutoff, "limit": limit,
                                                "archive": archive is not None},
                                 lead=lead, gentle=gentle, archive=archive,
                                 kind="schedule_fires", doc_column=0)
        return len(rows)

    @query
    async def release_lead(self, holder: str) -> None:
        """Give the cleaner's leader row back, if `holder` has it."""
        async with self._pool.connection() as conn:
            await conn.execute(RELEASE_LEADER, {"name": CLEANER, "holder": holder})

    async def _batch(self, sql: str, params: dict[str, Any], *, lead: Leadership,
                     gentle: Gentle, archive: Archive | None, kind: str,
                     doc_column: int) -> list[tuple[Any, ...]]:
        async with self._pool.transaction() as conn:
            await gentle_timeouts(conn, gentle)
            await claim_lead(conn, lead)
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
            if archive is not None and rows:
                await archive(kind, [row[doc_column] for row in rows])
            return rows


async def gentle_timeouts(conn: TrioConnection, gentle: Gentle) -> None:
    """This transaction's timeouts (`set_config(..., true)` is SET LOCAL: nothing is
    left on the connection, which matters behind a pooler)."""
    await conn.execute("SELECT set_config('lock_timeout', %s, true),"
                       " set_config('statement_timeout', %s, true)",
                       (f"{gentle.lock_timeout_ms}ms", f"{gentle.statement_timeout_ms}ms"))


async def claim_lead(conn: TrioConnection, lead: Leadership) -> None:
    """Take or renew the lead in this transaction; NotLeader if another daemon has it
    (or is taking it right now: its batch holds the row past our lock_timeout)."""
    try:
        cur = await conn.execute(CLAIM_LEADER, {"name": CLEANER, "holder": lead.holder,
                                                "lease_s": lead.lease_s})
    except psycopg.errors.LockNotAvailable:
        raise NotLeader(CLEANER) from None
    if await cur.fetchone() is None:
        raise NotLeader(CLEANER)
