"""Partitioned history (migration 0015): the hot-path and list statements read one day's
partition (EXPLAIN ANALYZE says which partitions ran), partitions are made ahead, and
the cleaner drops old days whole, never a day with a task still kept."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import trio

from distasks.config import Config, RetentionConfig
from distasks.daemon import cleaner, partitioner
from distasks.domain import ids
from distasks.store import audit, dispatch, runs, tasks
from distasks.store.partitions import day_id_range
from distasks.store.retention import Leadership

from .helpers import new_task

DAY = timedelta(days=1)
LEAD = Leadership(holder="daemon-a", lease_s=30.0)
DAYS_BACK = 4


def history(dsn: str, per_day: int = 200) -> dict[int, tuple[uuid.UUID, uuid.UUID]]:
    """Tasks made on each of the last DAYS_BACK days and today, one running run each;
    (a task id, its run id) per bucket."""
    picked = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        today = datetime.now(UTC).date()
        conn.execute("SELECT distasks_ensure_partitions(%s, %s)",
                     (today - DAYS_BACK * DAY, today))
        for back in range(DAYS_BACK + 1):
            at = datetime.now(UTC) - back * DAY
            conn.execute(
                "WITH t AS (INSERT INTO tasks (id, name, handler, type, queue_name, payload,"
                " max_retries, status, created_at, updated_at)"
                " SELECT distasks_task_id(%(at)s), 'h', 'demo', 'immediate', 'q', '{}', 3,"
                " 'queued', %(at)s, %(at)s FROM generate_series(1, %(n)s) RETURNING id)"
                " INSERT INTO task_runs (id, task_id, bucket, attempt, status, worker_id,"
                " started_at, lease_expires_at)"
                " SELECT distasks_run_id(id), id, distasks_bucket(id), 1, 'running', 'w',"
                " %(at)s, now() + interval '1 minute' FROM t",
                {"at": at, "n": per_day})
            bucket = int(at.timestamp() * 1000) // ids.MS_PER_DAY
            row = conn.execute("SELECT task_id, id FROM task_runs WHERE bucket = %s LIMIT 1",
                               (bucket,)).fetchone()
            assert row is not None
            picked[bucket] = (row[0], row[1])
        conn.execute("ANALYZE")
    return picked


def partitions_run(conn: psycopg.Connection[Any], sql: str, params: Any, table: str) -> set[str]:
    """The partitions of `table` that EXPLAIN ANALYZE of `sql` scanned at least once (in
    a transaction rolled back: an UPDATE changes nothing)."""
    scanned: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        name = node.get("Relation Name", "")
        if name.startswith(f"{table}_") and node.get("Actual Loops", 0) > 0:
            scanned.add(name)
        for child in node.get("Plans", []):
            walk(child)

    with conn.transaction(force_rollback=True):
        row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    walk(row[0][0]["Plan"])
    return scanned


def day_partition(table: str, bucket: int) -> str:
    return f"{table}_d{(date(1970, 1, 1) + timedelta(days=bucket)):%Y%m%d}"


async def test_lookups_by_run_or_task_read_one_days_partition(pg_dsn):
    picked = history(pg_dsn)
    now = datetime.now(UTC)
    with psycopg.connect(pg_dsn) as conn:
        for bucket, (task_id, run_id) in picked.items():
            only = {day_partition("task_runs", bucket)}
            statements = {
                "get runs": (tasks.GET_RUNS, {"id": task_id}),
                "cancel runs": (tasks.CANCEL_RUNS, {"id": task_id, "now": now}),
                "start": (runs.START_RUNS, {"run_ids": [run_id], "bucket": bucket,
                                            "worker_id": "w", "now": now,
                                            "lease_until": now, "max_parent_bytes": 1000}),
                "succeed": (runs.SUCCEED_RUNS, ([run_id], ["w"], [None], ["{}"], [now])),
                "fail": (runs.FAIL_RUNS, ([run_id], ["w"], [None], ["e"], [now])),
                "retry": (runs.RETRY_RUNS, ([run_id], ["w"], [None], ["e"], [now], [now],
                                            [ids.new_run_id(task_id)])),
                "extend leases": (runs.EXTEND_LEASES, {"run_ids": [run_id], "bucket": bucket,
                                                       "worker_id": "w",
                                                       "lease_until": now}),
                "run states": (runs.RUN_STATES, {"ids": [run_id], "bucket": bucket}),
                "mark dispatched": (dispatch.MARK_DISPATCHED, {"run_ids": [run_id],
                                                               "bucket": bucket,
                                                               "now": now}),
            }
            for what, (sql, params) in statements.items():
                assert partitions_run(conn, sql, params, "task_runs") == only, what


async def test_the_audit_list_since_a_day_reads_no_day_before(pg_dsn):
    today = datetime.now(UTC).date()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT distasks_ensure_partitions(%s, %s)", (today, today + 3 * DAY))
        conn.execute("INSERT INTO audit_log (at, actor, action) SELECT %s + g * interval '1 hour',"
                     " 'test', 'x' FROM generate_series(0, 71) g",
                     (datetime(today.year, today.month, today.day, tzinfo=UTC) + DAY,))
    since = datetime(today.year, today.month, today.day, tzinfo=UTC) + 3 * DAY
    with psycopg.connect(pg_dsn) as conn:
        scanned = partitions_run(conn, audit.AUDIT_ENTRIES, {
            "tenant": "default", "actor": None, "action": None, "queue": None,
            "since": since, "before": None, "limit": 50}, "audit_log")
    # The days before `since` are not read; the later ones (made ahead, empty) are.
    assert f"audit_log_d{today + 3 * DAY:%Y%m%d}" in scanned
    assert min(scanned) == f"audit_log_d{today + 3 * DAY:%Y%m%d}"
    assert "audit_log_legacy" not in scanned


async def test_every_daemon_makes_the_coming_days_ahead(store, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        before = {r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'task_runs_d%' AND relkind = 'r'").fetchall()}
    with trio.fail_after(30):
        made = await partitioner.ensure(store, now_s=time.time(), days_ahead=20)
        again = await partitioner.ensure(store, now_s=time.time(), days_ahead=20)
    today = datetime.now(UTC).date()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        after = {r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'task_runs_d%' AND relkind = 'r'").fetchall()}
    assert f"task_runs_d{today + 20 * DAY:%Y%m%d}" in after
    assert made == 3 * len(after - before) and again == 0
    # A task made now, its first run and a retry all land in today's partition.
    created = await store.create_tasks([new_task(queue="q")])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT tableoid::regclass::text FROM task_runs WHERE task_id = %s",
                           (created[0].task_id,)).fetchone()
    assert row is not None and row[0] == f"task_runs_d{today:%Y%m%d}"


def seed_day(dsn: str, back_days: int, statuses: list[str]) -> list[uuid.UUID]:
    """Tasks made and finished `back_days` ago in the given states, one run each."""
    at = datetime.now(UTC) - back_days * DAY
    out = []
    runs_of = {"completed": "succeeded", "failed": "failed", "queued": "queued"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT distasks_ensure_partitions(%(d)s, %(d)s)", {"d": at.date()})
        for status in statuses:
            row = conn.execute(
                "INSERT INTO tasks (id, name, handler, type, queue_name, payload, max_retries,"
                " status, created_at, updated_at, finished_at)"
                " VALUES (distasks_task_id(%(at)s), 'old', 'demo', 'immediate', 'q', '{}', 3,"
                " %(s)s, %(at)s, %(at)s, CASE WHEN %(s)s = 'queued' THEN NULL"
                " ELSE %(at)s::timestamptz END) RETURNING id", {"at": at, "s": status}).fetchone()
            assert row is not None
            conn.execute("INSERT INTO task_runs (id, task_id, bucket, attempt, status)"
                         " VALUES (distasks_run_id(%(t)s), %(t)s, distasks_bucket(%(t)s), 1, %(s)s)",
                         {"t": row[0], "s": runs_of[status]})
            out.append(row[0])
    return out


def partition_exists(dsn: str, back_days: int) -> bool:
    day = (datetime.now(UTC) - back_days * DAY).date()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                           (f"task_runs_d{day:%Y%m%d}",)).fetchone()
    return bool(row and row[0])


async def test_old_days_of_runs_are_dropped_whole_once_their_tasks_are_gone(store, broker,
                                                                            pg_dsn):
    gone_day = seed_day(pg_dsn, 10, ["completed"] * 40)  # all past 7 days: the day goes
    kept_day = seed_day(pg_dsn, 12, ["completed"] * 5 + ["failed"])  # failed: kept 30 days
    stuck_day = seed_day(pg_dsn, 14, ["completed", "queued"])  # one still queued
    s = cleaner.Settings.from_config(Config(retention=RetentionConfig(batch=100, pause_s=0.0)))
    assert s.runs_leave_by_partition
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, s, now_s=time.time(), lead=LEAD)
    assert removed is not None
    assert removed.tasks["completed"] == 40 + 5 + 1
    # The 40 runs of the first day were never deleted one by one: their table went.
    assert not partition_exists(pg_dsn, 10) and removed.partitions == 1
    assert partition_exists(pg_dsn, 12) and partition_exists(pg_dsn, 14)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        left = {r[0] for r in conn.execute("SELECT id FROM tasks WHERE id = ANY(%s)",
                                           (gone_day + kept_day + stuck_day,)).fetchall()}
        # What the API reads of a kept task is all there.
        runs_left = conn.execute("SELECT count(*) FROM task_runs WHERE task_id = ANY(%s)",
                                 (sorted(left),)).fetchone()
    assert left == {kept_day[-1], stuck_day[-1]}
    assert runs_left is not None and runs_left[0] == 2
    lo, hi = day_id_range((datetime.now(UTC) - 10 * DAY).date())
    assert all(lo <= t < hi for t in gone_day)


async def test_with_a_state_kept_forever_runs_go_with_their_tasks(store, broker, pg_dsn):
    done = seed_day(pg_dsn, 10, ["completed"] * 10 + ["failed"])
    s = cleaner.Settings.from_config(Config(retention=RetentionConfig(failed_days=0.0,
                                                                      pause_s=0.0)))
    assert not s.runs_leave_by_partition
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, s, now_s=time.time(), lead=LEAD)
    assert removed is not None and removed.tasks["completed"] == 10 and removed.partitions == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM task_runs WHERE task_id = ANY(%s)",
                           (done,)).fetchone()
    assert row is not None and row[0] == 1  # the failed task's, kept forever


async def test_audit_days_past_retention_are_dropped_and_archived(store, broker, pg_dsn,
                                                                 tmp_path):
    today = datetime.now(UTC).date()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT distasks_ensure_partitions(%s, %s)", (today, today + 2 * DAY))
        conn.execute("INSERT INTO audit_log (at, actor, action) SELECT %s, 'test', 'x'"
                     " FROM generate_series(1, 30)",
                     (datetime(today.year, today.month, today.day, 12, tzinfo=UTC) + DAY,))
    s = cleaner.Settings.from_config(Config(retention=RetentionConfig(
        audit_days=1.0, pause_s=0.0, archive_dir=str(tmp_path))))
    archive = cleaner.ArchiveDir(s.archive_dir, LEAD.holder)
    later = datetime(today.year, today.month, today.day, tzinfo=UTC) + 3 * DAY + timedelta(hours=1)
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, s, now_s=later.timestamp(), lead=LEAD,
                                           archive=archive)
    assert removed is not None and removed.audit == 30 and removed.partitions >= 1
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (f"audit_log_d{today + DAY:%Y%m%d}",)
                           ).fetchone()
    assert row is not None and row[0] is None
    assert len(list(tmp_path.glob("audit_log-*.jsonl.gz"))) == 1


async def test_a_day_without_a_partition_lands_in_the_default_one_and_moves_out(store, broker,
                                                                               pg_dsn):
    far = datetime.now(UTC).date() + 60 * DAY  # well past the days made ahead
    at = datetime(far.year, far.month, far.day, 6, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (at, actor, action) VALUES (%s, 'test', 'far')", (at,))
        where = conn.execute("SELECT tableoid::regclass::text FROM audit_log WHERE action = 'far'"
                             ).fetchone()
        assert where is not None and where[0] == "audit_log_default"
        conn.execute("SELECT distasks_ensure_partitions(%s, %s)", (far, far))
        where = conn.execute("SELECT tableoid::regclass::text FROM audit_log WHERE action = 'far'"
                             ).fetchone()
    assert where is not None and where[0] == f"audit_log_d{far:%Y%m%d}"


async def test_old_rows_of_the_default_partition_go_one_by_one(store, broker, pg_dsn):
    # A row of a day that never had a partition (a clock far ahead), then a pass more
    # than a year (audit_days) later.
    s = cleaner.Settings.from_config(Config(retention=RetentionConfig(pause_s=0.0)))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (at, actor, action) VALUES (now() + interval '90 days',"
                     " 'test', 'future')")
    with trio.fail_after(30):
        removed = await cleaner.clean_once(
            store, broker, s, now_s=(datetime.now(UTC) + 500 * DAY).timestamp(), lead=LEAD)
    assert removed is not None and removed.audit >= 1
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log_default").fetchone()
    assert row is not None and row[0] == 0


async def test_a_day_detached_by_a_drop_that_died_is_finished(store, broker, pg_dsn, tmp_path):
    today = datetime.now(UTC).date()
    day = today + 2 * DAY
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (at, actor, action) SELECT %s, 'test', 'x'"
                     " FROM generate_series(1, 3)",
                     (datetime(day.year, day.month, day.day, 1, tzinfo=UTC),))
        # The first transaction of a drop, and then the daemon died.
        conn.execute(f"ALTER TABLE audit_log DETACH PARTITION audit_log_d{day:%Y%m%d}")
    s = cleaner.Settings.from_config(Config(retention=RetentionConfig(
        pause_s=0.0, archive_dir=str(tmp_path))))
    with trio.fail_after(30):
        removed = await cleaner.clean_once(store, broker, s, now_s=time.time(), lead=LEAD,
                                           archive=cleaner.ArchiveDir(s.archive_dir, LEAD.holder))
    assert removed is not None and removed.partitions == 1 and removed.audit == 3
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (f"audit_log_d{day:%Y%m%d}",)).fetchone()
    assert row is not None and row[0] is None
    assert len(list(tmp_path.glob("audit_log-*.jsonl.gz"))) == 1


def test_tasks_is_vacuumed_by_a_count_of_dead_rows_not_a_fraction(pg_dsn):
    # PostgreSQL's default (20 % of the table dead) would vacuum a `tasks` of millions of
    # rows a million updates apart, while the hot path reads its recent pages and walks
    # their dead index entries (migration 0016).
    with psycopg.connect(pg_dsn) as conn:
        [(options,)] = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'tasks'::regclass").fetchall()
    assert {"autovacuum_vacuum_scale_factor=0",
            "autovacuum_vacuum_threshold=10000"} <= set(options or ())
