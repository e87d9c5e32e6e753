"""Drain rate of one distasks daemon against one Taskiq worker, same box, same handler.

Both work off N tasks that were queued before the worker started, each doing one Redis
write (INCR of a counter), with the same number of tasks in flight at once:

  distasks  `distasks serve` with bench/redis_write_handler.py; the tasks were created
            over HTTP (batch endpoint) by another daemon that does not work the queue.
            Every attempt is recorded in PostgreSQL (run started, run succeeded).
  Taskiq    `taskiq worker taskiq_app:broker` (ListQueueBroker: a Redis list, BRPOP,
            nothing recorded, no acknowledgement); the tasks were sent by taskiq_app.py.

The rate is (N - 1) / (time of the last completion - time of the first), so start-up does
not count: for distasks from the runs' finished_at in PostgreSQL, for Taskiq from the
counter, read every 10 ms. Needs the `bench` extra (`make bench-compare` installs it).

Usage: .venv/bin/python bench/compare_taskiq.py [--tasks N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import trio
from throughput import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_REDIS_URL,
    HOST,
    Database,
    Resources,
    cpu_text,
    daemon_env,
    measure_drain,
    process_cpu_s,
    provisioned,
    running_daemon,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
QUEUE = "cmp"
IDLE_QUEUE = "cmp-idle"
# Tasks per batch request when creating the distasks side's backlog.
CREATE_BATCH = 500
# How often the Taskiq side's counter is read.
COUNTER_POLL_S = 0.01
# Longest either side may take to drain.
DRAIN_TIMEOUT_S = 300.0


async def distasks_drain(res: Resources, out_dir: Path, *, tasks: int,
                         concurrency: int) -> dict[str, Any]:
    db = Database(res.dsn)
    try:
        env = daemon_env(res, queues=IDLE_QUEUE, concurrency=1)
        env.update(handler_env(res))  # a create names a handler the daemon knows
        async with running_daemon("creator", env, out_dir, REPO_ROOT) as creator:
            async with httpx.AsyncClient(base_url=creator.base_url, timeout=60,
                                         trust_env=False) as client:
                body = {"tasks": [{"name": "cmp", "handler": "redis_write", "queue_name": QUEUE}
                                  for _ in range(CREATE_BATCH)]}
                for start in range(0, tasks, CREATE_BATCH):
                    body["tasks"] = body["tasks"][:min(CREATE_BATCH, tasks - start)]
                    response = await client.post("/api/v1/tasks/batch", json=body)
                    response.raise_for_status()
        env = daemon_env(res, queues=QUEUE, concurrency=concurrency)
        env.update(handler_env(res))
        async with running_daemon("worker", env, out_dir, REPO_ROOT) as worker:
            drain = await measure_drain(db, worker, queue=QUEUE, tasks=tasks)
        drain["counter"] = int(redis.Redis.from_url(res.redis_url).get(f"{res.name}:done") or 0)
        return drain
    finally:
        db.close()


def handler_env(res: Resources) -> dict[str, str]:
    return {"DISTASKS_WORKER_HANDLERS": "redis_write_handler",
            "PYTHONPATH": f"{BENCH_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "BENCH_PREFIX": res.name, "REDIS_URL": res.redis_url}


async def taskiq_drain(res: Resources, out_dir: Path, *, tasks: int,
                       concurrency: int) -> dict[str, Any]:
    cli = shutil.which("taskiq", path=str(Path(sys.executable).parent))
    if cli is None:
        raise SystemExit("taskiq is not installed: `make bench-compare` installs the bench extra")
    env = {**os.environ, "BENCH_PREFIX": res.name, "REDIS_URL": res.redis_url}
    await trio.run_process([sys.executable, "taskiq_app.py", str(tasks)], cwd=BENCH_DIR,
                           env=env)
    counter = redis.Redis.from_url(res.redis_url)
    key = f"{res.name}:done"
    with (out_dir / "taskiq.out").open("wb") as output:
        worker = await trio.lowlevel.open_process(
            [cli, "worker", "taskiq_app:broker", "--workers", "1",
             "--max-async-tasks", str(concurrency), "--no-configure-logging"],
            cwd=BENCH_DIR, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        first_s = last_s = None
        done = 0
        cpu_start = None
        with trio.move_on_after(DRAIN_TIMEOUT_S) as scope:
            while done < tasks:
                await trio.sleep(COUNTER_POLL_S)
                done = int(counter.get(key) or 0)
                now_s = time.perf_counter()
                if done and first_s is None:
                    first_s, first_done, cpu_start = now_s, done, tree_cpu_s(worker.pid)
                last_s = now_s
        cpu_s = tree_cpu_s(worker.pid) - (cpu_start or 0.0)
    finally:
        worker.terminate()
        with trio.move_on_after(10):
            await worker.wait()
        if worker.returncode is None:
            worker.kill()
    result: dict[str, Any] = {"completed": done, "expected": tasks,
                              "timed_out": scope.cancelled_caught, "counter": done}
    if first_s is not None and last_s is not None and last_s > first_s:
        result["tasks_per_s"] = round((done - first_done) / (last_s - first_s), 1)
        result["worker_pct_of_core"] = round(100 * cpu_s / (last_s - first_s), 1)
    return result


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its children: `taskiq worker` runs its worker in a child."""
    total = process_cpu_s(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent pid is the field after the state
            total += process_cpu_s(int(stat.parent.name))
    return total


async def main(tasks: int, concurrency: int) -> int:
    admin_dsn = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    print(f"distasks vs Taskiq drain  tasks={tasks} concurrency={concurrency}  "
          f"python {platform.python_version()}  cpus {os.cpu_count()}  "
          f"load {os.getloadavg()[0]:.2f}  host {HOST}")
    print("  handler: one Redis INCR per task; both start with every task already queued")
    with tempfile.TemporaryDirectory(prefix="distasks-cmp-") as tmp:
        out_dir = Path(tmp)
        with provisioned(admin_dsn, redis_url) as res:
            d = await distasks_drain(res, out_dir, tasks=tasks, concurrency=concurrency)
        print(f"distasks: {d.get('tasks_per_s')} tasks/s ({d['completed']}/{tasks} succeeded, "
              f"counter {d['counter']}, every attempt in PostgreSQL); {cpu_text(d['cpu'])}")
        with provisioned(admin_dsn, redis_url) as res:
            t = await taskiq_drain(res, out_dir, tasks=tasks, concurrency=concurrency)
        print(f"Taskiq:   {t.get('tasks_per_s')} tasks/s ({t['completed']}/{tasks} done, "
              f"nothing recorded); worker {t.get('worker_pct_of_core')}% of a core")
    ok = (d["completed"] == tasks == d["counter"] and t["completed"] == tasks)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per side (5000)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="tasks in flight at once on each side (100)")
    args = parser.parse_args()
    sys.exit(trio.run(main, args.tasks, args.concurrency))
