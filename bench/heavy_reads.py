"""Memory and /healthz latency of one daemon while clients list large payloads.

Creates --tasks tasks with --payload-bytes payloads (in a queue no worker consumes),
then runs --lists concurrent readers, each paging through every task with
include_payload=true (following next_cursor), while /healthz is asked every
HEALTH_EVERY_S on a connection of its own and the daemon's RSS is sampled from /proc.
Prints its configuration and the figures: RSS before and at its peak during the lists,
/healthz p50/p99/max, how long the lists took, their pages and bytes. `--ref` runs the
daemon of a commit (before/after), `--set KEY=VALUE` adds daemon settings.

Usage: .venv/bin/python bench/heavy_reads.py [--ref GIT_REF] [--tasks 20] [--lists 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from throughput import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_REDIS_URL,
    code_tree,
    imported_from,
    latency_summary_ms,
    provisioned,
    running_daemon,
)
from throughput import daemon_env as bench_env

# How often /healthz is asked and the RSS read while the lists run.
HEALTH_EVERY_S = 0.05
RSS_EVERY_S = 0.02
# The queue the tasks go to; the daemon works another, so they stay as created.
QUEUE = "heavy"
# Longest the whole measurement may take.
RUN_TIMEOUT_S = 600.0


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:  # noqa: ASYNC230 (procfs, no I/O wait)
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def create_tasks(url: str, count: int, payload_bytes: int) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as client:
        for i in range(count):
            r = await client.post("/api/v1/tasks", json={
                "name": f"heavy-{i}", "queue_name": QUEUE,
                "payload": {"blob": "x" * (payload_bytes - 20)}})
            r.raise_for_status()


async def read_all(url: str, limit: int) -> dict[str, int]:
    """Every page of the task list with payloads; pages, tasks and bytes read."""
    pages = tasks = size = 0
    params: dict[str, Any] = {"include_payload": "true", "limit": limit}
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=300) as client:
        while True:
            r = await client.get("/api/v1/tasks", params=params)
            r.raise_for_status()
            body = r.json()
            pages, tasks, size = pages + 1, tasks + len(body["tasks"]), size + len(r.content)
            if body["next_cursor"] is None:
                return {"pages": pages, "tasks": tasks, "bytes": size}
            params["cursor"] = body["next_cursor"]


async def measure(url: str, pid: int, opts: argparse.Namespace) -> dict[str, Any]:
    await create_tasks(url, opts.tasks, opts.payload_bytes)
    await trio.sleep(1)  # let the creates' garbage settle
    before = rss_mb(pid)
    samples: list[float] = []
    health_s: list[float] = []
    reads: list[dict[str, int]] = []
    done = trio.Event()

    async def sample_rss() -> None:
        while not done.is_set():
            samples.append(rss_mb(pid))
            await trio.sleep(RSS_EVERY_S)

    async def ask_health() -> None:
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                (await client.get("/healthz")).raise_for_status()
                health_s.append(time.perf_counter() - started)
                await trio.sleep(HEALTH_EVERY_S)

    async def reader() -> None:
        reads.append(await read_all(url, opts.limit))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss)
        nursery.start_soon(ask_health)
        async with trio.open_nursery() as lists:
            for _ in range(opts.lists):
                lists.start_soon(reader)
        lists_s = time.perf_counter() - started
        done.set()
    return {"rss_before_mb": round(before, 1), "rss_peak_mb": round(max(samples), 1),
            "rss_after_mb": round(rss_mb(pid), 1), "lists_s": round(lists_s, 2),
            "healthz": {**latency_summary_ms(health_s), "count": len(health_s)},
            "per_list": reads[0] if reads else {}}


@asynccontextmanager
async def idle_daemon(label: str, opts: argparse.Namespace,
                      workload: str) -> AsyncIterator[Any]:
    """A daemon of `opts.ref` (default: the working tree) on a fresh database and Redis
    prefix, working only the queue `<label>-idle` with one executor, `opts.set` applied;
    prints what it runs and `workload`. Shared with bench/task_reads.py."""
    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    with (provisioned(admin, redis_url) as res, code_tree(opts.ref) as code_dir,
          tempfile.TemporaryDirectory(prefix=f"distasks-{label}-") as out):
        env = bench_env(res, queues=f"{label}-idle", concurrency=1)
        env.update(dict(kv.split("=", 1) for kv in opts.set))
        print(f"daemon code: {imported_from(code_dir)} (ref {opts.ref or 'working tree'})")
        print(f"{workload}; settings {opts.set or '-'}")
        async with running_daemon(label, env, Path(out), code_dir) as daemon:
            yield daemon


async def main_async(opts: argparse.Namespace) -> dict[str, Any]:
    workload = (f"tasks {opts.tasks} x {opts.payload_bytes} B payloads, {opts.lists} "
                f"concurrent lists (include_payload=true, limit {opts.limit})")
    with trio.fail_after(RUN_TIMEOUT_S):
        async with idle_daemon("heavy", opts, workload) as daemon:
            return await measure(daemon.base_url, daemon.process.pid, opts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", help="run the daemon of this commit (default: working tree)")
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--payload-bytes", type=int, default=1_000_000)
    p.add_argument("--lists", type=int, default=8)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a daemon setting, e.g. DISTASKS_HTTP_HEAVY_READS=4")
    p.add_argument("--json", action="store_true")
    opts = p.parse_args()
    r = trio.run(main_async, opts)
    h = r["healthz"]
    print(f"RSS: {r['rss_before_mb']} MiB before, {r['rss_peak_mb']} MiB peak, "
          f"{r['rss_after_mb']} MiB after")
    print(f"/healthz during the lists ({h['count']} asked): p50 {h['p50_ms']} ms, "
          f"p99 {h['p99_ms']} ms, max {h['max_ms']} ms")
    print(f"lists: all {opts.lists} done in {r['lists_s']} s; each {r['per_list']}")
    if opts.json:
        json.dump(r, sys.stdout)
        print()


if __name__ == "__main__":
    main()
