"""Workflows: submit a graph in one transaction, release dependents as counters inside
the transaction that closes their parents, read, list, cancel and resume (issue 19).

`release` is the heart: it is called with the connection of a transaction that has just
made some workflow tasks final (an outcome write, a cancel, a takeover), and in that same
transaction it closes them on their workflow's counter, lowers each pending child's
`deps_remaining` and, for children that reach zero, decides their fate (run, skip,
cancel). It returns the runs it created; the caller copies them into Redis after the
commit, through the same push as a create. Nothing polls.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from distasks.domain.graph import (
    Dependency,
    NewNode,
    NewWorkflow,
    Node,
    OnParentFailure,
    Workflow,
    WorkflowCreated,
    WorkflowState,
)
from distasks.domain.ids import bucket
from distasks.domain.model import Actor
from distasks.store.base import Page, StoreBase, dumps, page_of, query, record_audit
from distasks.store.day_tables import PARENT, on_day
from distasks.store.queues import STARTS_AT_CREATE


@dataclass(frozen=True, slots=True)
class ReleasedRun:
    """A first run created by a release (or a resume), to be pushed into Redis."""

    task_id: uuid.UUID
    run_id: uuid.UUID
    queue_name: str
    priority: int
    concurrency_key: str | None
    available_at: datetime
    #: started at create under the creating daemon's lease (a root): nothing to push
    started: bool = False


@dataclass(slots=True)
class Released:
    """What `release` did in its transaction."""

    #: runs created for children whose last parent just closed (and on_failure tasks)
    runs: list[ReleasedRun] = field(default_factory=list)
    #: workflows that reached a final state, with it
    finished: dict[uuid.UUID, WorkflowState] = field(default_factory=dict)
    #: tasks made final by the release itself (children cancelled or skipped)
    closed: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkflowFilter:
    tenant: str = "default"
    state: str | None = None
    name: str | None = None
    dedup_key: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorkflowChange:
    """What a cancel or a resume did: the workflow's state after it, whether it changed,
    the runs to withdraw from Redis or stop (cancel) and the runs to push (resume)."""

    state: WorkflowState
    changed: bool
    #: (queue, run id) of waiting runs now cancelled
    waiting: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    #: running runs whose handlers must stop
    running: list[uuid.UUID] = field(default_factory=list)
    #: runs to push
    runs: list[ReleasedRun] = field(default_factory=list)
    #: (queue, task id) of dead-lettered nodes a resume took out of the DLQ
    undead: list[tuple[str, uuid.UUID]] = field(default_factory=list)


CREATE_WORKFLOW = """
INSERT INTO workflows (id, tenant, name, dedup_key, open_nodes, on_failure_task_id,
                       created_by, created_at, updated_at)
VALUES (%(id)s, %(tenant)s, %(name)s, %(dedup_key)s, %(open_nodes)s, %(on_failure)s,
        %(actor)s, %(now)s, %(now)s)
ON CONFLICT (tenant, dedup_key) DO NOTHING
RETURNING id
"""

EXISTING_WORKFLOW = "SELECT id FROM workflows WHERE tenant = %s AND dedup_key = %s"

# Every node in one statement: roots queued with their first run, the others pending
# with as many dependencies to wait for as they have parents (and no run: a pending task
# never reaches Redis). The on_failure task is pending with no parent at all: only the
# workflow's failure releases it. A root offered to start at once (`start`) begins
# running under this daemon's lease where a task's create would (STARTS_AT_CREATE).
CREATE_NODES = """
WITH input AS (
    SELECT * FROM json_to_recordset(%(input)s::json) AS i(
        id uuid, run_id uuid, tenant text, name text, handler text, type text,
        queue_name text, priority int, payload json, max_retries int, timeout_s float8,
        run_at timestamptz, secret_fields text[], concurrency_key text, key text,
        deps int, hold bool, start bool)
), inserted AS (
    INSERT INTO tasks (id, tenant, name, handler, type, queue_name, priority, payload,
                       max_retries, timeout_s, run_at, secret_fields, concurrency_key,
                       workflow_id, workflow_key, deps_remaining, status, created_at,
                       updated_at)
    SELECT id, tenant, name, handler, type, queue_name, priority, coalesce(payload, 'null'),
           max_retries, timeout_s, run_at, coalesce(secret_fields, '{}'), concurrency_key,
           %(workflow_id)s, key, deps,
           CASE WHEN deps = 0 AND NOT hold THEN 'queued' ELSE 'pending' END,
           %(now)s, %(now)s
    FROM input
    RETURNING id
), runs AS (
    INSERT INTO task_runs (id, task_id, bucket, attempt, created_at, available_at, status,
                           worker_id, started_at, lease_expires_at, dispatched_at)
    SELECT i.run_id, i.id, distasks_bucket(i.id), 1, %(now)s,
           greatest(coalesce(i.run_at, %(now)s), %(now)s),
           CASE WHEN s.now THEN 'running' ELSE 'queued' END,
           CASE WHEN s.now THEN %(worker_id)s END, CASE WHEN s.now THEN %(now)s END,
           CASE WHEN s.now THEN %(lease_until)s::timestamptz END,
           CASE WHEN s.now THEN %(now)s END
    FROM input i JOIN inserted USING (id)
    CROSS JOIN LATERAL (SELECT %(starts_at_create)s) AS s(now)
    WHERE i.deps = 0 AND NOT i.hold
    RETURNING id, task_id, available_at, status = 'running' AS started
), new_queues AS (
    INSERT INTO queues (name) SELECT DISTINCT queue_name FROM input ON CONFLICT DO NOTHING
)
SELECT runs.task_id, runs.id, i.queue_name, i.priority, i.concurrency_key, runs.available_at,
       runs.started
FROM runs JOIN input i ON i.id = runs.task_id
""".replace("%(starts_at_create)s", STARTS_AT_CREATE)

CREATE_EDGES = """
INSERT INTO workflow_edges (parent_id, child_id, on_parent_failure)
SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::text[])
"""

# The workflows of the tasks being closed, locked in id order before any of their nodes
# is touched: every release of one workflow then runs one after the other (so two parents
# closing at once see their child's counter one after the other), and two releases over
# several workflows never wait for each other in a circle.
LOCK_WORKFLOWS = """
SELECT id FROM workflows
WHERE id IN (SELECT workflow_id FROM tasks WHERE id = ANY(%(ids)s) AND workflow_id IS NOT NULL)
ORDER BY id FOR UPDATE
"""

# Close nodes on their workflow's counter; the statement that takes it to zero decides
# the workflow's state. The on_failure task is not a node (nothing waits for it).
CLOSE_NODES = """
WITH fin AS (
    SELECT t.workflow_id, count(*) AS n,
           count(*) FILTER (WHERE t.status IN ('failed', 'cancelled')) AS bad
    FROM tasks t JOIN workflows w ON w.id = t.workflow_id
    WHERE t.id = ANY(%(ids)s) AND t.id IS DISTINCT FROM w.on_failure_task_id
    GROUP BY t.workflow_id
)
UPDATE workflows w
SET open_nodes = w.open_nodes - fin.n, bad_nodes = w.bad_nodes + fin.bad,
    updated_at = %(now)s,
    state = CASE WHEN w.open_nodes - fin.n > 0 THEN w.state
                 WHEN w.cancelled_at IS NOT NULL THEN 'cancelled'
                 WHEN w.bad_nodes + fin.bad > 0 THEN 'failed'
                 ELSE 'succeeded' END,
    finished_at = CASE WHEN w.open_nodes - fin.n = 0 THEN %(now)s END
FROM fin WHERE w.id = fin.workflow_id AND w.state = 'running'
RETURNING w.id, w.state, w.open_nodes, w.on_failure_task_id
"""

# Lower each pending child's counter by how many of its parents close here. A parent that
# ended failed or cancelled over a `cancel` edge cancels the child at once (whatever its
# other parents are doing), its reason naming that parent; the child then closes in turn
# and cancels its own children. The row lock on the child (taken by this UPDATE, and
# re-checked against `status = 'pending'` after a wait) is what makes a release happen
# once: of two transactions closing the last two parents, the second sees the first's
# decrement. `c.status = hits.waiting` ('pending') is a join clause, not a filter on
# `tasks` alone: as a filter, the status index made the planner take the pending tasks
# as a handful and scan `hits` once for each of them (nested loops, 0.2 s for a fan-out
# of 1,000 on a table without fresh statistics); now it reaches the children from
# `hits`, by primary key or by hash.
RELEASE_CHILDREN = """
WITH fin AS (
    SELECT id, status, workflow_key FROM tasks
    WHERE id = ANY(%(ids)s) AND workflow_id IS NOT NULL
), hits AS (
    SELECT e.child_id, 'pending' AS waiting, count(*) AS n,
           min(fin.workflow_key || ' ' || fin.status) FILTER (
               WHERE fin.status IN ('failed', 'cancelled')
                 AND e.on_parent_failure = 'cancel') AS cancel_by
    FROM workflow_edges e JOIN fin ON fin.id = e.parent_id
    GROUP BY e.child_id
)
UPDATE tasks c
SET deps_remaining = c.deps_remaining - hits.n, updated_at = %(now)s,
    status = CASE WHEN hits.cancel_by IS NULL THEN 'pending' ELSE 'cancelled' END,
    cancelled_at = CASE WHEN hits.cancel_by IS NOT NULL THEN %(now)s END,
    cancelled_by = CASE WHEN hits.cancel_by IS NOT NULL THEN 'system' END,
    cancel_reason = CASE WHEN hits.cancel_by IS NOT NULL THEN 'parent ' || hits.cancel_by END,
    finished_at = CASE WHEN hits.cancel_by IS NOT NULL THEN %(now)s END
FROM hits WHERE c.id = hits.child_id AND c.status = hits.waiting
RETURNING c.id, c.status, c.deps_remaining
"""

# The fate of children whose parents are all final: skipped if a parent that failed or
# was cancelled says `skip`, or a parent was skipped (unless the edge says `continue`);
# else queued with a new run (attempt 1, or the next one after a resume), due at its
# run_at if that is later. Cancel was decided by RELEASE_CHILDREN already.
# No join of one CTE with another: the planner has no row counts for them (nor, for a
# graph just written, for `tasks`) and chose nested loops that compared every released
# child with every other, 0.1-0.3 s for a fan-out of 1,000. The updates find their rows
# by primary key from an id array, and the runs' queues are read by primary key too.
DECIDE_FATE = """
WITH ready AS (
    SELECT unnest(%(ids)s::uuid[]) AS id
), f AS (
    SELECT r.id, coalesce(bool_or(
        (p.status IN ('failed', 'cancelled') AND e.on_parent_failure = 'skip')
        OR (p.status = 'skipped' AND e.on_parent_failure <> 'continue')), false) AS skip
    FROM ready r
    LEFT JOIN workflow_edges e ON e.child_id = r.id
    LEFT JOIN tasks p ON p.id = e.parent_id
    GROUP BY r.id
), skipped AS (
    UPDATE tasks t SET status = 'skipped', updated_at = %(now)s, finished_at = %(now)s
    WHERE t.id = ANY(ARRAY(SELECT id FROM f WHERE f.skip))
      AND t.status = 'pending' AND t.deps_remaining = 0
    RETURNING t.id
), queued AS (
    UPDATE tasks t SET status = 'queued', updated_at = %(now)s
    WHERE t.id = ANY(ARRAY(SELECT id FROM f WHERE NOT f.skip))
      AND t.status = 'pending' AND t.deps_remaining = 0
    RETURNING t.id, t.queue_name, t.priority, t.concurrency_key, t.run_at
), runs AS (
    INSERT INTO task_runs (id, task_id, bucket, attempt, created_at, available_at)
    SELECT distasks_run_id(q.id), q.id, distasks_bucket(q.id),
           coalesce((SELECT max(attempt) FROM task_runs
                     WHERE task_id = q.id AND bucket = distasks_bucket(q.id)), 0) + 1,
           %(now)s, greatest(coalesce(q.run_at, %(now)s), %(now)s)
    FROM queued q
    RETURNING id, task_id, available_at
)
SELECT s.id, NULL::uuid, NULL::text, NULL::int, NULL::text, NULL::timestamptz FROM skipped s
UNION ALL
SELECT q.id, r.id, q.queue_name, q.priority, q.concurrency_key, r.available_at
FROM runs r JOIN tasks q ON q.id = r.task_id
"""

SKIP_TASKS = """
UPDATE tasks SET status = 'skipped', updated_at = %(now)s, finished_at = %(now)s
WHERE id = ANY(%(ids)s) AND status = 'pending'
"""

GET_WORKFLOW = "SELECT * FROM workflows WHERE id = %s AND tenant = %s"

# Each node with its attempts and timing: first start, last finish, the latest run's
# result and error. The on_failure task comes last. Set-based (one pass over the
# workflow's runs and edges, hash-joined): a sub-query per node read the edges once per
# node whenever the planner had no statistics for a graph just written, 8 s for a
# 10,000-node fan-in. Every node's id has its workflow's time (creation.new_workflow),
# so the runs are all in the workflow's day partition, the only one read.
GET_NODES = """
WITH n AS (SELECT id, workflow_key, status, handler, queue_name, deps_remaining,
                  created_at, finished_at, cancel_reason
             FROM tasks WHERE workflow_id = %(workflow_id)s),
runs AS (SELECT r.task_id, count(*) AS attempts, min(r.started_at) AS started_at,
                max(r.attempt) AS last_attempt
           FROM task_runs r JOIN n ON n.id = r.task_id AND r.bucket = distasks_bucket(n.id)
          WHERE r.bucket = distasks_bucket(%(workflow_id)s)
          GROUP BY r.task_id),
deps AS (SELECT e.child_id, array_agg(p.workflow_key || ' ' || e.on_parent_failure
                                      ORDER BY p.workflow_key) AS depends_on
           FROM workflow_edges e JOIN n ON n.id = e.child_id
           JOIN tasks p ON p.id = e.parent_id GROUP BY e.child_id)
SELECT n.id, n.workflow_key, n.status, n.handler, n.queue_name, n.deps_remaining,
       n.created_at, n.finished_at, n.cancel_reason,
       coalesce(runs.attempts, 0) AS attempts, runs.started_at,
       last.result, last.error, coalesce(deps.depends_on, '{}') AS depends_on
FROM n
LEFT JOIN runs ON runs.task_id = n.id
LEFT JOIN task_runs last ON last.task_id = n.id AND last.bucket = distasks_bucket(n.id)
                         AND last.bucket = distasks_bucket(%(workflow_id)s)
                         AND last.attempt = runs.last_attempt
LEFT JOIN deps ON deps.child_id = n.id
ORDER BY n.id = %(on_failure)s, n.created_at, n.workflow_key
"""

# The console's graph of a workflow: each node's key, state and parents' ids, nothing
# heavier (no result, no error), so that a 10,000-node graph stays a small read.
GET_GRAPH = """
SELECT t.id, t.workflow_key, t.status,
       coalesce(array_agg(e.parent_id) FILTER (WHERE e.parent_id IS NOT NULL), '{}') AS parents
FROM tasks t LEFT JOIN workflow_edges e ON e.child_id = t.id
WHERE t.workflow_id = %s
GROUP BY t.id
"""

# Some nodes of a workflow with their attempts and timing, as GET_NODES reads them but
# without the result, and with the latest error cut at NODE_ERROR_CHARS: one console page
# of its node table.
GET_SOME_NODES = """
SELECT t.id, t.workflow_key, t.status, t.handler, t.queue_name, t.deps_remaining,
       t.created_at, t.finished_at, t.cancel_reason,
       (SELECT count(*) FROM task_runs r
         WHERE r.task_id = t.id AND r.bucket = distasks_bucket(%(workflow_id)s)) AS attempts,
       (SELECT min(started_at) FROM task_runs r
         WHERE r.task_id = t.id AND r.bucket = distasks_bucket(%(workflow_id)s)) AS started_at,
       NULL::jsonb AS result, left(last.error, %(error_chars)s) AS error,
       '{}'::text[] AS depends_on
FROM tasks t
LEFT JOIN LATERAL (SELECT error FROM task_runs r
                   WHERE r.task_id = t.id AND r.bucket = distasks_bucket(%(workflow_id)s)
                   ORDER BY attempt DESC LIMIT 1) last ON true
WHERE t.workflow_id = %(workflow_id)s AND t.id = ANY(%(ids)s)
"""
# Characters of a node's latest error that the console's node table reads.
NODE_ERROR_CHARS = 500

COUNT_NODES = """
SELECT workflow_id, status, count(*) FROM tasks
WHERE workflow_id = ANY(%s) GROUP BY workflow_id, status
"""

RESULTS = """
SELECT t.workflow_key, t.status, last.result, last.error
FROM tasks t
LEFT JOIN LATERAL (SELECT result, error FROM task_runs r
                   WHERE r.task_id = t.id AND r.bucket = distasks_bucket(%(workflow_id)s)
                   ORDER BY attempt DESC LIMIT 1) last ON true
WHERE t.workflow_id = %(workflow_id)s
"""

# Cancel: every node not final yet is cancelled at once; a running one keeps its run
# until its daemon stops the handler and records it cancelled (fenced, as a task cancel).
CANCEL_NODES = """
UPDATE tasks SET status = 'cancelled', cancelled_at = %(now)s, cancelled_by = %(actor)s,
    cancel_reason = %(reason)s, updated_at = %(now)s, finished_at = %(now)s
WHERE workflow_id = %(id)s AND status IN ('pending', 'queued')
RETURNING id
"""

CANCEL_NODE_RUNS = """
WITH waiting AS (
    UPDATE task_runs r SET status = 'cancelled', finished_at = %(now)s
    FROM tasks t
    WHERE t.id = r.task_id AND r.task_id = ANY(%(ids)s)
      AND r.bucket = ANY(distasks_buckets(%(ids)s)) AND r.status = 'queued'
    RETURNING t.queue_name, r.id
)
SELECT queue_name, id, false FROM waiting
UNION ALL
SELECT NULL, id, true FROM task_runs
WHERE task_id = ANY(%(ids)s) AND bucket = ANY(distasks_buckets(%(ids)s)) AND status = 'running'
"""

# Which nodes a resume runs again (as `p` and `t`): those that failed, and those
# cancelled or skipped by the system (because of a failure), not by an operator.
AGAIN = ("({0}.status = 'failed' OR ({0}.status IN ('cancelled', 'skipped')"
         " AND coalesce({0}.cancelled_by, 'system') = 'system'))")

# Resume: the nodes that failed, and those cancelled or skipped because of a failure
# (by the system, not by an operator), go back to pending with fresh retries; the
# counters count the parents that run again too (every other parent is final). Completed
# nodes keep their result and do not run again. The counts come from one grouped pass over
# the workflow's edges, not a sub-query per node (see GET_NODES).
RESUME_NODES = """
WITH counted AS (
    SELECT c.id, count(p.id) FILTER (WHERE %(again)s) AS parents_again
    FROM tasks c
    LEFT JOIN workflow_edges e ON e.child_id = c.id
    LEFT JOIN tasks p ON p.id = e.parent_id
    WHERE c.workflow_id = %(id)s
    GROUP BY c.id
), again AS (
    UPDATE tasks t
    SET status = 'pending', failures = 0, cancelled_at = NULL, cancelled_by = NULL,
        cancel_reason = NULL, finished_at = NULL, updated_at = %(now)s,
        dlq_deleted_at = NULL, deps_remaining = counted.parents_again
    FROM workflows w, counted
    WHERE w.id = t.workflow_id AND t.workflow_id = %(id)s AND counted.id = t.id
      AND t.id IS DISTINCT FROM w.on_failure_task_id
      AND %(again_t)s
    RETURNING t.id, t.queue_name, (SELECT status FROM tasks o WHERE o.id = t.id) AS was
)
SELECT id, queue_name, was FROM again
""".replace("%(again)s", AGAIN.format("p")).replace("%(again_t)s", AGAIN.format("t"))


class WorkflowQueries(StoreBase):
    @query
    async def create_workflow(self, wf: NewWorkflow, *, actor: Actor, now: datetime,
                              start: Collection[uuid.UUID] = frozenset(), worker_id: str = "",
                              lease_until: datetime | None = None,
                              ) -> tuple[WorkflowCreated, list[ReleasedRun]]:
        """Write the whole graph (workflow, task rows, edges, the roots' first runs) in
        one transaction, or nothing; returns it and the roots' runs (to push, or started).
        Roots whose run is named in `start` begin running under `worker_id`'s lease until
        `lease_until`, where their queue allows it (as `create_tasks`). With a dedup_key
        already used by the tenant, nothing is written and the existing one is named."""
        nodes = list(wf.nodes)
        on_failure_id = wf.on_failure.task.id if wf.on_failure else None
        day = bucket(wf.id)
        if any(bucket(n.task.id) != day for n in (*nodes, *([wf.on_failure] if wf.on_failure else []))):
            raise ValueError("a workflow's nodes must have its day (ids.new_id_like)")
        async with self._pool.transaction() as conn:
            cur = await conn.execute(CREATE_WORKFLOW, {
                "id": wf.id, "tenant": wf.tenant, "name": wf.name, "dedup_key": wf.dedup_key,
                "open_nodes": len(nodes), "on_failure": on_failure_id, "actor": actor.id,
                "now": now})
            if await cur.fetchone() is None:
                cur = await conn.execute(EXISTING_WORKFLOW, (wf.tenant, wf.dedup_key))
                row = await cur.fetchone()
                assert row is not None
                return WorkflowCreated(row[0], created=False), []
            everything = nodes + ([wf.on_failure] if wf.on_failure else [])
            cur = await conn.execute(CREATE_NODES, {
                "input": _nodes_input(everything, hold=on_failure_id, start=start),
                "workflow_id": wf.id, "now": now, "worker_id": worker_id,
                "lease_until": lease_until})
            runs = [ReleasedRun(*row) for row in await cur.fetchall()]
            ids = {n.key: n.task.id for n in everything}
            parents, children, policies = [], [], []
            for n in nodes:
                for d in n.depends_on:
                    parents.append(ids[d.parent])
                    children.append(n.task.id)
                    policies.append(d.on_parent_failure.value)
            if parents:
                await conn.execute(CREATE_EDGES, (parents, children, policies))
            await record_audit(conn, at=now, actor=actor, action="workflow_create", detail={
                "workflow_id": str(wf.id), "name": wf.name, "tasks": len(nodes)})
        return WorkflowCreated(wf.id, created=True, task_ids=ids), runs

    @query
    async def get_workflow(self, workflow_id: uuid.UUID, *, tenant: str) -> Workflow | None:
        """The workflow with every node; None if `tenant` has no such workflow."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(GET_WORKFLOW, (workflow_id, tenant))
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(GET_NODES, {"workflow_id": workflow_id,
                                          "on_failure": row["on_failure_task_id"]})
            nodes = tuple(_node(r) for r in await cur.fetchall())
        counts: dict[str, int] = {}
        for n in nodes:
            counts[n.status] = counts.get(n.status, 0) + 1
        return _workflow(row, nodes=nodes, counts=counts)

    @query
    async def workflow_graph(self, workflow_id: uuid.UUID, *, tenant: str,
                             ) -> tuple[Workflow, list[tuple[uuid.UUID, str, str, list[str]]]] | None:
        """The workflow (its counts by status filled in) and each node as (task id, key,
        status, parents' keys), unordered; None if `tenant` has no such workflow. Two
        queries, no result or error read: what the console draws from."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(GET_WORKFLOW, (workflow_id, tenant))
            row = await cur.fetchone()
            if row is None:
                return None
            c = await conn.execute(GET_GRAPH, (workflow_id,))
            rows = await c.fetchall()
        # Parents come as ids (no second look-up of the tasks table): named here.
        key_of = {tid: key for tid, key, _, _ in rows}
        nodes = [(tid, key, status, sorted(key_of[p] for p in parents if p in key_of))
                 for tid, key, status, parents in rows]
        counts: dict[str, int] = {}
        for _, _, status, _ in nodes:
            counts[status] = counts.get(status, 0) + 1
        return _workflow(row, counts=counts), nodes

    @query
    async def workflow_nodes(self, workflow_id: uuid.UUID, task_ids: Sequence[uuid.UUID],
                             ) -> list[Node]:
        """Those of `task_ids` that are nodes of the workflow, with attempts and timing
        (no result, the latest error cut; `depends_on` left empty), unordered."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(GET_SOME_NODES, {"workflow_id": workflow_id,
                                               "ids": list(task_ids),
                                               "error_chars": NODE_ERROR_CHARS})
            return [_node(r) for r in await cur.fetchall()]

    @query
    async def workflow_results(self, workflow_id: uuid.UUID, *, tenant: str,
                               ) -> dict[str, dict[str, Any]] | None:
        """Each node's status, result and error by key; None if no such workflow."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM workflows WHERE id = %s AND tenant = %s",
                                     (workflow_id, tenant))
            if await cur.fetchone() is None:
                return None
            cur = await conn.execute(RESULTS, {"workflow_id": workflow_id})
            return {key: {"status": status, "result": result, "error": error}
                    for key, status, result, error in await cur.fetchall()}

    @query
    async def list_workflows(self, f: WorkflowFilter, *, limit: int,
                             after: tuple[datetime, uuid.UUID] | None,
                             with_counts: bool = True) -> Page[Workflow]:
        """Workflows matching `f`, newest first, after the (created_at, id) key; with
        each one's node counts by status unless `with_counts` is False (counting reads
        every node of the page's workflows: up to limit × max_workflow_tasks rows)."""
        where, params = ["tenant = %(tenant)s"], dict[str, Any](tenant=f.tenant)
        for column, value in (("state", f.state), ("name", f.name), ("dedup_key", f.dedup_key)):
            if value is not None:
                where.append(f"{column} = %({column})s")
                params[column] = value
        if f.created_after is not None:
            where.append("created_at >= %(created_after)s")
            params["created_after"] = f.created_after
        if f.created_before is not None:
            where.append("created_at < %(created_before)s")
            params["created_before"] = f.created_before
        if after is not None:
            where.append("(created_at, id) < (%(after_at)s, %(after_id)s)")
            params["after_at"], params["after_id"] = after
        params["limit"] = limit
        # Only fixed fragments are joined into the text; every value is a parameter.
        sql = ("SELECT * FROM workflows WHERE " + " AND ".join(where)
               + " ORDER BY created_at DESC, id DESC LIMIT %(limit)s")
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql.encode(), params)
            rows = await cur.fetchall()
            counts: dict[uuid.UUID, dict[str, int]] = {}
            if rows and with_counts:
                c = await conn.execute(COUNT_NODES, ([r["id"] for r in rows],))
                for wid, status, n in await c.fetchall():
                    counts.setdefault(wid, {})[status] = n
        return page_of(rows, lambda r: _workflow(r, counts=counts.get(r["id"], {})))

    @query
    async def cancel_workflow(self, workflow_id: uuid.UUID, *, tenant: str, actor: Actor,
                              reason: str | None, now: datetime) -> WorkflowChange | None:
        """Cancel every node of `tenant`'s workflow not final yet (pending and waiting
        ones at once, running ones through their daemon); None if there is no such
        workflow. A finished workflow is left as it is (`changed` False)."""
        async with self._pool.transaction() as conn:
            cur = await conn.execute(
                "SELECT state FROM workflows WHERE id = %s AND tenant = %s FOR UPDATE",
                (workflow_id, tenant))
            row = await cur.fetchone()
            if row is None:
                return None
            if row[0] != WorkflowState.RUNNING:
                return WorkflowChange(WorkflowState(row[0]), changed=False)
            await conn.execute(
                "UPDATE workflows SET cancelled_at = %s, cancelled_by = %s WHERE id = %s",
                (now, actor.id, workflow_id))
            cur = await conn.execute(CANCEL_NODES, {
                "id": workflow_id, "now": now, "actor": actor.id,
                "reason": reason or "workflow cancelled"})
            ids = [r[0] for r in await cur.fetchall()]
            waiting, running = [], []
            if ids:
                cur = await conn.execute(CANCEL_NODE_RUNS, {"ids": ids, "now": now})
                for queue, run_id, is_running in await cur.fetchall():
                    if is_running:
                        running.append(run_id)
                    else:
                        waiting.append((queue, run_id))
            released = await release(conn, ids, now=now)
            await record_audit(conn, at=now, actor=actor, action="workflow_cancel", detail={
                "workflow_id": str(workflow_id), "reason": reason, "tasks": len(ids)})
            state = released.finished.get(workflow_id, WorkflowState.RUNNING)
        return WorkflowChange(state, changed=True, waiting=waiting, running=running,
                              runs=released.runs)

    @query
    async def resume_workflow(self, workflow_id: uuid.UUID, *, tenant: str, actor: Actor,
                              now: datetime) -> WorkflowChange | None:
        """Run again a failed workflow's failed nodes and those cancelled or skipped
        because of a failure; completed nodes keep their results. None if there is no
        such workflow; `changed` False unless it was failed."""
        async with self._pool.transaction() as conn:
            cur = await conn.execute(
                "SELECT state, on_failure_task_id FROM workflows"
                " WHERE id = %s AND tenant = %s FOR UPDATE", (workflow_id, tenant))
            row = await cur.fetchone()
            if row is None:
                return None
            if row[0] != WorkflowState.FAILED:
                return WorkflowChange(WorkflowState(row[0]), changed=False)
            cur = await conn.execute(RESUME_NODES, {"id": workflow_id, "now": now})
            again = await cur.fetchall()
            ids = [r[0] for r in again]
            undead = [(queue, tid) for tid, queue, was in again if was == "failed"]
            # The on_failure task may run again if the workflow fails again.
            await conn.execute(
                "UPDATE tasks SET status = 'pending', deps_remaining = 0, finished_at = NULL,"
                " updated_at = %s WHERE id = %s", (now, row[1]))
            await conn.execute(
                "UPDATE workflows SET state = 'running', open_nodes = %s, bad_nodes = 0,"
                " finished_at = NULL, updated_at = %s WHERE id = %s",
                (len(ids), now, workflow_id))
            cur = await conn.execute(
                "SELECT id FROM tasks WHERE id = ANY(%s) AND deps_remaining = 0", (ids,))
            ready = [r[0] for r in await cur.fetchall()]
            released = Released()
            await _decide(conn, ready, now=now, into=released)
            # Nodes skipped again (a parent still skipped) close at once.
            if released.closed:
                more = await release(conn, released.closed, now=now)
                released.runs += more.runs
            await record_audit(conn, at=now, actor=actor, action="workflow_resume", detail={
                "workflow_id": str(workflow_id), "tasks": len(ids)})
        return WorkflowChange(WorkflowState.RUNNING, changed=True, runs=released.runs,
                              undead=undead)


# The tasks a batch of outcomes has just made final, for the completer's release: those
# of its runs that are workflow nodes, completed or failed, and whose row this very
# transaction wrote (its xmin is this transaction's id). Computed by the server, so that
# the release is sent in the same round trip as the outcomes it follows.
JUST_CLOSED = """(
    SELECT coalesce(array_agg(t.id), '{}') FROM task_runs r JOIN tasks t ON t.id = r.task_id
    WHERE r.id = ANY(%(run_ids)s) AND r.bucket = ANY(distasks_buckets(%(run_ids)s))
      AND t.workflow_id IS NOT NULL
      AND t.status IN ('completed', 'failed') AND t.xmin = pg_current_xact_id()::xid
)::uuid[]"""
# The workflows of a batch's runs, locked before its outcomes are written: a workflow's
# row is then always locked before its tasks' rows (as a cancel does), so an outcome
# write and a workflow cancel never wait for each other in a circle.
LOCK_WORKFLOWS_OF_RUNS = """
SELECT id FROM workflows
WHERE id IN (SELECT t.workflow_id FROM task_runs r JOIN tasks t ON t.id = r.task_id
             WHERE r.id = ANY(%(run_ids)s) AND r.bucket = ANY(distasks_buckets(%(run_ids)s))
               AND t.workflow_id IS NOT NULL)
ORDER BY id FOR UPDATE
"""
CLOSE_CLOSED_NODES = CLOSE_NODES.replace("%(ids)s", JUST_CLOSED)
RELEASE_CLOSED_CHILDREN = RELEASE_CHILDREN.replace("%(ids)s", JUST_CLOSED)

# The common case of a batch of successes, in one statement (`fold_release`): the batch
# closes nodes of workflows that stay running, and lowers counters of children that
# stay above zero. Then nothing is left to decide (no child to run, skip or cancel, no
# workflow to finish, no on_failure task) and the release is two UPDATEs beside the
# outcome's own. Whether that is so is asked first, under the same locks as any release
# (each workflow of the batch in id order, then the children) and of the rows as they
# are now: a locking read returns the newest committed version, where the statement's
# snapshot may predate a release it waited for. Either all of it is written, or
# nothing is and the statement answers one row of NULLs: the caller then writes the
# batch the long way (`send_release`). The tasks counted are a superset of those the
# outcomes will close (a node cancelled meanwhile is not closed), so the counters only
# end higher than the check assumed.
FOLD_CHECK = """
closing AS (
    SELECT t.id, t.workflow_id FROM batch b
    JOIN task_runs r ON r.id = b.run_id AND r.bucket = distasks_bucket(b.run_id)
    JOIN tasks t ON t.id = r.task_id
    WHERE t.workflow_id IS NOT NULL
), locked AS (
    SELECT w.id, w.state, w.open_nodes, w.on_failure_task_id FROM workflows w
    WHERE w.id IN (SELECT workflow_id FROM closing)
    ORDER BY w.id FOR UPDATE
), hits AS (
    -- Edges and children by key from id arrays: joined with a CTE, whose size the
    -- planner cannot know, both tables were read whole for every batch.
    SELECT e.child_id, count(*) AS n FROM workflow_edges e
    WHERE e.parent_id = ANY(ARRAY(SELECT id FROM closing))
    GROUP BY e.child_id
), seen AS (
    -- The children as the snapshot has them, no lock taken. A refusal is always safe
    -- (the long way decides), so the snapshot may say no on its own: a fan-out's root
    -- then takes no thousand row locks to find out. Only a yes needs `children`.
    SELECT NOT EXISTS (
        SELECT 1 FROM tasks c JOIN hits h ON h.child_id = c.id
        WHERE c.id = ANY(ARRAY(SELECT child_id FROM hits))
          AND c.status = 'pending' AND c.deps_remaining <= h.n) AS ok
), children AS (
    -- After the workflows' locks (the sub-select runs first, to the end), as a release.
    SELECT c.id, c.status, c.deps_remaining FROM tasks c
    WHERE c.id = ANY(ARRAY(SELECT child_id FROM hits)) AND (SELECT count(*) FROM locked) >= 0
      AND (SELECT ok FROM seen)
    FOR UPDATE
), fold AS (
    SELECT (SELECT ok FROM seen) AND NOT EXISTS (
               SELECT 1 FROM locked l
               WHERE l.state <> 'running' OR l.open_nodes <= (
                   SELECT count(*) FROM closing c
                   WHERE c.workflow_id = l.id AND c.id IS DISTINCT FROM l.on_failure_task_id))
           AND NOT EXISTS (
               SELECT 1 FROM children c JOIN hits h ON h.child_id = c.id
               WHERE c.status = 'pending' AND c.deps_remaining <= h.n) AS ok
), i AS (
    SELECT * FROM batch WHERE (SELECT ok FROM fold)
)"""

# What the closed nodes (`t`: the outcome statement's updated tasks) change when the
# check passed: their workflows' counters and their pending children's counters, as
# CLOSE_NODES and RELEASE_CHILDREN do when nothing reaches zero.
FOLD_RELEASE = """
closed AS (
    UPDATE workflows w SET open_nodes = w.open_nodes - x.n, updated_at = x.at
    FROM (SELECT l.id, count(*) AS n, (SELECT max(at) FROM i) AS at
          FROM t JOIN locked l ON l.id = t.workflow_id
          WHERE t.id IS DISTINCT FROM l.on_failure_task_id GROUP BY l.id) x
    WHERE w.id = x.id
), lowered AS (
    UPDATE tasks c SET deps_remaining = c.deps_remaining - x.n, updated_at = x.at
    FROM (SELECT e.child_id, 'pending' AS waiting, count(*) AS n, (SELECT max(at) FROM i) AS at
          FROM workflow_edges e JOIN t ON t.id = e.parent_id GROUP BY e.child_id) x
    WHERE c.id = x.child_id AND c.status = x.waiting
)"""


def fold_release(outcome_sql: str) -> str:
    """`outcome_sql` (an outcome statement: input `i`, the runs it wrote `done`, the
    tasks it closed `t`, then its answer) with FOLD_CHECK before and FOLD_RELEASE after:
    one statement that writes the outcomes and their release when nothing is left to
    decide, and else nothing but a row of NULLs (see FOLD_CHECK)."""
    head, sep, rest = outcome_sql.partition("), done AS (")
    assert head.lstrip().startswith("WITH i AS (") and sep, "not an outcome statement"
    ctes, final, answer = rest.rpartition("\n)\nSELECT ")
    assert final, "not an outcome statement"
    # Its answer has three columns, as every outcome statement's (run id, whether its
    # task moved on, the node it closed).
    return (head.replace("WITH i AS (", "WITH batch AS (", 1) + "), " + FOLD_CHECK
            + ", done AS (" + ctes + "\n), " + FOLD_RELEASE + "\nSELECT " + answer.rstrip()
            + "\nUNION ALL SELECT NULL, NULL, NULL FROM fold WHERE NOT fold.ok\n")


@dataclass(slots=True)
class Level:
    """The statements of one level of a release, sent and not read yet."""

    closing: Any
    releasing: Any


async def lock_for_runs(conn: Any, run_ids: Sequence[uuid.UUID], *,
                        table: str = PARENT) -> None:
    """Lock the workflows of `run_ids`' tasks, before their outcomes are written;
    `table` holds those runs (store/day_tables.py)."""
    await conn.execute(on_day(LOCK_WORKFLOWS_OF_RUNS, table), {"run_ids": list(run_ids)})


async def send_release(conn: Any, run_ids: Sequence[uuid.UUID], *, now: datetime,
                       table: str = PARENT) -> Level:
    """Send the first level of the release of what the outcomes of `run_ids` (written
    earlier in this transaction, after `lock_for_runs`) made final; read it with
    `finish_release`. In pipeline mode this costs no round trip of its own."""
    params = {"run_ids": list(run_ids), "now": now}
    return Level(await conn.execute(on_day(CLOSE_CLOSED_NODES, table), params),
                 await conn.execute(on_day(RELEASE_CLOSED_CHILDREN, table), params))


async def release(conn: Any, task_ids: Sequence[uuid.UUID], *, now: datetime) -> Released:
    """Close `task_ids` (workflow tasks that just became final in the caller's
    transaction) on their workflows and release their dependents, level by level: a
    child cancelled or skipped here closes in turn. Runs in the caller's transaction."""
    if not task_ids:
        return Released()
    await conn.execute(LOCK_WORKFLOWS, {"ids": list(task_ids)})
    return await finish_release(conn, await _send_level(conn, list(task_ids), now), now=now)


async def _send_level(conn: Any, frontier: list[uuid.UUID], now: datetime) -> Level:
    # Both statements of a level go together: in pipeline mode, one round trip.
    return Level(await conn.execute(CLOSE_NODES, {"ids": frontier, "now": now}),
                 await conn.execute(RELEASE_CHILDREN, {"ids": frontier, "now": now}))


async def finish_release(conn: Any, level: Level, *, now: datetime) -> Released:
    """Read a sent level, decide the fate of children whose parents are all final, and
    go on with the next levels (children cancelled or skipped) until none is left."""
    out = Released()
    while True:
        closing, releasing = level.closing, level.releasing
        for wid, state, open_nodes, on_failure in await closing.fetchall():
            if open_nodes == 0:
                out.finished[wid] = WorkflowState(state)
                if on_failure is not None:
                    if state == WorkflowState.FAILED:
                        await _decide(conn, [on_failure], now=now, into=out)
                    else:
                        await conn.execute(SKIP_TASKS, {"ids": [on_failure], "now": now})
        cancelled, ready = [], []
        for child, status, remaining in await releasing.fetchall():
            if status == "cancelled":
                cancelled.append(child)
            elif remaining == 0:
                ready.append(child)
        closed_before = len(out.closed)
        await _decide(conn, ready, now=now, into=out)
        frontier = cancelled + out.closed[closed_before:]
        out.closed += cancelled
        if not frontier:
            return out
        level = await _send_level(conn, frontier, now)


async def _decide(conn: Any, ready: list[uuid.UUID], *, now: datetime, into: Released) -> None:
    """DECIDE_FATE for `ready`: runs go to `into.runs`, skipped tasks to `into.closed`."""
    if not ready:
        return
    cur = await conn.execute(DECIDE_FATE, {"ids": ready, "now": now})
    for task_id, run_id, queue, priority, key, available_at in await cur.fetchall():
        if run_id is None:
            into.closed.append(task_id)
        else:
            into.runs.append(ReleasedRun(task_id, run_id, queue, priority, key, available_at))


def _nodes_input(nodes: Sequence[NewNode], *, hold: uuid.UUID | None,
                 start: Collection[uuid.UUID] = frozenset()) -> str:
    """CREATE_NODES' input: one JSON object per node, its payload spliced in as the JSON
    text the API made (as store/tasks.py create_tasks_input)."""
    rows = []
    for n in nodes:
        t = n.task
        head = dumps({
            "id": str(t.id), "run_id": str(t.run_id), "tenant": t.tenant, "name": t.name,
            "handler": t.handler, "type": t.type.value, "queue_name": t.queue_name,
            "priority": t.priority, "max_retries": t.max_retries, "timeout_s": t.timeout_s,
            "run_at": t.run_at.isoformat() if t.run_at else None,
            "secret_fields": list(t.secret_fields), "concurrency_key": t.concurrency_key,
            "key": n.key, "deps": len(n.depends_on), "hold": t.id == hold,
            "start": t.run_id in start})
        rows.append(f'{head[:-1]},"payload":{t.payload_json}}}')
    return f"[{','.join(rows)}]"


def _node(r: dict[str, Any]) -> Node:
    deps = []
    for d in r["depends_on"]:
        key, _, policy = d.rpartition(" ")
        deps.append(Dependency(key, OnParentFailure(policy)))
    return Node(key=r["workflow_key"], task_id=r["id"], status=r["status"], handler=r["handler"],
                queue_name=r["queue_name"], depends_on=tuple(deps), attempts=r["attempts"],
                deps_remaining=r["deps_remaining"], created_at=r["created_at"],
                started_at=r["started_at"], finished_at=r["finished_at"], result=r["result"],
                error=r["error"], cancel_reason=r["cancel_reason"])


def _workflow(r: dict[str, Any], *, nodes: tuple[Node, ...] = (),
              counts: dict[str, int] | None = None) -> Workflow:
    return Workflow(id=r["id"], name=r["name"], tenant=r["tenant"],
                    state=WorkflowState(r["state"]), dedup_key=r["dedup_key"],
                    open_nodes=r["open_nodes"], created_at=r["created_at"],
                    updated_at=r["updated_at"], finished_at=r["finished_at"],
                    on_failure_task_id=r["on_failure_task_id"], cancelled_at=r["cancelled_at"],
                    cancelled_by=r["cancelled_by"], nodes=nodes, counts=counts or {})
