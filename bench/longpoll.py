"""What long polls cost a daemon: CPU while W clients wait on W tasks that do not finish.

Issue 10 measured 0.7 CPU-s/s for 200 waiters when each re-read PostgreSQL every second;
now one query a second serves every waited task (distasks.daemon.waiters.poll). The daemon runs
as a subprocess in a database and Redis prefix of its own (throughput.py's harness); the
tasks go to a queue it does not serve, so they stay queued and the waits run their full
length. Figures: the daemon's CPU (% of one core) idle, then with the W waits in flight.

Usage: .venv/bin/python bench/longpoll.py [--waiters 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import httpx
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

from distasks.testing.daemon import DaemonProcess, running
from distasks.testing.daemon import daemon_env as own_daemon_env

IDLE_QUEUE = "longpoll-idle"
WAIT_S = 60  # the API's longest wait; clients wait again when it ends


async def daemon_cpu_pct(pid: int, seconds: float) -> float:
    start_cpu, start_wall = process_cpu_s(pid), time.perf_counter()
    await trio.sleep(seconds)
    return 100 * (process_cpu_s(pid) - start_cpu) / (time.perf_counter() - start_wall)


async def bench(waiters: int, seconds: float, admin_dsn: str, redis_url: str) -> None:
    with provisioned(admin_dsn, redis_url) as res:
        env = own_daemon_env(database_url=res.dsn, redis_url=redis_url, prefix=res.name,
                             settings={"DISTASKS_LOG_ACCESS": "false",
                                       "DISTASKS_LIMITS_PER_MINUTE": "0"})
        daemon = DaemonProcess("longpoll", env, REPO_ROOT / ".local" / "bench-longpoll.log",
                               config=REPO_ROOT / "config/distasks.toml", cwd=REPO_ROOT)
        async with running(daemon, ready_timeout_s=READY_TIMEOUT_S,
                           stop_timeout_s=STOP_TIMEOUT_S) as d:
            limits = httpx.Limits(max_connections=waiters + 10)
            async with httpx.AsyncClient(base_url=d.url, limits=limits,
                                         timeout=WAIT_S + 30) as client:
                r = await client.post("/api/v1/tasks/batch", json={"tasks": [
                    {"name": "wait", "handler": "noop", "queue_name": IDLE_QUEUE}
                    for _ in range(waiters)]})
                r.raise_for_status()
                ids = [t["task_id"] for t in r.json()["tasks"]]
                assert d.process is not None
                pid = d.process.pid
                idle = await daemon_cpu_pct(pid, seconds)

                async def wait_on(task_id: str) -> None:
                    while True:
                        await client.get(f"/api/v1/tasks/{task_id}", params={"wait": WAIT_S})

                async with trio.open_nursery() as nursery:
                    for task_id in ids:
                        nursery.start_soon(wait_on, task_id)
                    await trio.sleep(2)  # every wait has started
                    waiting = await daemon_cpu_pct(pid, seconds)
                    nursery.cancel_scope.cancel()
    print(f"config: waiters={waiters} window={seconds}s wait={WAIT_S}s "
          f"cpus={os.cpu_count()} python={platform.python_version()}")
    print(f"daemon CPU idle:            {idle:6.1f} % of a core")
    print(f"daemon CPU with {waiters} waits: {waiting:6.1f} % of a core "
          f"({(waiting - idle) * 10 / waiters:.3f} ms CPU per wait per second)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--waiters", type=int, default=200)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--admin-dsn", default=os.environ.get("DISTASKS_BENCH_ADMIN_DSN",
                                                         DEFAULT_ADMIN_DSN))
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    a = p.parse_args()
    trio.run(bench, a.waiters, a.seconds, a.admin_dsn, a.redis_url)


if __name__ == "__main__":
    main()
