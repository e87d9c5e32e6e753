"""What the cleaner costs the present (DESIGN §5.10): create latency with and without a
cleaner removing old history, and how fast it removes.

    .venv/bin/python bench/retention.py                  # 100000 old tasks, 5 s per phase
    .venv/bin/python bench/retention.py --old 20000 --duration 3

It creates the database `distasks_bench_ret_<random>` on the server of
DISTASKS_PG_ADMIN_DSN, seeds `--old` completed tasks (one run each) finished ten days
ago, then measures single-task creates (Store.create_tasks, one task a statement, one at a
time) for `--duration` seconds twice: alone, then while the cleaner removes the old tasks
(`--batch` rows a transaction, `--pause` seconds between batches, the defaults of
[retention]); with `--runs rows` the runs are deleted with their tasks (as when some
retention keeps forever) instead of leaving with their day's partition. It prints
create p50/p99/max for both and the cleaner's rows per second, and drops the database
at the end.
"""

from __future__ import annotations

# isort: off
import distasks  # noqa: F401  (the bridge before psycopg: architecture §1)

# isort: on
import argparse
import dataclasses
import os
import statistics
import time
import uuid

import psycopg
import trio

from distasks import aio
from distasks.config import Config, DatabaseConfig, RetentionConfig
from distasks.config import load as load_config
from distasks.daemon import cleaner
from distasks.daemon.supervisor import migrate_only
from distasks.domain import ids
from distasks.domain.model import NewTask, TaskType
from distasks.store import Store
from distasks.store.retention import Leadership


def admin_dsn() -> str:
    return os.environ.get("DISTASKS_PG_ADMIN_DSN",
                          "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def dsn_for(name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn())
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def seed(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT distasks_ensure_partitions(current_date - 11, current_date - 9)")
        conn.execute(
            "WITH t AS (INSERT INTO tasks (id, name, handler, type, queue_name, payload,"
            " max_retries, status, created_at, updated_at, finished_at)"
            " SELECT distasks_task_id(now() - interval '10 days'), 'old', 'demo', 'immediate',"
            " 'default',"
            " '{\"n\": 1}', 3, 'completed', now() - interval '10 days',"
            " now() - interval '10 days', now() - interval '10 days'"
            " FROM generate_series(1, %s) RETURNING id)"
            " INSERT INTO task_runs (id, task_id, bucket, attempt, status, finished_at)"
            " SELECT distasks_run_id(id), id, distasks_bucket(id), 1, 'succeeded',"
            " now() - interval '10 days' FROM t", (n,))
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE task_runs")


def one_task() -> NewTask:
    task_id = ids.new_task_id()
    return NewTask(id=task_id, run_id=ids.new_run_id(task_id), name="new", handler="demo",
                   type=TaskType.IMMEDIATE, queue_name="default", priority=0, payload={},
                   payload_json="{}", dedup_key=None, max_retries=3, timeout_s=None,
                   run_at=None, concurrency_key=None)


async def creates(store: Store, duration_s: float) -> list[float]:
    latencies = []
    deadline = trio.current_time() + duration_s
    while trio.current_time() < deadline:
        started = time.perf_counter()
        await store.create_tasks([one_task()])
        latencies.append(time.perf_counter() - started)
    return latencies


def summary(name: str, lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100)
    return (f"{name:<22} {len(lat):>7} {q[49] * 1000:>8.2f} {q[98] * 1000:>8.2f}"
            f" {max(lat) * 1000:>8.2f}")


async def main(args: argparse.Namespace) -> None:
    async with aio.open_loop(), Store.open(dsn_for(args.db), min_size=2, max_size=4) as store:
        baseline = await creates(store, args.duration)
        # --runs rows: a failed task kept forever (failed_days = 0) makes the cleaner
        # delete runs with their tasks, as before partitioning; the old tasks here are
        # all completed, so only that choice differs.
        settings = cleaner.Settings.from_config(Config(retention=RetentionConfig(
            batch=args.batch, pause_s=args.pause, max_batches=1_000_000,
            failed_days=0.0 if args.runs == "rows" else 30.0)))
        removed = partitions = 0
        cleaning_s = 0.0
        async with trio.open_nursery() as nursery:
            async def clean() -> None:
                nonlocal removed, cleaning_s, partitions
                started = trio.current_time()
                got = await cleaner.clean_once(store, None, settings,  # type: ignore[arg-type]
                                               now_s=time.time(),
                                               lead=Leadership("bench", 600.0))
                cleaning_s = trio.current_time() - started
                removed = got.tasks["completed"] if got else 0
                partitions = got.partitions if got else 0
            nursery.start_soon(clean)
            during = await creates(store, args.duration)
        print(f"old tasks {args.old}, batch {args.batch}, pause {args.pause}s,"
              f" runs go {'with their tasks' if args.runs == 'rows' else 'with their day'}")
        print(f"{'phase':<22} {'creates':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        print(summary("alone", baseline))
        print(summary("while cleaning", during))
        print(f"cleaner: {removed} tasks (+ as many runs) in {cleaning_s:.1f}s,"
              f" {removed / cleaning_s:.0f} tasks/s; {partitions} day partitions dropped")


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--pause", type=float, default=0.05)
    p.add_argument("--runs", choices=("partition", "rows"), default="partition",
                   help="runs leave with their day's partition (default) or row by row"
                        " with their tasks")
    args = p.parse_args()
    args.db = f"distasks_bench_ret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{args.db}"')
    try:
        cfg = dataclasses.replace(load_config(None, env={}),
                                  database=DatabaseConfig(url=dsn_for(args.db)))
        trio.run(migrate_only, cfg)
        seed(dsn_for(args.db), args.old)
        trio.run(main, args)
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')


if __name__ == "__main__":
    run()
