"""The distasks side of bench/compare_taskiq.py and bench/sync_handlers.py: handlers
that do one Redis write (INCR of `<BENCH_PREFIX>:done`).

Loaded by the daemon through `worker.handlers`. `redis_write` is Trio code, so it
reaches redis-py (asyncio-only) the way a user's async handler would: through
distasks.aio, one crossing of the trio-asyncio bridge per call. `redis_write_sync` is a
plain function, as a user's blocking code would be: it runs on a handler thread and uses
the sync redis client, whose connection pool is shared by every thread. `stamp` records
when a handler began, for the enqueue -> start latency.

The Redis they write to is `BENCH_REDIS_URL` when set (bench/scale.py), else the
daemon's `REDIS_URL`; a `redis+cluster://` URL gets redis-py's cluster client.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
import redis.asyncio as aredis

import distasks
from distasks import aio

_URL = os.environ.get("BENCH_REDIS_URL") or os.environ["REDIS_URL"]
_CLUSTER_SCHEME = "redis+cluster://"

_client: Any = None
_sync_client: Any = None
_sync_client_lock = threading.Lock()


def _async_client() -> Any:
    if _URL.startswith(_CLUSTER_SCHEME):
        return aredis.RedisCluster.from_url("redis://" + _URL.removeprefix(_CLUSTER_SCHEME))
    return aredis.Redis.from_url(_URL)


def _blocking_client() -> Any:
    if _URL.startswith(_CLUSTER_SCHEME):
        return redis.RedisCluster.from_url("redis://" + _URL.removeprefix(_CLUSTER_SCHEME))
    return redis.Redis.from_url(_URL)


@distasks.handler("redis_write")
async def redis_write(ctx: Any) -> None:
    global _client
    if _client is None:
        _client = _async_client()
    await aio.call(_client.incr, f"{os.environ['BENCH_PREFIX']}:done")


@distasks.handler("redis_write_sync")
def redis_write_sync(ctx: Any) -> None:
    global _sync_client
    client = _sync_client
    if client is None:
        with _sync_client_lock:  # handler threads start at once: create one client
            if _sync_client is None:
                _sync_client = _blocking_client()
            client = _sync_client
    client.incr(f"{os.environ['BENCH_PREFIX']}:done")


# redis.asyncio connects on first use, inside the daemon's asyncio loop.
_stamp_client = _async_client()


@distasks.handler("stamp")
async def stamp(ctx: Any) -> None:
    """The handler's first line takes the time; the bench subtracts the time it sent the
    create (same machine, same clock), found by the task id the create answered."""
    started_s = time.time()
    await aio.call(_stamp_client.hset, f"{os.environ['BENCH_PREFIX']}:started",
                   str(ctx.task.id), repr(started_s))
