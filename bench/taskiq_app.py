"""The Taskiq side of bench/compare_taskiq.py: a broker on a Redis list and one task that
does one Redis write, like bench/redis_write_handler.py does for distasks.

`python taskiq_app.py N` sends N tasks; `taskiq worker taskiq_app:broker` works them.
"""

from __future__ import annotations

import asyncio
import os
import sys

import redis.asyncio as aredis
from taskiq_redis import ListQueueBroker

URL = os.environ["REDIS_URL"]
PREFIX = os.environ["BENCH_PREFIX"]

broker = ListQueueBroker(URL, queue_name=f"{PREFIX}:taskiq")
_client: aredis.Redis | None = None


@broker.task
async def redis_write() -> None:
    global _client
    if _client is None:
        _client = aredis.Redis.from_url(URL)
    await _client.incr(f"{PREFIX}:done")


async def send(count: int) -> None:
    await broker.startup()
    for _ in range(count):
        await redis_write.kiq()
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(send(int(sys.argv[1])))
