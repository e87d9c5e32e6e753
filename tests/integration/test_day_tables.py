"""The hot path names a day's partition of task_runs (store/day_tables.py) only where
that is sure to be right, and writes every run wherever its day is: today's and
yesterday's by name, older days, legacy ids and days without a partition through the
parent, a batch mixing them in one go."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from distasks.domain import ids
from distasks.domain.graph import Dependency, NewNode, NewWorkflow
from distasks.domain.model import SYSTEM, RunStatus, TaskStatus
from distasks.store import day_tables, dispatch, runs, workflows
from distasks.store.runs import Failed, Fence, Outcomes, Retrying, Succeeded

from .helpers import new_task
from .test_partitions import DAYS_BACK, day_partition, history

DAY = timedelta(days=1)


def today() -> int:
    return int(datetime.now(UTC).timestamp() * 1000) // ids.MS_PER_DAY


def where(pg_dsn: str, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
    """Each run's status and the table that holds it."""
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, status, tableoid::regclass::text FROM task_runs"
                            " WHERE id = ANY(%s)", (run_ids,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def running_on(pg_dsn: str, day_offset: int) -> tuple[uuid.UUID, uuid.UUID]:
    """A queued task made `day_offset` days from now, its first run running under "w"."""
    at = datetime.now(UTC) + day_offset * DAY
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "WITH t AS (INSERT INTO tasks (id, name, handler, type, queue_name, payload,"
            " max_retries, status, created_at, updated_at)"
            " VALUES (distasks_task_id(%(at)s), 'h', 'demo', 'immediate', 'q', '{}', 3,"
            " 'queued', %(at)s, %(at)s) RETURNING id)"
            " INSERT INTO task_runs (id, task_id, bucket, attempt, status, worker_id,"
            " started_at, lease_expires_at)"
            " SELECT distasks_run_id(id), id, distasks_bucket(id), 1, 'running', 'w',"
            " now(), now() + interval '1 minute' FROM t RETURNING task_id, id",
            {"at": at}).fetchone()
    assert row is not None
    return row[0], row[1]


async def test_today_and_yesterday_are_named_older_days_go_through_the_parent(store, pg_dsn):
    async with store._pool.connection() as conn:
        named = {back: await store.for_day(conn, runs.EXTEND_LEASES, today() - back)
                 for back in range(DAYS_BACK + 1)}
        legacy = await store.for_day(conn, runs.EXTEND_LEASES, 0)
    for back in (0, 1):
        assert f"UPDATE {day_partition('task_runs', today() - back)} r" in named[back]
        assert " task_runs " not in named[back]
    for back in range(2, DAYS_BACK + 1):
        assert named[back] == runs.EXTEND_LEASES
    assert legacy == runs.EXTEND_LEASES


async def test_a_batch_over_many_days_writes_every_run_in_its_own_partition(store, pg_dsn):
    picked = history(pg_dsn, per_day=20)
    now = datetime.now(UTC)
    run_ids = [run_id for _task, run_id in picked.values()]
    held = await store.heartbeat("w", now=now, run_ids=run_ids, lease_until=now + DAY)
    assert held.extended == set(run_ids)
    assert set((await store.run_states(run_ids)).values()) == {RunStatus.RUNNING}

    # One batch: a success, a retry and a failure on each day, old and new alike.
    by_day = sorted(picked.items())
    succeeded = [Succeeded(r, Fence("w"), "{}", now) for _b, (_t, r) in by_day[0::2]]
    retried = [(t, r) for _b, (t, r) in by_day[1::2]]
    written = await store.record_outcomes(Outcomes(
        succeeded=succeeded,
        retrying=[Retrying(r, Fence("w"), "again", now, now, ids.new_run_id(t))
                  for t, r in retried]))
    assert written.runs == set(run_ids) and written.advanced == set(run_ids)
    found = where(pg_dsn, run_ids)
    for bucket, (_task, run_id) in picked.items():
        assert found[run_id][1] == day_partition("task_runs", bucket)
    assert {found[s.run_id][0] for s in succeeded} == {"succeeded"}
    assert {found[r][0] for _t, r in retried} == {"retrying"}
    with psycopg.connect(pg_dsn) as conn:
        nexts = conn.execute(
            "SELECT task_id, tableoid::regclass::text, status FROM task_runs"
            " WHERE task_id = ANY(%s) AND attempt = 2", ([t for t, _r in retried],)).fetchall()
    assert {(t, table, status) for t, table, status in nexts} == {
        (t, day_partition("task_runs", ids.bucket(t)), "queued") for t, _r in retried}


async def test_a_day_without_its_partition_goes_through_the_parent_until_it_is_made(
        store, pg_dsn, monkeypatch):
    # Ten days ahead: no partition (the migration made a week), its runs wait in default.
    task_id, run_id = running_on(pg_dsn, 10)
    day = ids.bucket(task_id)
    assert where(pg_dsn, [run_id])[run_id] == ("running", "task_runs_default")
    async with store._pool.connection() as conn:
        assert await store.for_day(conn, runs.RUN_STATES, day) == runs.RUN_STATES
    now = datetime.now(UTC)
    held = await store.heartbeat("w", now=now, run_ids=[run_id], lease_until=now + DAY)
    assert held.extended == {run_id}

    # Made now, by another daemon: its rows move out of default, and a daemon that read
    # the catalog before names it once it looks again.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        day_date = datetime.fromtimestamp(day * 86400, UTC).date()
        conn.execute("SELECT distasks_ensure_partitions(%s, %s)", (day_date, day_date))
    assert where(pg_dsn, [run_id])[run_id] == ("running", day_partition("task_runs", day))
    monkeypatch.setattr(day_tables, "RETRY_MISSING_S", 0.0)
    async with store._pool.connection() as conn:
        assert day_partition("task_runs", day) in await store.for_day(conn, runs.RUN_STATES, day)
    written = await store.record_outcomes(Outcomes(failed=[Failed(run_id, Fence("w"), "no", now)]))
    assert written.runs == {run_id}
    assert where(pg_dsn, [run_id])[run_id] == ("failed", day_partition("task_runs", day))


@pytest.mark.parametrize("statement", [
    runs.START_RUNS, runs.SUCCEED_RUNS, runs.RETRY_RUNS, runs.FAIL_RUNS, runs.INTERRUPT_RUNS,
    runs.CANCEL_RUNS, runs.SUCCEED_AND_RELEASE, runs.RUN_STATES, runs.EXTEND_LEASES,
    dispatch.MARK_DISPATCHED, workflows.LOCK_WORKFLOWS_OF_RUNS, workflows.CLOSE_CLOSED_NODES,
    workflows.RELEASE_CLOSED_CHILDREN])
def test_a_day_statement_names_no_other_table_of_runs(statement):
    on_day = day_tables.on_day(statement, "task_runs_d20261207")
    assert "task_runs_d20261207" in on_day
    assert " task_runs " not in on_day.replace("\n", " ")
    assert "task_runs_default" not in on_day and "task_runs_legacy" not in on_day


def chain(made_ms: int) -> NewWorkflow:
    """a -> b, made at `made_ms` (its tasks' ids, so its runs, in that day)."""
    wf = ids.new_task_id(made_ms)
    return NewWorkflow(id=wf, name="chain", tenant="default", nodes=(
        NewNode("a", new_task(name="a", max_retries=0, day_of=wf)),
        NewNode("b", new_task(name="b", day_of=wf), (Dependency("a"),))))


@pytest.mark.parametrize("days_back", [(0,), (3,), (0, 3)])
async def test_workflow_batches_release_on_every_day(store, days_back):
    # Days of their own (today's named, an older one through the parent), and a batch
    # of two days (through the parent): the lock, the outcome and the release agree.
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    made = []
    for back in days_back:
        created, roots = await store.create_workflow(
            chain(now_ms - back * ids.MS_PER_DAY), actor=SYSTEM, now=datetime.now(UTC))
        made.append((created, roots))
    roots = [r for _c, rs in made for r in rs]
    await store.start_runs([r.run_id for r in roots], worker_id="w", now=datetime.now(UTC),
                           lease_until=datetime.now(UTC) + DAY)
    written = await store.record_outcomes(Outcomes(
        succeeded=[Succeeded(r.run_id, Fence("w"), "1", datetime.now(UTC)) for r in roots],
        workflow=True))
    assert written.runs == {r.run_id for r in roots}
    children = {created.task_ids["b"] for created, _roots in made}
    assert {r.task_id for r in written.released.runs} == children
    for child in children:
        task, task_runs = await store.get_task(child)
        assert task.status is TaskStatus.QUEUED and len(task_runs) == 1


async def test_the_scans_over_every_day_run_on_a_generic_plan_from_their_first_use(
        store, pg_dsn):
    # The reaper's and the reconciler's scans must read every day's partition; planned
    # afresh, their plan costs more than their run (StoreBase.over_every_day).
    picked = history(pg_dsn, per_day=3)
    queued = [new_task(name=f"q{i}") for i in range(3)]
    await store.create_tasks(queued)
    later = datetime.now(UTC) + timedelta(minutes=5)
    for _ in range(2):
        expired = await store.expired_runs(now=later, limit=1000)
        assert {run for _task, run in picked.values()} <= {r.run_id for r in expired}
        pending = await store.undispatched_runs(created_before=later, limit=1000)
        assert {t.run_id for t in queued} <= {p.run_id for p in pending}
    # The pool lends its most recently returned connection: the one both scans used.
    async with store._pool.connection() as conn:
        cur = await conn.execute("SELECT statement, generic_plans, custom_plans"
                                 " FROM pg_prepared_statements")
        plans = await cur.fetchall()
    for marker in ("r.status = 'running' AND r.lease_expires_at <",
                   "r.status = 'queued' AND r.dispatched_at IS NULL"):
        [(_statement, generic, custom)] = [p for p in plans if marker in p[0]]
        assert (generic, custom) == (2, 0), marker
