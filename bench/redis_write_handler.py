"""The distasks side of bench/compare_taskiq.py: a handler that does one Redis write.

Loaded by the daemon through `worker.handlers`. A distasks handler is Trio code, so it
reaches redis-py (asyncio-only) the way a user's handler would: through distasks.aio,
one crossing of the trio-asyncio bridge per call.
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aredis

import distasks
from distasks import aio

_client: aredis.Redis | None = None


@distasks.handler("redis_write")
async def redis_write(ctx: Any) -> None:
    global _client
    if _client is None:
        _client = aredis.Redis.from_url(os.environ["REDIS_URL"])
    await aio.call(_client.incr, f"{os.environ['BENCH_PREFIX']}:done")
