"""Runs: start (claim), record outcomes (fenced), leases, heartbeats and takeover."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from distasks.domain.ids import bucket
from distasks.domain.model import ClaimedRun, RunStatus
from distasks.store.base import StoreBase, by_bucket, claimed_from_row, query
from distasks.store.day_tables import on_day
from distasks.store.workflows import (
    Released,
    finish_release,
    fold_release,
    lock_for_runs,
    send_release,
)


@dataclass(frozen=True, slots=True)
class Fence:
    """Whose lease an outcome write needs: the run must still be running under
    `worker_id` and, for a takeover, its lease must have expired before `expired_before`."""

    worker_id: str
    expired_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Succeeded:
    run_id: uuid.UUID
    fence: Fence
    result_json: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Retrying:
    run_id: uuid.UUID
    fence: Fence
    error: str
    at: datetime
    next_retry_at: datetime
    #: the next attempt, created queued (due at next_retry_at)
    new_run_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Failed:
    run_id: uuid.UUID
    fence: Fence
    error: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Interrupted:
    run_id: uuid.UUID
    fence: Fence
    reason: str
    at: datetime
    #: the next attempt, created queued and due at once
    new_run_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Cancelled:
    run_id: uuid.UUID
    fence: Fence
    reason: str
    at: datetime


@dataclass(slots=True)
class Outcomes:
    """A batch of finished runs for `record_outcomes`, one row list per kind."""

    succeeded: list[Succeeded] = field(default_factory=list)
    retrying: list[Retrying] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    interrupted: list[Interrupted] = field(default_factory=list)
    cancelled: list[Cancelled] = field(default_factory=list)
    #: some run is of a workflow node: write in one transaction with the release
    workflow: bool = False

    def __len__(self) -> int:
        return (len(self.succeeded) + len(self.retrying) + len(self.failed)
                + len(self.interrupted) + len(self.cancelled))


@dataclass(frozen=True, slots=True)
class Written:
    """What `record_outcomes` wrote: runs written, and among them those whose task moved
    on (a retry scheduled, dead-lettered, handed back); a task cancelled meanwhile does not."""

    runs: set[uuid.UUID]
    advanced: set[uuid.UUID]
    #: dependents released in the same transaction (workflows), to push into Redis
    released: Released = field(default_factory=lambda: Released())


@dataclass(frozen=True, slots=True)
class Held:
    """What a heartbeat found: leases extended, and among them runs whose task was
    cancelled (their handlers should stop)."""

    extended: set[uuid.UUID]
    cancelled: set[uuid.UUID]


# A workflow node's parents for its handler (ctx.parents): by key, each one's status
# and its latest run's result and error. Results are kept in key order while their
# total stays within %(max_parent_bytes)s; the rest are left out, marked truncated.
PARENTS = """
SELECT json_object_agg(x.key, json_build_object(
    'status', x.status, 'error', x.error,
    'result', CASE WHEN x.total <= %(max_parent_bytes)s THEN x.result END,
    'truncated', x.total > %(max_parent_bytes)s))
FROM (
    SELECT p.workflow_key AS key, p.status, last.result, last.error,
           sum(coalesce(octet_length(last.result::text), 0))
               OVER (ORDER BY p.workflow_key) AS total
    FROM workflow_edges e JOIN tasks p ON p.id = e.parent_id
    LEFT JOIN LATERAL (SELECT lr.result, lr.error FROM task_runs lr
                       WHERE lr.task_id = p.id AND lr.bucket = distasks_bucket(p.id)
                       ORDER BY lr.attempt DESC LIMIT 1) last ON true
    WHERE e.child_id = t.id
) x
"""

# Claim in PostgreSQL: only a queued run of a queued task starts, so a message that
# Redis delivers twice after a fault does not start the run twice.
START_RUNS = """
UPDATE task_runs r
SET status = 'running', worker_id = %(worker_id)s, started_at = %(now)s,
    lease_expires_at = %(lease_until)s
FROM tasks t
WHERE r.id = ANY(%(run_ids)s) AND r.bucket = %(bucket)s
  AND r.status = 'queued' AND t.id = r.task_id AND t.status = 'queued'
RETURNING r.id AS run_id, r.attempt, r.available_at, r.worker_id, t.*,
    CASE WHEN t.workflow_id IS NOT NULL THEN (%(parents)s) END AS parents
""".replace("%(parents)s", PARENTS)

# The outcome statements take column arrays and return (run id, whether its task moved
# on, the task's id if it is a workflow node that became final: record_outcomes releases
# its dependents in the same transaction). FENCE is the fencing condition: a run that was taken over is no longer running
# under the worker that reports on it and is not touched; a takeover (expired_before
# set) only applies while the lease is still expired, so a heartbeat that got in first
# wins. A task cancelled meanwhile keeps its status and gets no next attempt.
# Five whole statements rather than one template with holes: they differ in what they
# set on the run, what they do to the task, and whether they create the next attempt,
# and each reads top to bottom as what it does.
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
    FROM i WHERE r.id = i.run_id AND r.bucket = distasks_bucket(i.run_id) AND {FENCE}
    RETURNING r.id, r.task_id, i.at
), t AS (
    UPDATE tasks t SET status = 'completed', updated_at = done.at, finished_at = done.at
    FROM done WHERE t.id = done.task_id AND t.status = 'queued'
    RETURNING t.id, t.workflow_id
)
SELECT done.id, t.id IS NOT NULL, CASE WHEN t.workflow_id IS NOT NULL THEN t.id END
FROM done LEFT JOIN t ON t.id = done.task_id
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
    FROM i WHERE r.id = i.run_id AND r.bucket = distasks_bucket(i.run_id) AND {FENCE}
    RETURNING r.id, r.task_id, r.attempt, i.at, i.next_retry_at, i.new_run_id
), t AS (
    UPDATE tasks t SET failures = t.failures + 1, updated_at = done.at
    FROM done WHERE t.id = done.task_id AND t.status = 'queued'
    RETURNING t.id
), next_run AS (
    INSERT INTO task_runs (id, task_id, bucket, attempt, created_at, available_at)
    SELECT new_run_id, task_id, distasks_bucket(task_id), attempt + 1, at, next_retry_at
    FROM done JOIN t ON t.id = done.task_id
)
SELECT done.id, t.id IS NOT NULL, NULL::uuid FROM done LEFT JOIN t ON t.id = done.task_id
"""

FAIL_RUNS = f"""
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[],
                         %s::text[], %s::timestamptz[])
        AS i(run_id, worker_id, expired_before, error, at)
), done AS (
    UPDATE task_runs r
    SET status = 'failed', error = i.error, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND r.bucket = distasks_bucket(i.run_id) AND {FENCE}
    RETURNING r.id, r.task_id, i.at
), t AS (
    UPDATE tasks t
    SET status = 'failed', failures = t.failures + 1, updated_at = done.at, finished_at = done.at
    FROM done WHERE t.id = done.task_id AND t.status = 'queued'
    RETURNING t.id, t.workflow_id
)
SELECT done.id, t.id IS NOT NULL, CASE WHEN t.workflow_id IS NOT NULL THEN t.id END
FROM done LEFT JOIN t ON t.id = done.task_id
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
    FROM i WHERE r.id = i.run_id AND r.bucket = distasks_bucket(i.run_id) AND {FENCE}
    RETURNING r.id, r.task_id, r.attempt, i.at, i.new_run_id
), t AS (
    -- Locked, so that a concurrent cancel waits and then sees the next attempt.
    SELECT t.id FROM tasks t JOIN done ON t.id = done.task_id WHERE t.status = 'queued'
    FOR UPDATE OF t
), next_run AS (
    INSERT INTO task_runs (id, task_id, bucket, attempt, created_at, available_at)
    SELECT new_run_id, task_id, distasks_bucket(task_id), attempt + 1, at, at FROM done JOIN t ON t.id = done.task_id
)
SELECT done.id, t.id IS NOT NULL, NULL::uuid FROM done LEFT JOIN t ON t.id = done.task_id
"""

# Successes of workflow nodes and their release in one statement, when the release has
# nothing to decide (store/workflows.py, FOLD_CHECK); else it writes nothing.
SUCCEED_AND_RELEASE = fold_release(SUCCEED_RUNS)

# The handler was stopped because its task was cancelled.
CANCEL_RUNS = f"""
WITH i AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[],
                         %s::text[], %s::timestamptz[])
        AS i(run_id, worker_id, expired_before, error, at)
), done AS (
    UPDATE task_runs r
    SET status = 'cancelled', error = i.error, finished_at = i.at, lease_expires_at = NULL
    FROM i WHERE r.id = i.run_id AND r.bucket = distasks_bucket(i.run_id) AND {FENCE}
    RETURNING r.id
)
SELECT id, false, NULL::uuid FROM done
"""

# Over every day's partition (a retry of any day may be running): run on a generic plan
# (StoreBase.over_every_day).
EXPIRED_RUNS = """
SELECT r.id AS run_id, r.attempt, r.available_at, r.worker_id, t.*
FROM task_runs r JOIN tasks t ON t.id = r.task_id
WHERE r.status = 'running' AND r.lease_expires_at < %(now)s
ORDER BY r.lease_expires_at
LIMIT %(limit)s
"""

RUN_STATES = "SELECT id, status FROM task_runs WHERE id = ANY(%(ids)s) AND bucket = %(bucket)s"

HEARTBEAT = """
UPDATE workers
SET heartbeat_at = %(now)s, stopped_at = CASE WHEN %(stopped)s THEN %(now)s END
WHERE id = %(id)s
"""

# Only runs still running under this worker: a run taken over is not extended.
EXTEND_LEASES = """
UPDATE task_runs r SET lease_expires_at = %(lease_until)s
FROM tasks t
WHERE r.id = ANY(%(run_ids)s) AND r.bucket = %(bucket)s
  AND r.status = 'running' AND r.worker_id = %(worker_id)s AND t.id = r.task_id
RETURNING r.id, t.status = 'cancelled'
"""


class RunQueries(StoreBase):
    @query
    async def start_runs(self, run_ids: Sequence[uuid.UUID], *, worker_id: str, now: datetime,
                         lease_until: datetime,
                         max_parent_output_bytes: int = 1024 * 1024) -> list[ClaimedRun]:
        """Mark queued runs running under `worker_id`'s lease; returns those that were,
        a workflow node's with its parents' outcomes (at most `max_parent_output_bytes`
        of results).

        A run that is not queued any more (claimed elsewhere after a fault, its task
        finished or cancelled) is left alone and not returned.
        """
        rows = []
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            for day, ids in by_bucket(run_ids).items():
                await cur.execute(await self.for_day(conn, START_RUNS, day), {
                    "run_ids": ids, "bucket": day, "worker_id": worker_id, "now": now,
                    "lease_until": lease_until, "max_parent_bytes": max_parent_output_bytes})
                rows += await cur.fetchall()
        return [claimed_from_row(r) for r in rows]

    @query
    async def record_outcomes(self, o: Outcomes) -> Written:
        """Write a batch of outcomes in one transaction.

        Fencing: a run is written only while its Fence holds (still `running` under that
        worker, and for a takeover still expired); a run taken over meanwhile is skipped,
        so a late result never overwrites the attempt that took over.
        """
        if o.workflow and len(o) == len(o.succeeded):
            # Most batches of a workflow only lower counters: one statement, one round
            # trip, as a batch without workflow nodes.
            written = await self._record_folded(o.succeeded)
            if written is not None:
                return written
        runs: set[uuid.UUID] = set()
        advanced: set[uuid.UUID] = set()
        # A statement per kind and day: each writes one day's table (store/day_tables.py).
        every: list[tuple[str, Sequence[OutcomeRow]]] = [
            (SUCCEED_RUNS, o.succeeded), (RETRY_RUNS, o.retrying), (FAIL_RUNS, o.failed),
            (INTERRUPT_RUNS, o.interrupted), (CANCEL_RUNS, o.cancelled)]
        kinds = [(sql, day, group) for sql, rows in every
                 for day, group in by_bucket(rows, key=_run_id).items()]
        released = Released()
        # One statement commits by itself; several share a transaction, so that a retried
        # batch never finds half of itself already written. A workflow node's final
        # state and the release of its dependents commit together (promise 7), in
        # pipeline mode: BEGIN, the lock of their workflows, the outcomes and the
        # release's first level in one round trip (the server finds what the outcomes
        # closed), COMMIT in a second.
        async with contextlib.AsyncExitStack() as stack:
            conn = await stack.enter_async_context(
                self._pool.transaction() if len(kinds) > 1 and not o.workflow
                else self._pool.connection())
            if o.workflow:
                await stack.enter_async_context(conn.pipeline())
                await stack.enter_async_context(conn.transaction())
            run_ids = [r.run_id for _, _, rows in kinds for r in rows]
            if o.workflow:
                # The lock and the release look the batch's runs up again: on their
                # day's table when they share one.
                table = await self.runs_table(conn, (day for _, day, _ in kinds))
                await lock_for_runs(conn, run_ids, table=table)
            cursors = [await conn.execute(await self.for_day(conn, sql, day), _columns(rows))
                       for sql, day, rows in kinds]
            level = (await send_release(conn, run_ids, now=max(_at(o)), table=table)
                     if o.workflow else None)
            for cur in cursors:
                for run_id, moved_on, _closed in await cur.fetchall():
                    runs.add(run_id)
                    if moved_on:
                        advanced.add(run_id)
            if level is not None:
                released = await finish_release(conn, level, now=max(_at(o)))
        return Written(runs, advanced, released)

    async def _record_folded(self, succeeded: list[Succeeded]) -> Written | None:
        """Write successes of workflow nodes with their release in one statement if the
        release leaves nothing to decide; None (nothing written) if it would."""
        runs: set[uuid.UUID] = set()
        advanced: set[uuid.UUID] = set()
        async with self._pool.connection() as conn:
            # Its check and release read the nodes' and their children's runs: a
            # workflow's are all in its day, so a batch of one day names that day's table.
            table = await self.runs_table(conn, (bucket(s.run_id) for s in succeeded))
            cur = await conn.execute(on_day(SUCCEED_AND_RELEASE, table), _columns(succeeded))
            for run_id, moved_on, _closed in await cur.fetchall():
                if run_id is None:
                    return None
                runs.add(run_id)
                if moved_on:
                    advanced.add(run_id)
        return Written(runs, advanced)

    @query
    async def expired_runs(self, *, now: datetime, limit: int) -> list[ClaimedRun]:
        """Running runs whose lease expired before `now`, oldest deadline first."""
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await self.over_every_day(cur, EXPIRED_RUNS, {"now": now, "limit": limit})
            rows = await cur.fetchall()
        return [claimed_from_row(r) for r in rows]

    @query
    async def run_states(self, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RunStatus]:
        """Status of each existing run among `run_ids`."""
        states = {}
        async with self._pool.connection() as conn:
            for day, ids in by_bucket(run_ids).items():
                cur = await conn.execute(await self.for_day(conn, RUN_STATES, day),
                                         {"ids": ids, "bucket": day})
                states.update({r[0]: RunStatus(r[1]) for r in await cur.fetchall()})
        return states

    @query
    async def heartbeat(self, worker_id: str, *, now: datetime, run_ids: Sequence[uuid.UUID] = (),
                        lease_until: datetime | None = None, stopped: bool = False) -> Held:
        """Record that the daemon lives (or, with `stopped`, that it stopped cleanly) and
        extend to `lease_until` the leases it still holds among `run_ids`.

        A run missing from `extended` was taken over: its handler should stop.
        """
        extended: set[uuid.UUID] = set()
        cancelled: set[uuid.UUID] = set()
        async with self._pool.transaction() as conn:
            await conn.execute(HEARTBEAT, {"id": worker_id, "now": now, "stopped": stopped})
            for day, ids in by_bucket(run_ids).items():
                cur = await conn.execute(await self.for_day(conn, EXTEND_LEASES, day), {
                    "run_ids": ids, "bucket": day, "worker_id": worker_id,
                    "lease_until": lease_until})
                for run_id, task_cancelled in await cur.fetchall():
                    extended.add(run_id)
                    if task_cancelled:
                        cancelled.add(run_id)
        return Held(extended, cancelled)


OutcomeRow = Succeeded | Retrying | Failed | Interrupted | Cancelled


def _at(o: Outcomes) -> list[datetime]:
    return [r.at for rows in (o.succeeded, o.retrying, o.failed, o.interrupted, o.cancelled)
            for r in rows]


def _run_id(row: OutcomeRow) -> uuid.UUID:
    return row.run_id


def _columns(rows: Sequence[OutcomeRow]) -> list[list[Any]]:
    """The statement's parameters: one array per column, in the order the row classes
    declare their fields (run_id, the fence's two, then the kind's own)."""
    names = [f.name for f in dataclasses.fields(rows[0])[2:]]
    return [[r.run_id for r in rows], [r.fence.worker_id for r in rows],
            [r.fence.expired_before for r in rows],
            *([getattr(r, name) for r in rows] for name in names)]
