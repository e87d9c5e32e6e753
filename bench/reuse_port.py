"""Several daemons behind one port (`http.reuse_port`): creates/s of 1, 2, … daemons on
one host, and how the kernel spread the connections.

For each count N in 1..--daemons: N `distasks serve` processes listen on one port with
`http.reuse_port = true` (each also on an instance port of its own, for its metrics),
all working queue `bench` with the `noop` handler. `--clients` closed-loop senders, each
on its own kept-alive connection, create tasks on the shared port for `--duration`
seconds; then the bench waits until every task created is `completed`. Output per N:
creates/s, the share of requests each daemon answered (its own
`distasks_http_requests_total`, read on its instance port) and each daemon's CPU (% of
one core). On a box with fewer cores than daemons plus PostgreSQL, Redis and the bench,
the box is the limit: read the machine's busy % beside the figures.

    .venv/bin/python bench/reuse_port.py                 # 1 and 2 daemons, 64 clients, 10 s
    .venv/bin/python bench/reuse_port.py --daemons 4 --duration 5

Environment: DISTASKS_PG_ADMIN_DSN and REDIS_URL, as bench/throughput.py. Creates the
database `distasks_bench_reuse_<random>` and drops it at the end (its Redis keys too).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import psycopg
import trio
from prometheus_client.parser import text_string_to_metric_families
from throughput import DEFAULT_ADMIN_DSN, DEFAULT_REDIS_URL, process_cpu_s, provisioned

from distasks.testing.daemon import DaemonProcess, daemon_env, free_port, running

# Longest wait for the tasks of one round to complete after the creates stopped.
DRAIN_TIMEOUT_S = 120.0


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


async def requests_answered(client: httpx.AsyncClient, url: str) -> float:
    r = await client.get(f"{url}/metrics")
    return sum(s.value for family in text_string_to_metric_families(r.text)
               for s in family.samples if s.name == "distasks_http_requests_total")


@asynccontextmanager
async def daemons(n: int, dsn: str, redis_url: str, prefix: str, out: Path,
                  concurrency: int, settings: dict[str, str] | None = None,
                  ) -> AsyncIterator[tuple[str, list[tuple[DaemonProcess, str]]]]:
    """`n` daemons on one shared port, each with `settings` over the bench's (queue
    `bench`, `noop` handler); yields the port's URL and (daemon, instance URL) pairs."""
    port = str(free_port())
    async with AsyncExitStack() as stack:
        started = []
        for i in range(n):
            own = free_port()
            env = daemon_env(database_url=dsn, redis_url=redis_url, prefix=prefix, settings={
                "HTTP_PORT": port, "DISTASKS_HTTP_REUSE_PORT": "true",
                "DISTASKS_HTTP_INSTANCE_PORT": str(own), "QUEUE_NAMES": "bench",
                "WORKER_CONCURRENCY": str(concurrency), "DISTASKS_LOG_LEVEL": "WARNING",
                "DISTASKS_WORKER_DEFAULT_HANDLER": "noop",
                "DISTASKS_AUTH_ANONYMOUS": "loopback", "DISTASKS_LIMITS_PER_MINUTE": "0",
                **(settings or {})})
            d = await stack.enter_async_context(running(DaemonProcess(
                f"n{n}-d{i}", env, out / f"n{n}-d{i}.log")))
            started.append((d, f"http://127.0.0.1:{own}"))
            # Its readiness check may have been answered by an earlier daemon on the
            # shared port: wait until its own port answers.
            async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
                with trio.fail_after(30):
                    while True:
                        try:
                            r = await client.get(f"http://127.0.0.1:{own}/readyz")
                            if r.status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await trio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", started


async def round_of(n: int, args: argparse.Namespace, dsn: str, redis_url: str,
                   prefix: str, out: Path) -> None:
    async with daemons(n, dsn, redis_url, prefix, out, args.concurrency) as (url, started), \
            httpx.AsyncClient(timeout=30, trust_env=False, limits=httpx.Limits(
                max_connections=args.clients + n)) as client:
        before_req = [await requests_answered(client, own) for _, own in started]
        before_cpu = [process_cpu_s(d.process.pid) for d, _ in started]  # type: ignore[union-attr]
        busy0, total0 = machine_busy_s()
        created: list[str] = []
        errors = 0
        t0 = time.perf_counter()
        deadline = trio.current_time() + args.duration

        async def sender() -> None:
            nonlocal errors
            async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as own:
                while trio.current_time() < deadline:
                    r = await own.post("/api/v1/tasks", json={
                        "name": "bench", "type": "immediate", "queue_name": "bench",
                        "priority": 2, "payload": {}})
                    if r.status_code == 201:
                        created.append(r.json()["task_id"])
                    else:
                        errors += 1

        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                nursery.start_soon(sender)
        wall = time.perf_counter() - t0
        busy1, total1 = machine_busy_s()
        cpu = [process_cpu_s(d.process.pid) - c  # type: ignore[union-attr]
               for (d, _), c in zip(started, before_cpu, strict=True)]
        answered = [await requests_answered(client, own) - b
                    for (_, own), b in zip(started, before_req, strict=True)]
        with trio.fail_after(DRAIN_TIMEOUT_S), psycopg.connect(dsn) as conn:
            while True:
                left = conn.execute("SELECT count(*) FROM tasks WHERE status <> 'completed'"
                                    ).fetchone()
                conn.commit()
                if left == (0,):
                    break
                await trio.sleep(0.2)
    total = sum(answered)
    print(f"{n} daemon(s): {len(created) / wall:8.0f} creates/s ({len(created)} in {wall:.1f} s,"
          f" {errors} errors), all completed; machine busy "
          f"{100 * (busy1 - busy0) / max(total1 - total0, 1e-9):.0f}% of "
          f"{os.cpu_count()} cores")
    for i, (share, used) in enumerate(zip(answered, cpu, strict=True)):
        print(f"    daemon {i}: {100 * share / max(total, 1):5.1f}% of requests, "
              f"CPU {100 * used / wall:5.1f}% of a core")


async def main(args: argparse.Namespace) -> None:
    admin = os.environ.get("DISTASKS_PG_ADMIN_DSN", DEFAULT_ADMIN_DSN)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    print(f"bench/reuse_port.py: {args.clients} clients, {args.duration:g} s per round, "
          f"WORKER_CONCURRENCY={args.concurrency}, noop handler; load average "
          f"{os.getloadavg()[0]:.2f}")
    with provisioned(admin, redis_url) as res, tempfile.TemporaryDirectory() as out:
        for n in range(1, args.daemons + 1):
            await round_of(n, args, res.dsn, redis_url, res.name, Path(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", type=int, default=2, help="up to this many (2)")
    parser.add_argument("--clients", type=int, default=64, help="connections (64)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds a round (10)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="WORKER_CONCURRENCY of each daemon (50)")
    trio.run(main, parser.parse_args())
