"""A queue with `max_running` drains at its limit, across several daemons; so does one
with `max_running_per_key` (per key) and one with `max_starts_per_second`.

--daemons `distasks serve` processes (each WORKER_CONCURRENCY --concurrency) work queue
`bench`, whose handler (`demo`, payload `sleep_seconds`) sleeps --sleep seconds per run.
For each limit in --limits ("none" = no limit), the queue's `max_running` is set with
`PATCH /api/v1/queues/bench`, --tasks tasks are created in batches, and once all are
completed the bench reads their runs from PostgreSQL: the drain rate ((n − 1) / (last
finished_at − first started_at)), the most runs whose [started_at, finished_at] overlap
(which must not pass the limit), and the rate the limit allows at most (limit / sleep).

For each of --per-key, a round with that `max_running_per_key` (no other limit): half
the tasks carry the concurrency key `busy`, the rest --keys other keys in turn. It prints
the drain rate, the most runs of one key at once (never above the limit), and when the
last run of a quiet key started, as a share of the drain (round robin keeps it well
before the busy key's end). For each of --rates, a round with that
`max_starts_per_second` (burst: one second's worth): the start rate over the drain and
the most starts within any one second (never above rate + burst).

    .venv/bin/python bench/queue_limits.py                       # limits 3, 10 and none
    .venv/bin/python bench/queue_limits.py --limits 5 --tasks 500 --sleep 0.02
    .venv/bin/python bench/queue_limits.py --limits --per-key 1 --rates 50 100

Environment: DISTASKS_PG_ADMIN_DSN and REDIS_URL, as bench/throughput.py. Creates the
database `distasks_bench_<random>` and drops it at the end (its Redis keys too).
"""

from __future__ import annotations

import argparse
import math
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


# Every limit a round sets (the others are lifted).
NO_LIMITS = {"max_running": None, "max_running_per_key": None, "max_starts_per_second": None,
             "burst": None}

Run = tuple[datetime, datetime, str | None]


async def drain(url: str, dsn: str, limits: dict[str, float | None],
                keys: list[str | None], args: argparse.Namespace) -> tuple[list[Run], int]:
    """Set the queue's `limits`, create --tasks tasks (task i with concurrency key
    keys[i % len(keys)]), wait for all to complete; their runs (started_at, finished_at,
    key) and on how many daemons they ran."""
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client:
        r = await client.patch("/api/v1/queues/bench", json={**NO_LIMITS, **limits})
        r.raise_for_status()
        body = {"name": "limited", "queue_name": "bench",
                "payload": {"sleep_seconds": args.sleep}}
        ids: list[str] = []
        for start in range(0, args.tasks, BATCH):
            batch = [{**body, **({"concurrency_key": keys[i % len(keys)]}
                                 if keys[i % len(keys)] else {})}
                     for i in range(start, min(start + BATCH, args.tasks))]
            r = await client.post("/api/v1/tasks/batch", json={"tasks": batch})
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
        runs = conn.execute("SELECT r.started_at, r.finished_at, t.concurrency_key "
                            "FROM task_runs r JOIN tasks t ON t.id = r.task_id "
                            "WHERE r.task_id = ANY(%s::uuid[])", (ids,)).fetchall()
        [(workers,)] = conn.execute("SELECT count(DISTINCT worker_id) FROM task_runs "
                                    "WHERE task_id = ANY(%s::uuid[])", (ids,)).fetchall()
    return runs, workers


def drain_rate(runs: list[Run]) -> float:
    first = min(s for s, _, _ in runs)
    last = max(f for _, f, _ in runs)
    return (len(runs) - 1) / max((last - first).total_seconds(), 1e-9)


async def round_of(url: str, dsn: str, limit: int | None, args: argparse.Namespace) -> None:
    runs, workers = await drain(url, dsn, {"max_running": limit}, [None], args)
    allowed = f"{limit / args.sleep:7.1f}/s" if limit else "   none"
    print(f"  max_running {str(limit or 'none'):>5}: drained {len(runs)} runs at "
          f"{drain_rate(runs):7.1f}/s (limit/sleep {allowed}), most at once "
          f"{max_overlap([(s, f) for s, f, _ in runs]):3d}, on {workers} daemons")


async def key_round(url: str, dsn: str, per_key: int, args: argparse.Namespace) -> None:
    keys: list[str | None] = []
    for i in range(args.keys):
        keys += ["busy", f"k{i}"]
    runs, workers = await drain(url, dsn, {"max_running_per_key": per_key}, keys, args)
    by_key: dict[str | None, list[tuple[datetime, datetime]]] = {}
    for s, f, k in runs:
        by_key.setdefault(k, []).append((s, f))
    first = min(s for s, _, _ in runs)
    span = (max(f for _, f, _ in runs) - first).total_seconds()
    quiet_done = max(s for k, rs in by_key.items() if k != "busy" for s, _ in rs)
    print(f"  max_running_per_key {per_key:>3}: drained {len(runs)} runs at "
          f"{drain_rate(runs):7.1f}/s, most at once {max_overlap([(s, f) for s, f, _ in runs]):3d}"
          f", most of one key at once {max(max_overlap(rs) for rs in by_key.values())}, "
          f"last quiet-key start at {(quiet_done - first).total_seconds() / span:4.0%} of the "
          f"drain ({len(by_key) - 1} quiet keys + busy), on {workers} daemons")


async def rate_round(url: str, dsn: str, per_s: float, args: argparse.Namespace) -> None:
    runs, workers = await drain(url, dsn, {"max_starts_per_second": per_s}, [None], args)
    starts = sorted(s for s, _, _ in runs)
    start_rate = (len(starts) - 1) / max((starts[-1] - starts[0]).total_seconds(), 1e-9)
    most, j = 0, 0
    for i, s in enumerate(starts):  # most starts within any one second
        while (s - starts[j]).total_seconds() >= 1:
            j += 1
        most = max(most, i - j + 1)
    print(f"  max_starts_per_second {per_s:g}: {len(runs)} runs started at {start_rate:7.1f}/s,"
          f" most in one second {most} (rate + burst {per_s + max(1, math.ceil(per_s)):g}),"
          f" on {workers} daemons")


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
            for per_key in args.per_key:
                await key_round(urls[0], res.dsn, per_key, args)
            for per_s in args.rates:
                await rate_round(urls[0], res.dsn, per_s, args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--daemons", type=int, default=3, help="daemons (3)")
    p.add_argument("--concurrency", type=int, default=8, help="executors per daemon (8)")
    p.add_argument("--tasks", type=int, default=1000, help="tasks per round (1000)")
    p.add_argument("--sleep", type=float, default=0.05, help="seconds per run (0.05)")
    p.add_argument("--limits", nargs="*", default=["3", "10", "none"],
                   help='max_running of each round, "none" for no limit (3 10 none)')
    p.add_argument("--per-key", nargs="*", type=int, default=[],
                   help="max_running_per_key of each key round (none)")
    p.add_argument("--keys", type=int, default=10,
                   help="quiet concurrency keys beside the busy one in a key round (10)")
    p.add_argument("--rates", nargs="*", type=float, default=[],
                   help="max_starts_per_second of each rate round (none)")
    trio.run(main, p.parse_args())
    sys.exit(0)
