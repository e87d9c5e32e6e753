"""The cost of the graph machinery: a 1 → 1,000 → 1 workflow against 1,002 independent
tasks of the same handler, on the same daemon, in the same run (issue 19).

One `distasks serve` in a database and under a Redis prefix of its own (both removed at
the end), with `distasks.testing.workflow_handlers` loaded. Each round runs both shapes
one after the other, alternating which goes first:

  tasks     1,002 `wf_step` tasks in two batch creates; time from the first request to
            the last run's finished_at in PostgreSQL
  workflow  one workflow: `start`, 1,000 `wf_step` parts that wait for it, `gather`
            (also `wf_step`) that waits for all of them; time from the submit to the
            workflow's finished_at

The figure is the median of the rounds and the ratio workflow / tasks (target ≤ 1.5).

Usage: .venv/bin/python bench/workflows.py [--rounds 3] [--width 1000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import trio
from psycopg import sql

from distasks.testing.daemon import DaemonProcess, running
from distasks.testing.daemon import daemon_env as own_daemon_env

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# How often PostgreSQL is asked whether a shape is done.
POLL_S = 0.05
# One shape may take this long before the bench gives up.
SHAPE_TIMEOUT_S = 300.0
# Tasks per batch create (the API's default http.max_batch is 1,000).
BATCH = 501
# Print when each level of a workflow was created, started and finished (--verbose).
VERBOSE = False


def dsn_for(admin: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(admin, dbname=dbname)


async def run_tasks(client: httpx.AsyncClient, dsn: str, count: int, tag: str) -> float:
    """`count` independent tasks; seconds from the first request to the last finish."""
    started = time.time()
    for first in range(0, count, BATCH):
        r = await client.post("/api/v1/tasks/batch", json={"tasks": [
            {"name": tag, "handler": "wf_step", "payload": {"value": i}}
            for i in range(first, min(count, first + BATCH))]})
        r.raise_for_status()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            done, last = conn.execute(
                "SELECT count(*), max(finished_at) FROM tasks WHERE name = %s"
                " AND status = 'completed'", (tag,)).fetchone() or (0, None)
            if done == count:
                assert isinstance(last, datetime)
                return last.timestamp() - started
            await trio.sleep(POLL_S)


async def run_workflow(client: httpx.AsyncClient, dsn: str, width: int, tag: str) -> float:
    """One 1 → width → 1 workflow; seconds from the submit to its finish."""
    tasks: list[dict[str, Any]] = [{"key": "start", "name": tag, "handler": "wf_step"}]
    tasks += [{"key": f"p{i}", "name": tag, "handler": "wf_step", "depends_on": ["start"],
               "payload": {"value": i}} for i in range(width)]
    tasks.append({"key": "gather", "name": tag, "handler": "wf_step",
                  "depends_on": [f"p{i}" for i in range(width)]})
    started = time.time()
    r = await client.post("/api/v1/workflows", json={"name": tag, "tasks": tasks})
    r.raise_for_status()
    wid = r.json()["workflow_id"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            state, finished = conn.execute(
                "SELECT state, finished_at FROM workflows WHERE id = %s", (wid,)).fetchone() \
                or (None, None)
            if state != "running":
                assert state == "succeeded", state
                assert isinstance(finished, datetime)
                if VERBOSE:
                    rows = conn.execute(
                        "SELECT t.workflow_key = 'start', t.workflow_key = 'gather',"
                        " min(r.created_at), max(r.started_at), max(r.finished_at)"
                        " FROM tasks t JOIN task_runs r ON r.task_id = t.id"
                        " WHERE t.workflow_id = %s GROUP BY 1, 2 ORDER BY 3", (wid,)).fetchall()
                    for _s, _g, created, started_at, done in rows:
                        print(f"   created +{created.timestamp() - started:.3f}"
                              f" started +{started_at.timestamp() - started:.3f}"
                              f" finished +{done.timestamp() - started:.3f}")
                return finished.timestamp() - started
            await trio.sleep(POLL_S)


async def main(args: argparse.Namespace) -> None:
    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    name = f"distasks_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = dsn_for(admin, name)
    env = own_daemon_env(database_url=dsn, redis_url=redis_url, prefix=name, settings={
        "DISTASKS_WORKER_HANDLERS": "distasks.testing.workflow_handlers",
        "WORKER_CONCURRENCY": str(args.concurrency), "DISTASKS_LIMITS_PER_MINUTE": "0"})
    times: dict[str, list[float]] = {"tasks": [], "workflow": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            daemon = DaemonProcess("bench", env, Path(tmp) / "daemon.log",
                                   config=REPO_ROOT / "config" / "distasks.toml", cwd=REPO_ROOT)
            async with running(daemon, ready_timeout_s=60) as d, httpx.AsyncClient(
                    base_url=d.url, timeout=60) as client:
                # A warm-up of each, not counted.
                await run_tasks(client, dsn, 50, "warm-t")
                await run_workflow(client, dsn, 50, "warm-w")
                for i in range(args.rounds):
                    order = ["tasks", "workflow"] if i % 2 == 0 else ["workflow", "tasks"]
                    for shape in order:
                        with trio.fail_after(SHAPE_TIMEOUT_S):
                            seconds = (await run_tasks(client, dsn, args.width + 2, f"t{i}")
                                       if shape == "tasks" else
                                       await run_workflow(client, dsn, args.width, f"w{i}"))
                        times[shape].append(seconds)
                        print(f"round {i + 1} {shape:8} {seconds:6.2f} s", flush=True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))
        client_r = redis.Redis.from_url(redis_url)
        keys = list(client_r.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client_r.delete(*keys)
    t, w = statistics.median(times["tasks"]), statistics.median(times["workflow"])
    print(f"\ncommit {args.commit}  python {platform.python_version()}  cpus {os.cpu_count()}  "
          f"load {os.getloadavg()[0]:.2f}  WORKER_CONCURRENCY {args.concurrency}  "
          f"rounds {args.rounds}")
    print(f"{args.width + 2} independent tasks: median {t:.2f} s ({(args.width + 2) / t:.0f} tasks/s)")
    print(f"1 → {args.width} → 1 workflow:   median {w:.2f} s ({(args.width + 2) / w:.0f} tasks/s)")
    print(f"workflow / tasks: {w / t:.2f}x (target ≤ 1.5x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--verbose", action="store_true")
    parsed = parser.parse_args()
    VERBOSE = parsed.verbose
    parsed.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                   capture_output=True, text=True).stdout.strip()
    trio.run(main, parsed)
    sys.exit(0)
