"""Drain of a sync (plain `def`) handler: one daemon against two, CPU per job and jobs/s.

Every task runs `redis_write_sync` (bench/redis_write_handler.py: one INCR with the sync
redis client, on a handler thread). The tasks are created over HTTP (batch endpoint) by
a daemon that does not work their queue, into a queue paused meanwhile; then the worker
daemons start, and once all answer /readyz the queue is resumed, so that two daemons
start together. The rate is (N - 1) / (last - first `finished_at` in PostgreSQL); CPU per
job is the worker daemons' CPU (all threads, /proc/<pid>/stat) from the resume to the
last completion, divided by N. Each count in --daemons is measured --repeat times,
alternately, on a database of its own.

Usage: .venv/bin/python bench/sync_handlers.py [--tasks N] [--daemons 1,2] [--repeat R]
           [--concurrency C] [--handler NAME] [--set VAR=VALUE ...] [--py-spy FILE [--gil]]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import redis
import trio
from compare_taskiq import CREATE_BATCH, handler_env
from throughput import (
    BATCHES_IN_QUEUE,
    DEFAULT_ADMIN_DSN,
    DEFAULT_REDIS_URL,
    DRAIN_PROGRESS,
    HOST,
    Database,
    Resources,
    daemon_env,
    final_states,
    phase_timeout_s,
    process_cpu_s,
    provisioned,
    running_daemon,
    system_cpu_s,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
QUEUE = "sync"
IDLE_QUEUE = "sync-idle"
# How often PostgreSQL is asked whether the tasks are done.
POLL_INTERVAL_S = 0.1


async def drain(res: Resources, out_dir: Path, *, tasks: int, daemons: int, concurrency: int,
                handler: str, extra: dict[str, str],
                profile: Path | None = None, gil: bool = False) -> dict[str, Any]:
    db = Database(res.dsn)
    try:
        env = daemon_env(res, queues=IDLE_QUEUE, concurrency=1)
        env.update(handler_env(res))
        async with running_daemon("creator", env, out_dir, REPO_ROOT) as creator, \
                httpx.AsyncClient(base_url=creator.base_url, timeout=60,
                                  trust_env=False) as client:
            (await client.post(f"/api/v1/queues/{QUEUE}/pause")).raise_for_status()
            body = {"tasks": [{"name": "sync", "handler": handler, "queue_name": QUEUE}
                              for _ in range(CREATE_BATCH)]}
            for start in range(0, tasks, CREATE_BATCH):
                body["tasks"] = body["tasks"][:min(CREATE_BATCH, tasks - start)]
                (await client.post("/api/v1/tasks/batch", json=body)).raise_for_status()
            async with AsyncExitStack() as stack:
                workers = []
                for i in range(daemons):
                    env = daemon_env(res, queues=QUEUE, concurrency=concurrency)
                    env.update(handler_env(res))
                    env.update(extra)
                    workers.append(await stack.enter_async_context(
                        running_daemon(f"worker{i + 1}", env, out_dir, REPO_ROOT)))
                pids = [w.process.pid for w in workers]
                cpu_start = [process_cpu_s(pid) for pid in pids]
                machine_start = system_cpu_s()
                wall_start = time.perf_counter()
                spy = None
                if profile is not None:
                    spy = await trio.lowlevel.open_process(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                         "--threads", "-r", "200", "-f", "raw", *(["--gil"] if gil else []),
                         "-o", str(profile), "-p", str(pids[0])],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                (await client.post(f"/api/v1/queues/{QUEUE}/resume")).raise_for_status()
                done, first, last = 0, None, None
                with trio.move_on_after(phase_timeout_s(tasks)) as timeout:
                    while done < tasks:
                        await trio.sleep(POLL_INTERVAL_S)
                        [(done, first, last)] = await db.rows(DRAIN_PROGRESS, (QUEUE,))
                cpu_s = [process_cpu_s(pid) - s for pid, s in zip(pids, cpu_start, strict=True)]
                wall_s = time.perf_counter() - wall_start
                machine_end = system_cpu_s()
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                    with trio.move_on_after(30):
                        await spy.wait()
        result: dict[str, Any] = {
            "daemons": daemons, "completed": done, "timed_out": timeout.cancelled_caught,
            "daemon_cpu_s": [round(c, 2) for c in cpu_s],
            "cpu_ms_per_job": round(1000 * sum(cpu_s) / max(done, 1), 3),
            "machine_busy_pct": round(100 * (machine_end[0] - machine_start[0])
                                      / max(machine_end[1] - machine_start[1], 1e-9), 1),
            "daemon_pct_of_core": [round(100 * c / wall_s) for c in cpu_s],
            "states": await final_states(db, QUEUE),
            "runs_per_claim": await runs_per_claim(db),
            "counter": int(redis.Redis.from_url(res.redis_url).get(f"{res.name}:done") or 0),
        }
        if first is not None and last is not None and done > 1:
            result["jobs_per_s"] = round((done - 1) / (last - first).total_seconds(), 1)
        return result
    finally:
        db.close()


async def runs_per_claim(db: Database) -> float:
    """Mean runs marked running per claim: `started_at` is one value per claim."""
    [(runs, _, claims)] = await db.rows(BATCHES_IN_QUEUE, (QUEUE,))
    return round(runs / max(claims, 1), 1)


def show(r: dict[str, Any]) -> None:
    print(f"  {r['daemons']} daemon{'s' if r['daemons'] > 1 else ' '}  "
          f"{r.get('jobs_per_s', 0):>8.1f} jobs/s  {r['cpu_ms_per_job']:.3f} ms CPU/job  "
          f"(daemons {r['daemon_cpu_s']} s, {r['daemon_pct_of_core']} % of a core; machine "
          f"{r['machine_busy_pct']:.0f}% busy)  {r['runs_per_claim']} runs/claim  {r['completed']} done, counter {r['counter']}"
          f"{'  TIMED OUT' if r['timed_out'] else ''}")


async def main(args: argparse.Namespace) -> int:
    admin_dsn = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    extra = dict(s.split("=", 1) for s in args.set)
    counts = [int(n) for n in args.daemons.split(",")]
    print(f"sync handler drain  tasks={args.tasks} handler={args.handler} "
          f"concurrency={args.concurrency} per daemon  daemons={counts} repeat={args.repeat}  "
          f"extra={extra or '-'}  python {platform.python_version()}  cpus {os.cpu_count()}  "
          f"load {os.getloadavg()[0]:.2f}  host {HOST}")
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    ok = True
    with tempfile.TemporaryDirectory(prefix="distasks-sync-") as tmp:
        for _ in range(args.repeat):
            for n in counts:
                with provisioned(admin_dsn, redis_url) as res:
                    r = await drain(res, Path(tmp), tasks=args.tasks, daemons=n,
                                    concurrency=args.concurrency, handler=args.handler,
                                    extra=extra, profile=args.py_spy if n == 1 else None,
                                    gil=args.gil)
                show(r)
                results[n].append(r)
                ok = ok and r["completed"] == args.tasks == r["counter"] and not r["timed_out"]
    print("medians:")
    medians = {}
    for n, rs in results.items():
        medians[n] = statistics.median(r["cpu_ms_per_job"] for r in rs)
        rate = statistics.median(r.get("jobs_per_s", 0) for r in rs)
        print(f"  {n} daemon(s): {rate:.0f} jobs/s, {medians[n]:.3f} ms CPU/job")
    if 1 in medians and 2 in medians:
        print(f"  CPU per job, 1 daemon / 2 daemons: {medians[1] / medians[2]:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per drain (20000)")
    parser.add_argument("--daemons", default="1,2", help="daemon counts to compare (1,2)")
    parser.add_argument("--repeat", type=int, default=1, help="drains per count (1)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="WORKER_CONCURRENCY of each daemon (100)")
    parser.add_argument("--handler", default="redis_write_sync",
                        help="handler of every task (redis_write_sync)")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                        help="extra environment of the worker daemons, e.g. "
                             "DISTASKS_WORKER_SYNC_THREADS=32")
    parser.add_argument("--py-spy", type=Path, metavar="FILE",
                        help="record the one-daemon drain with py-spy (in .venv: pip install "
                             "py-spy) into FILE, collapsed stacks per thread")
    parser.add_argument("--gil", action="store_true",
                        help="with --py-spy: only samples of the thread holding the GIL")
    sys.exit(trio.run(main, parser.parse_args()))
