"""A queue with `max_running` drains at its limit, across several daemons.

--daemons `distasks serve` processes (each WORKER_CONCURRENCY --concurrency) work queue
`bench`, whose handler (`demo`, payload `sleep_seconds`) sleeps --sleep seconds per run.
For each limit in --limits ("none" = no limit), the queue's `max_running` is set with
`PATCH /api/v1/queues/bench`, --tasks tasks are created in batches, and once all are
completed the bench reads their runs from PostgreSQL: the drain rate ((n − 1) / (last
finished_at − first started_at)), the most runs whose [started_at, finished_at] overlap
(which must not pass the limit), and the rate the limit allows at most (limit / sleep).

    .venv/bin/python bench/queue_limits.py                       # limits 3, 10 and none
    .venv/bin/python bench/queue_limits.py --limits 5 --tasks 500 --sleep 0.02

Environment: DISTASKS_PG_ADMIN_DSN and REDIS_URL, as bench/throughput.py. Creates the
database `distasks_bench_<random>` and drops it at the end (its Redis keys too).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
import trio
from throughput import DEFAULT_ADMIN_DSN, DEFAULT_REDIS_URL, provisioned

from distasks.testing.daemon import DaemonProcess, daemon_env, running

# Longest wait for one round's tasks to complete.
DRAIN_TIMEOUT_S = 300.0
# Tasks per batch create request.
BATCH = 500


def max_overlap(runs: list[tuple[datetime, datetime]]) -> int:
    """Most [start, finish] intervals overlapping at one instant (a finish at the same
    instant as a start comes first)."""
    edges = sorted([(s, 1) for s, _ in runs] + [(f, -1) for _, f in runs])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


async def round_of(url: str, dsn: str, limit: int | None, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        r = await client.patch("/api/v1/queues/bench", json={"max_running": limit})
        r.raise_for_status()
        body = {"name": "limited", "queue_name": "bench",
                "payload": {"sleep_seconds": args.sleep}}
        ids: list[str] = []
        for start in range(0, args.tasks, BATCH):
            r = await client.post("/api/v1/tasks/batch", json={
                "tasks": [body] * min(BATCH, args.tasks - start)})
            r.raise_for_status()
            ids += [t["task_id"] for t in r.json()["tasks"]]
    with trio.fail_after(DRAIN_TIMEOUT_S), psycopg.connect(dsn) as conn:
        while True:
            [(left,)] = conn.execute("SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) "
                                     "AND status <> 'completed'", (ids,)).fetchall()
            conn.commit()
            if not left:
                break
            await trio.sleep(0.2)
        runs = conn.execute("SELECT started_at, finished_at FROM task_runs "
                            "WHERE task_id = ANY(%s::uuid[])", (ids,)).fetchall()
        [(workers,)] = conn.execute("SELECT count(DISTINCT worker_id) FROM task_runs "
                                    "WHERE task_id = ANY(%s::uuid[])", (ids,)).fetchall()
    first = min(s for s, _ in runs)
    last = max(f for _, f in runs)
    rate = (len(runs) - 1) / max((last - first).total_seconds(), 1e-9)
    allowed = f"{limit / args.sleep:7.1f}/s" if limit else "   none"
    print(f"  max_running {str(limit or 'none'):>5}: drained {len(runs)} runs at {rate:7.1f}"
          f"/s (limit/sleep {allowed}), most at once {max_overlap(runs):3d}, "
          f"on {workers} daemons")


async def main(args: argparse.Namespace) -> None:
    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    limits = [None if x == "none" else int(x) for x in args.limits]
    print(f"bench/queue_limits.py: {args.daemons} daemons x WORKER_CONCURRENCY "
          f"{args.concurrency}, {args.tasks} tasks per round, handler demo sleeping "
          f"{args.sleep:g} s; load average {os.getloadavg()[0]:.2f}")
    with provisioned(admin, redis_url) as res, tempfile.TemporaryDirectory() as out:
        async with AsyncExitStack() as stack:
            urls = []
            for i in range(args.daemons):
                env = daemon_env(database_url=res.dsn, redis_url=redis_url, prefix=res.name,
                                 settings={"QUEUE_NAMES": "bench",
                                           "WORKER_CONCURRENCY": str(args.concurrency),
                                           "DISTASKS_LOG_LEVEL": "WARNING",
                                           "DISTASKS_AUTH_ANONYMOUS": "loopback",
                                           "DISTASKS_LIMITS_PER_MINUTE": "0"})
                d = await stack.enter_async_context(running(DaemonProcess(
                    f"d{i}", env, Path(out) / f"d{i}.log")))
                urls.append(d.url)
            for limit in limits:
                await round_of(urls[0], res.dsn, limit, args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--daemons", type=int, default=3, help="daemons (3)")
    p.add_argument("--concurrency", type=int, default=8, help="executors per daemon (8)")
    p.add_argument("--tasks", type=int, default=1000, help="tasks per round (1000)")
    p.add_argument("--sleep", type=float, default=0.05, help="seconds per run (0.05)")
    p.add_argument("--limits", nargs="+", default=["3", "10", "none"],
                   help='max_running of each round, "none" for no limit (3 10 none)')
    trio.run(main, p.parse_args())
    sys.exit(0)
