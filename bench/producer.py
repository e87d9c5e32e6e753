"""What one producer costs: N creates from one Python loop, through the stock clients and
through the batching helper, with the client's and the daemon's CPU per create.

The daemon runs as a subprocess in a database and Redis prefix of its own (throughput.py's
harness); the tasks go to a queue it does not serve, so only the create path is measured.
Phases, each on the same daemon, in this order:

  raw      http.client, one keep-alive connection, the JSON body built once: the floor
           any Python HTTP client could reach on this box
  client   `Client.create` in a loop (blocking)
  async    `await AsyncClient.create` in a loop (Trio)
  producer `AsyncClient.producer()`: the loop starts one `enqueue` per task (never more
           than --in-flight waiting), each returning once the batch holding it committed
  submit   `Client.producer()`: the loop submits every task, then reads every future

Client CPU is the bench's own process time around the loop (`time.process_time`, all
threads); daemon CPU is read from /proc/<pid>/stat as throughput.py's CpuMeter does.

Usage: .venv/bin/python bench/producer.py [--tasks 3000] [--max-batch 100]
       [--max-delay-ms 5] [--in-flight 1000] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from throughput import (
    DEFAULT_ADMIN_DSN,
    DEFAULT_REDIS_URL,
    READY_TIMEOUT_S,
    REPO_ROOT,
    STOP_TIMEOUT_S,
    process_cpu_s,
    provisioned,
)

from distasks.client import AsyncClient, Client
from distasks.testing.daemon import DaemonProcess, running
from distasks.testing.daemon import daemon_env as own_daemon_env

# No daemon serves this queue: the tasks stay queued, only creating them costs.
IDLE_QUEUE = "producer-idle"
# Creates before each phase, not measured: connections open, code paths warm.
WARMUP_CREATES = 200
# One phase's time limit: generous, but a hang ends the bench.
PHASE_TIMEOUT_S = 300.0


def task_fields(i: int) -> dict[str, Any]:
    return {"handler": "noop", "queue": IDLE_QUEUE, "payload": {"i": i}}


class Phase:
    """Wall, client and daemon CPU (all of `daemon_pids`) around one loop of `tasks`
    creates."""

    def __init__(self, daemon_pids: Sequence[int]) -> None:
        self.daemon_pids = daemon_pids

    def daemon_cpu_s(self) -> float:
        return sum(process_cpu_s(pid) for pid in self.daemon_pids)

    def __enter__(self) -> Phase:
        self.wall_s = time.perf_counter()
        self.client_s = time.process_time()
        self.daemon_s = self.daemon_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self.wall_s
        self.client_s = time.process_time() - self.client_s
        self.daemon_s = self.daemon_cpu_s() - self.daemon_s

    def report(self, tasks: int) -> dict[str, float]:
        return {"creates_per_s": round(tasks / self.wall_s, 1),
                "client_cpu_ms_per_create": round(1000 * self.client_s / tasks, 3),
                "daemon_cpu_ms_per_create": round(1000 * self.daemon_s / tasks, 3),
                "elapsed_s": round(self.wall_s, 3)}


def raw_loop(url: str, tasks: int) -> None:
    """The floor: http.client, body pre-encoded, status checked, answer parsed."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    body = json.dumps({"name": "raw", "handler": "noop", "queue_name": IDLE_QUEUE}).encode()
    headers = {"Content-Type": "application/json"}
    try:
        for _ in range(tasks):
            conn.request("POST", "/api/v1/tasks", body, headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 201:
                raise RuntimeError(f"raw create: {response.status} {answer[:200]!r}")
            json.loads(answer)
    finally:
        conn.close()


def client_loop(url: str, tasks: int) -> None:
    with Client(url) as c:
        for i in range(tasks):
            c.create("client", **task_fields(i))


async def async_loop(url: str, tasks: int) -> None:
    async with AsyncClient(url) as c:
        for i in range(tasks):
            await c.create("async", **task_fields(i))


def blocking_producer_loop(max_batch: int,
                           max_delay_s: float) -> Callable[[str, int], None]:
    def loop(url: str, tasks: int) -> None:
        with Client(url) as c:
            with c.producer(max_batch=max_batch, max_delay_s=max_delay_s) as p:
                futures = [p.submit("submit", **task_fields(i)) for i in range(tasks)]
            ids = {f.result().task_id for f in futures}
        if len(ids) != tasks:
            raise RuntimeError(f"submit: {len(ids)} distinct task ids for {tasks} submits")
    return loop


def producer_loop(max_batch: int, max_delay_s: float,
                  in_flight: int) -> Callable[[str, int], Awaitable[None]]:
    async def loop(url: str, tasks: int) -> None:
        ids: set[str] = set()
        limit = trio.Semaphore(in_flight)

        async def one(p: Any, i: int) -> None:
            try:
                ids.add((await p.enqueue("producer", **task_fields(i))).task_id)
            finally:
                limit.release()

        async with AsyncClient(url) as c, c.producer(max_batch=max_batch,
                                                     max_delay_s=max_delay_s) as p:
            async with trio.open_nursery() as nursery:
                for i in range(tasks):
                    await limit.acquire()
                    nursery.start_soon(one, p, i)
        if len(ids) != tasks:
            raise RuntimeError(f"producer: {len(ids)} distinct task ids for {tasks} enqueues")
    return loop


async def measure(name: str, pids: Sequence[int], url: str, tasks: int,
                  run: Callable[[str, int], Any], *, blocking: bool) -> dict[str, Any]:
    async def call(n: int) -> None:
        if blocking:
            await trio.to_thread.run_sync(run, url, n)
        else:
            await run(url, n)

    with trio.fail_after(PHASE_TIMEOUT_S):
        await call(WARMUP_CREATES)
        with Phase(pids) as phase:
            await call(tasks)
    return {"phase": name, **phase.report(tasks)}


async def bench(opts: argparse.Namespace) -> dict[str, Any]:
    with provisioned(opts.admin_dsn, opts.redis_url) as res:
        env = own_daemon_env(database_url=res.dsn, redis_url=opts.redis_url, prefix=res.name,
                             settings={"DISTASKS_LOG_LEVEL": "WARNING",
                                       "DISTASKS_LOG_ACCESS": "false",
                                       "DISTASKS_AUTH_ANONYMOUS": "loopback",
                                       "DISTASKS_LIMITS_PER_MINUTE": "0"})
        daemon = DaemonProcess("producer", env, REPO_ROOT / ".local" / "bench-producer.log",
                               config=REPO_ROOT / "config/distasks.toml", cwd=REPO_ROOT)
        async with running(daemon, ready_timeout_s=READY_TIMEOUT_S,
                           stop_timeout_s=STOP_TIMEOUT_S) as d:
            assert d.process is not None
            pids, n = [d.process.pid], opts.tasks
            phases = [
                await measure("raw http.client", pids, d.url, n, raw_loop, blocking=True),
                await measure("Client.create", pids, d.url, n, client_loop, blocking=True),
                await measure("AsyncClient.create", pids, d.url, n, async_loop,
                              blocking=False),
            ]
            if not opts.skip_producer:
                phases.append(await measure(
                    "producer.enqueue", pids, d.url, n,
                    producer_loop(opts.max_batch, opts.max_delay_ms / 1000, opts.in_flight),
                    blocking=False))
                phases.append(await measure(
                    "producer.submit", pids, d.url, n,
                    blocking_producer_loop(opts.max_batch, opts.max_delay_ms / 1000),
                    blocking=True))
    return {"config": {"tasks": n, "warmup": WARMUP_CREATES, "max_batch": opts.max_batch,
                       "max_delay_ms": opts.max_delay_ms, "in_flight": opts.in_flight,
                       "cpus": os.cpu_count(), "python": platform.python_version()},
            "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--max-batch", type=int, default=100)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--admin-dsn", default=os.environ.get("DISTASKS_PG_ADMIN_DSN",
                                                              DEFAULT_ADMIN_DSN))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--skip-producer", action="store_true",
                        help="only the stock clients (for a tree without the helper)")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    result = trio.run(bench, opts)
    if opts.json:
        print(json.dumps(result, indent=2))
        return
    print("config: " + ", ".join(f"{k}={v}" for k, v in result["config"].items()))
    print(f"{'phase':<20} {'creates/s':>10} {'client ms/create':>17} {'daemon ms/create':>17}")
    for p in result["phases"]:
        print(f"{p['phase']:<20} {p['creates_per_s']:>10} {p['client_cpu_ms_per_create']:>17}"
              f" {p['daemon_cpu_ms_per_create']:>17}")


if __name__ == "__main__":
    main()
