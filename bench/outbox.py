"""The outbox relay: rows relayed per second, and the delay from an application's commit
to its task's creation in distasks.

Two databases are made for the run: distasks' own and an application's, where the
outbox schema is installed (`distasks.store.outbox.install`, as `distasks outbox
install`). --daemons `distasks serve` processes relay the application's outbox (one
`[[outbox]]` source, `batch` --batch); the tasks go to queue `outbox-bench`, which no
daemon serves, so that only the relay and the create path are measured.

- Throughput: --rows rows committed by one transaction (`distasks.enqueue` for each),
  then the time from that commit until every row's task exists and the outbox is empty:
  rows relayed per second.
- Latency: --samples transactions of one row each, --gap seconds apart; for each, the
  commit's time (read before and after the commit on this machine, the middle taken) to
  its task's `created_at` (set by PostgreSQL on the same machine): p50, p95, max.

    .venv/bin/python bench/outbox.py
    .venv/bin/python bench/outbox.py --daemons 2 --rows 20000 --batch 500

Environment: DISTASKS_PG_ADMIN_DSN and REDIS_URL, as bench/throughput.py. Both databases
are dropped at the end (and the run's Redis keys).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import psycopg
import trio
from throughput import DEFAULT_ADMIN_DSN, DEFAULT_REDIS_URL, provisioned

from distasks.store import outbox as outbox_store
from distasks.testing.daemon import DaemonProcess, daemon_env, running

# Longest wait for the throughput phase's rows to be relayed.
RELAY_TIMEOUT_S = 300.0
# How often the bench looks whether the rows are relayed.
CHECK_S = 0.01


def count(dsn: str, sql: str, *params: object) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
        return int(row[0]) if row else 0


async def wait_relayed(app_dsn: str, dsn: str, expected: int) -> None:
    """Until `expected` outbox tasks exist and the outbox is empty; the caller bounds it."""
    while True:
        tasks = await trio.to_thread.run_sync(lambda: count(
            dsn, "SELECT count(*) FROM tasks WHERE queue_name = 'outbox-bench'"))
        if tasks >= expected:
            left = await trio.to_thread.run_sync(lambda: count(
                app_dsn, "SELECT count(*) FROM distasks.outbox"))
            if left == 0:
                return
        await trio.sleep(CHECK_S)


def enqueue_many(app_dsn: str, rows: int) -> float:
    """Commit `rows` rows in one transaction; the time of the commit (this clock)."""
    with psycopg.connect(app_dsn) as conn:
        conn.execute("SELECT distasks.enqueue(name => 'bench-' || i, handler => 'noop', "
                     "queue_name => 'outbox-bench', payload => jsonb_build_object('i', i)) "
                     "FROM generate_series(1, %s) AS i", (rows,))
        before = time.time()
        conn.commit()
        return (before + time.time()) / 2


def enqueue_one(app_dsn: str, i: int) -> tuple[str, float]:
    """One row in its own transaction: (row id, commit time on this clock)."""
    with psycopg.connect(app_dsn) as conn:
        row = conn.execute("SELECT distasks.enqueue(name => %s, handler => 'noop', "
                           "queue_name => 'outbox-bench')", (f"sample-{i}",)).fetchone()
        assert row is not None
        before = time.time()
        conn.commit()
        return str(row[0]), (before + time.time()) / 2


async def created_at(dsn: str, row_id: str) -> float:
    """When the row's task was created (Unix seconds), waiting until it exists."""
    while True:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT extract(epoch FROM created_at)::float8 FROM tasks "
                               "WHERE dedup_key = %s", (f"outbox:bench:{row_id}",)).fetchone()
        if row is not None:
            return float(row[0])
        await trio.sleep(CHECK_S)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(args: argparse.Namespace, dsn: str, app_dsn: str, prefix: str,
                redis_url: str) -> None:
    await outbox_store.install(app_dsn)
    workdir = Path(tempfile.mkdtemp(prefix="outbox-bench-"))
    config = workdir / "outbox.toml"
    config.write_text(f'[[outbox]]\nname = "bench"\ndatabase_url = "{app_dsn}"\n'
                      f"batch = {args.batch}\npoll_interval_s = {args.poll}\n")
    async with AsyncExitStack() as stack:
        for n in range(args.daemons):
            env = daemon_env(database_url=dsn, redis_url=redis_url, prefix=prefix,
                             settings={"DISTASKS_LOG_LEVEL": "WARNING"})
            d = DaemonProcess(f"daemon-{n}", env, workdir / f"daemon-{n}.log", config=config)
            await stack.enter_async_context(running(d))
        committed = await trio.to_thread.run_sync(enqueue_many, app_dsn, args.rows)
        with trio.fail_after(RELAY_TIMEOUT_S):
            await wait_relayed(app_dsn, dsn, args.rows)
        elapsed = time.time() - committed
        print(f"throughput: {args.rows} rows in one commit relayed in {elapsed:.2f} s: "
              f"{args.rows / elapsed:,.0f} rows/s")
        delays = []
        for i in range(args.samples):
            row_id, at = await trio.to_thread.run_sync(enqueue_one, app_dsn, i)
            with trio.fail_after(30):
                made = await created_at(dsn, row_id)
            delays.append((made - at) * 1000)
            await trio.sleep(args.gap)
        print(f"commit -> task created, {args.samples} single-row commits {args.gap * 1000:g} ms "
              f"apart: p50 {pct(delays, 0.5):.1f} ms, p95 {pct(delays, 0.95):.1f} ms, "
              f"max {max(delays):.1f} ms, mean {statistics.fmean(delays):.1f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--daemons", type=int, default=1)
    p.add_argument("--rows", type=int, default=10_000, help="rows of the throughput phase")
    p.add_argument("--batch", type=int, default=100, help="the source's batch")
    p.add_argument("--poll", type=float, default=5.0, help="the source's poll_interval_s")
    p.add_argument("--samples", type=int, default=200, help="rows of the latency phase")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between latency rows")
    args = p.parse_args()
    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    print(f"configuration: {args.daemons} daemon(s), outbox batch {args.batch}, "
          f"poll_interval_s {args.poll}, {args.rows} rows, {args.samples} samples; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    with ExitStack() as stack:
        ledger = stack.enter_context(provisioned(admin, redis_url))
        app = stack.enter_context(provisioned(admin, redis_url))
        trio.run(bench, args, ledger.dsn, app.dsn, ledger.name, redis_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
