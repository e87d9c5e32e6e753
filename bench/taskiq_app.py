"""The Taskiq side of bench/compare_taskiq.py: a broker on a Redis list and the tasks
that match bench/redis_write_handler.py, one Redis write each.

`taskiq worker taskiq_app:broker` works them. The producer side runs here too, in
asyncio (Taskiq's client), and prints one JSON object:

  python taskiq_app.py send N TASK          N `await TASK.kiq()` from one loop: the time
                                            and this process's CPU they took
  python taskiq_app.py stamp RATE SECONDS   `stamp.kiq(seq)` on a fixed schedule (open
                                            loop): each seq's send time (time.time())
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import redis
import redis.asyncio as aredis
from taskiq_redis import ListQueueBroker

URL = os.environ["REDIS_URL"]
PREFIX = os.environ["BENCH_PREFIX"]
# The open loop starts this far in the future, so set-up does not make the first late.
SCHEDULE_LEAD_S = 0.2

broker = ListQueueBroker(URL, queue_name=f"{PREFIX}:taskiq")
_client: aredis.Redis | None = None
# Created once per worker process, at import, like the distasks handler's.
_sync_client = redis.Redis.from_url(URL)


def async_client() -> aredis.Redis:
    global _client
    if _client is None:
        _client = aredis.Redis.from_url(URL)
    return _client


@broker.task
async def redis_write() -> None:
    await async_client().incr(f"{PREFIX}:done")


@broker.task
def redis_write_sync() -> None:
    _sync_client.incr(f"{PREFIX}:done")


@broker.task
async def stamp(seq: int) -> None:
    started_s = time.time()
    await async_client().hset(f"{PREFIX}:started", str(seq), repr(started_s))


TASKS = {"redis_write": redis_write, "redis_write_sync": redis_write_sync}


async def send(count: int, task_name: str) -> dict[str, Any]:
    task = TASKS[task_name]
    await broker.startup()
    wall_s, cpu_s = time.perf_counter(), time.process_time()
    for _ in range(count):
        await task.kiq()
    wall_s, cpu_s = time.perf_counter() - wall_s, time.process_time() - cpu_s
    await broker.shutdown()
    return {"jobs": count, "elapsed_s": wall_s, "client_cpu_s": cpu_s}


async def stamps(rate_per_s: float, duration_s: float) -> dict[str, Any]:
    await broker.startup()
    loop = asyncio.get_running_loop()
    sent: dict[int, float] = {}
    lag_s: list[float] = []
    errors: list[str] = []

    async def one(seq: int) -> None:
        sent[seq] = time.time()
        try:
            await stamp.kiq(seq)
        except Exception as e:  # counted: a send that failed is reported, not stamped
            errors.append(type(e).__name__)

    start = loop.time() + SCHEDULE_LEAD_S
    pending = set()
    for seq in range(int(rate_per_s * duration_s)):
        due = start + seq / rate_per_s
        await asyncio.sleep(max(due - loop.time(), 0))
        lag_s.append(loop.time() - due)
        pending.add(asyncio.create_task(one(seq)))
    await asyncio.wait_for(asyncio.gather(*pending), timeout=60)
    await broker.shutdown()
    return {"sent": sent, "lag_s": lag_s, "errors": errors}


if __name__ == "__main__":
    if sys.argv[1] == "send":
        out = asyncio.run(send(int(sys.argv[2]), sys.argv[3]))
    else:
        out = asyncio.run(stamps(float(sys.argv[2]), float(sys.argv[3])))
    print(json.dumps(out))
