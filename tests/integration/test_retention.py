"""The cleaner (distasks.daemon.cleaner) against real PostgreSQL and Redis: old finished
tasks go in batches with their runs and their DLQ entries, nothing unfinished or kept is
touched, creates go on meanwhile, one daemon cleans at a time, the archive holds every
row removed (DESIGN §5.10)."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import trio
import trio.lowlevel

from distasks.config import Config, QueueLimitsConfig, RetentionConfig, TenantConfig
from distasks.daemon import cleaner
from distasks.daemon.metrics import Metrics
from distasks.store.retention import Leadership

from .helpers import new_task

DAY = timedelta(days=1)
LEAD = Leadership(holder="daemon-a", lease_s=30.0)


def seed(dsn: str, n: int, *, status: str, age: timedelta, queue: str = "q",
         tenant: str = "default", run_status: str | None = None) -> list[str]:
    """`n` tasks of `status` that finished `age` ago, each with one run; their ids."""
    run_status = run_status or {"completed": "succeeded", "failed": "failed",
                                "cancelled": "cancelled", "queued": "queued"}[status]
    at = datetime.now(UTC) - age
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Made that day: time-ordered ids of that day, runs in that day's partition.
        conn.execute("SELECT distasks_ensure_partitions(%(day)s, %(day)s)", {"day": at.date()})
        rows = conn.execute(
            "INSERT INTO tasks (id, name, handler, type, queue_name, payload, max_retries,"
            " status, created_at, updated_at, finished_at, tenant)"
            " SELECT distasks_task_id(%(at)s), 'old', 'demo', 'immediate', %(queue)s,"
            " '{\"n\": 1}', 3, %(status)s, %(at)s, %(at)s,"
            " CASE WHEN %(status)s = 'queued' THEN NULL ELSE %(at)s::timestamptz END,"
            " %(tenant)s FROM generate_series(1, %(n)s) RETURNING id",
            {"queue": queue, "status": status, "at": at, "n": n, "tenant": tenant}).fetchall()
        ids = [r[0] for r in rows]
        conn.execute(
            "INSERT INTO task_runs (id, task_id, bucket, attempt, status, created_at, finished_at)"
            " SELECT distasks_run_id(id), id, distasks_bucket(id), 1, %s, %s, %s"
            " FROM unnest(%s::uuid[]) AS id",
            (run_status, at, at, ids))
    return [str(i) for i in ids]


def counts(dsn: str, ids: list[str]) -> tuple[int, int]:
    """(tasks, runs) of `ids` still in PostgreSQL."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM tasks WHERE id = ANY(%(ids)s::uuid[])),"
                           " (SELECT count(*) FROM task_runs WHERE task_id = ANY(%(ids)s::uuid[]))",
                           {"ids": ids}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def settings(**retention: Any) -> cleaner.Settings:
    queues = retention.pop("queues", {})
    tenants = retention.pop("tenants", {})
    return cleaner.Settings.from_config(Config(retention=RetentionConfig(**retention),
                                               queues=queues, tenants=tenants))


async def test_old_finished_tasks_go_in_batches_with_their_runs(store, broker, pg_dsn):
    old_done = seed(pg_dsn, 120, status="completed", age=8 * DAY)
    old_cancelled = seed(pg_dsn, 30, status="cancelled", age=8 * DAY)
    young_done = seed(pg_dsn, 20, status="completed", age=6 * DAY)
    old_failed = seed(pg_dsn, 20, status="failed", age=20 * DAY)  # failed: 30 days
    unfinished = seed(pg_dsn, 10, status="queued", age=60 * DAY)
    # A task whose state says finished but whose run still runs is not removed either.
    odd = seed(pg_dsn, 5, status="completed", age=60 * DAY, run_status="running")
    metrics = Metrics()
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, settings(batch=50, pause_s=0.0),
                                           now_s=time.time(), lead=LEAD, metrics=metrics)
    assert removed is not None
    assert (removed.tasks["completed"], removed.tasks["cancelled"], removed.runs) == (120, 30, 150)
    assert removed.batches >= 120 // 50 + 1  # in batches of at most 50
    assert counts(pg_dsn, old_done + old_cancelled) == (0, 0)
    for kept in (young_done, old_failed, unfinished, odd):
        assert counts(pg_dsn, kept) == (len(kept), len(kept))
    assert metrics.retention_removed.labels("completed")._value.get() == 120
    assert metrics.retention_removed.labels("runs")._value.get() == 150


async def test_zero_keeps_forever_and_queues_and_tenants_override(store, broker, pg_dsn):
    default_q = seed(pg_dsn, 10, status="completed", age=3 * DAY)
    short_q = seed(pg_dsn, 10, status="completed", age=3 * DAY, queue="short")
    forever_q = seed(pg_dsn, 10, status="completed", age=300 * DAY, queue="forever")
    acme = seed(pg_dsn, 10, status="completed", age=3 * DAY, queue="acme/q", tenant="acme")
    acme_kept = seed(pg_dsn, 10, status="completed", age=3 * DAY, queue="acme/keep",
                     tenant="acme")
    failed_forever = seed(pg_dsn, 10, status="failed", age=3000 * DAY)
    s = settings(failed_days=0.0,
                 queues={"short": QueueLimitsConfig(retention_completed_days=1.0),
                         "forever": QueueLimitsConfig(retention_completed_days=0.0),
                         "acme/keep": QueueLimitsConfig(retention_completed_days=5.0)},
                 tenants={"acme": TenantConfig(retention_completed_days=2.0)})
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, s, now_s=time.time(), lead=LEAD)
    assert removed is not None and removed.tasks["completed"] == 20
    assert counts(pg_dsn, short_q + acme) == (0, 0)
    for kept in (default_q, forever_q, acme_kept, failed_forever):
        assert counts(pg_dsn, kept)[0] == 10


async def test_removed_dead_tasks_leave_the_dlq_index(store, broker, pg_dsn):
    old = seed(pg_dsn, 15, status="failed", age=40 * DAY)
    young = seed(pg_dsn, 5, status="failed", age=10 * DAY)
    dlq = broker.keys("q").dlq
    await broker.raw("rpush", dlq, *old, *young)
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, settings(batch=4, pause_s=0.0),
                                           now_s=time.time(), lead=LEAD)
    assert removed is not None and (removed.tasks["failed"], removed.dlq) == (15, 15)
    left = [x.decode() if isinstance(x, bytes) else x
            for x in await broker.raw("lrange", dlq, 0, -1)]
    assert left == young


async def test_two_daemons_never_clean_at_once(store, broker, pg_dsn):
    seed(pg_dsn, 300, status="completed", age=8 * DAY)
    s = settings(batch=20, pause_s=0.01)
    a = Leadership(holder="daemon-a", lease_s=30.0)
    b = Leadership(holder="daemon-b", lease_s=30.0)
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    def watching(holder: str) -> Any:
        async def archive(kind: str, docs: Any) -> None:
            # Called inside each batch's transaction: two at once would overlap here.
            inside.append(holder)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            await trio.sleep(0.005)
            inside.remove(holder)
        return archive

    results: dict[str, Any] = {}

    async def clean(lead: Leadership) -> None:
        results[lead.holder] = await cleaner.clean_once(
            store, broker, s, now_s=time.time(), lead=lead,
            archive=watching(lead.holder))

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(clean, a)
            n.start_soon(clean, b)
    assert overlaps == []
    led = [h for h, r in results.items() if r is not None and r.batches]
    assert len(led) == 1, results
    assert results[led[0]].tasks["completed"] == 300
    # The other takes over once the leader gives the lead back.
    other = b if led[0] == a.holder else a
    seed(pg_dsn, 5, status="completed", age=8 * DAY)
    assert await cleaner.clean_once(store, broker, s, now_s=time.time(), lead=other) is None
    await store.release_lead(led[0])
    again = await cleaner.clean_once(store, broker, s, now_s=time.time(), lead=other)
    assert again is not None and again.tasks["completed"] == 5


async def test_creates_go_on_while_the_cleaner_removes(store, broker, pg_dsn):
    old = seed(pg_dsn, 2000, status="completed", age=8 * DAY)
    s = settings(batch=200, pause_s=0.02)
    slowest = 0.0
    created: list[uuid.UUID] = []
    passes: list[cleaner.Removed | None] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            async def cleaning() -> None:
                passes.append(await cleaner.clean_once(store, broker, s, now_s=time.time(),
                                                       lead=LEAD))
                n.cancel_scope.cancel()

            n.start_soon(cleaning)
            while True:
                started = trio.current_time()
                results = await store.create_tasks([new_task(queue="q") for _ in range(10)])
                slowest = max(slowest, trio.current_time() - started)
                created += [r.task_id for r in results]
                await trio.lowlevel.checkpoint()
    assert counts(pg_dsn, old) == (0, 0)
    # The old tasks went in batches, their runs with their day's partition, dropped
    # while the creates went on.
    assert passes[0] is not None and passes[0].partitions == 1
    ids = [str(i) for i in created]
    assert len(ids) > 0 and counts(pg_dsn, ids) == (len(ids), len(ids))
    assert slowest < 0.5, slowest


async def test_the_archive_holds_every_removed_row(store, broker, pg_dsn, tmp_path: Path):
    old = seed(pg_dsn, 25, status="completed", age=8 * DAY)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (at, actor, action, detail) SELECT"
                     " now() - interval '400 days', 'test', 'old', '{}'"
                     " FROM generate_series(1, 7)")
        conn.execute("INSERT INTO audit_log (at, actor, action, detail)"
                     " VALUES (now(), 'test', 'new', '{}')")
    s = settings(batch=10, pause_s=0.0, archive_dir=str(tmp_path / "archive"))
    archive = cleaner.ArchiveDir(s.archive_dir, LEAD.holder)
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, s, now_s=time.time(), lead=LEAD,
                                           archive=archive)
    assert removed is not None and (removed.tasks["completed"], removed.audit) == (25, 7)
    lines = []
    for path in sorted((tmp_path / "archive").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            lines += [json.loads(line) for line in f]
    tasks = [x for x in lines if x["table"] == "tasks"]
    assert sorted(x["row"]["id"] for x in tasks) == sorted(old)
    assert all(len(x["runs"]) == 1 and x["runs"][0]["status"] == "succeeded" for x in tasks)
    assert all(x["row"]["payload"] == {"n": 1} for x in tasks)
    audit = [x for x in lines if x["table"] == "audit_log"]
    assert len(audit) == 7 and {x["row"]["action"] for x in audit} == {"old"}
    assert not list((tmp_path / "archive").glob("*.partial"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    assert row is not None and row[0] == 1


async def test_a_failing_archive_removes_nothing(store, broker, pg_dsn):
    old = seed(pg_dsn, 5, status="completed", age=8 * DAY)

    async def broken(kind: str, docs: Any) -> None:
        raise OSError("disk full")

    with trio.fail_after(30):
        try:
            await cleaner.clean_once(store, broker, settings(pause_s=0.0), now_s=time.time(),
                                     lead=LEAD, archive=broken)
        except OSError:
            pass
        else:
            raise AssertionError("the archive's failure must stop the pass")
    assert counts(pg_dsn, old) == (5, 5)


def seed_workflow(dsn: str, *, state: str, age: timedelta, nodes: list[str]) -> tuple[str, list[str]]:
    """A workflow in `state`, finished `age` ago (unless running), whose nodes have the
    task states `nodes` (one run each unless pending); (its id, its node ids)."""
    at = datetime.now(UTC) - age
    wf = str(uuid.uuid4())
    ids = []
    runs = {"completed": "succeeded", "failed": "failed", "cancelled": "cancelled",
            "skipped": None, "pending": None, "queued": "queued"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO workflows (id, name, state, open_nodes, created_at, updated_at,"
                     " finished_at) VALUES (%s, 'wf', %s, %s, %s, %s, %s)",
                     (wf, state, sum(n in ("pending", "queued") for n in nodes), at, at,
                      None if state == "running" else at))
        for i, status in enumerate(nodes):
            task = str(uuid.uuid4())
            final = status not in ("pending", "queued")
            conn.execute(
                "INSERT INTO tasks (id, name, handler, type, queue_name, payload, max_retries,"
                " status, created_at, updated_at, finished_at, workflow_id, workflow_key)"
                " VALUES (%s, 'node', 'demo', 'immediate', 'q', '{}', 3, %s, %s, %s, %s, %s, %s)",
                (task, status, at, at, at if final else None, wf, f"n{i}"))
            if runs[status]:
                # Random (version 4) ids, as before partitioning: the legacy partition.
                conn.execute("INSERT INTO task_runs (id, task_id, bucket, attempt, status,"
                             " finished_at) VALUES (%s, %s, 0, 1, %s, %s)",
                             (str(uuid.uuid4()), task, runs[status], at if final else None))
            ids.append(task)
    return wf, ids


async def test_a_workflows_tasks_go_only_with_the_whole_finished_workflow(store, broker,
                                                                          pg_dsn, tmp_path):
    done_wf, done_nodes = seed_workflow(pg_dsn, state="succeeded", age=8 * DAY,
                                        nodes=["completed", "completed", "skipped"])
    young_wf, young_nodes = seed_workflow(pg_dsn, state="succeeded", age=6 * DAY,
                                          nodes=["completed"])
    # Still running: its old finished node is an input of the pending one.
    running_wf, running_nodes = seed_workflow(pg_dsn, state="running", age=60 * DAY,
                                              nodes=["completed", "pending"])
    failed_wf, failed_nodes = seed_workflow(pg_dsn, state="failed", age=40 * DAY,
                                            nodes=["completed", "failed"])
    await broker.raw("rpush", broker.keys("q").dlq, failed_nodes[1])
    archive = cleaner.ArchiveDir(str(tmp_path / "archive"), LEAD.holder)
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, settings(batch=10, pause_s=0.0),
                                           now_s=time.time(), lead=LEAD, archive=archive)
    assert removed is not None
    assert (removed.workflows, removed.workflow_tasks, removed.dlq) == (2, 5, 1)
    assert sum(removed.tasks.values()) == 0  # no node went on its own
    assert counts(pg_dsn, done_nodes + failed_nodes)[0] == 0
    assert counts(pg_dsn, young_nodes)[0] == 1
    assert counts(pg_dsn, running_nodes)[0] == 2
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        left = {str(r[0]) for r in conn.execute("SELECT id FROM workflows").fetchall()}
    assert left == {young_wf, running_wf}
    assert await broker.raw("llen", broker.keys("q").dlq) == 0
    lines = []
    for path in (tmp_path / "archive").glob("workflows-*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            lines += [json.loads(line) for line in f]
    assert sorted(x["row"]["id"] for x in lines if x["table"] == "workflows") == sorted(
        [done_wf, failed_wf])
    assert len([x for x in lines if x["table"] == "tasks"]) == 5
