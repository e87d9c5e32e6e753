"""Broker: the Redis dispatch index of ready, delayed, leased and dead-lettered work.

Redis holds only run and task ids, never payloads, and can be rebuilt from PostgreSQL
(architecture §2). One module per area, as the store is split: dispatch (push, claim,
settle, move), leases, queues, the DLQ index, control messages, rebuild, rates and console sessions, each
on base.py's crossing. Every public method is one crossing of the bridge: its body is
asyncio-side redis-py code and `@crossing` runs it from Trio under a deadline, failures
mapped to BrokerUnavailable, so no caller ever holds an asyncio coroutine. A body two
crossings share is a private `_…_on_asyncio` helper, called only from inside a crossing.
Multi-command steps are pipelined or done by a Lua script (`<name>.lua` beside this
file, called by SHA).

May import `distasks.domain` and the bridge (`distasks.aio`); never the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aredis
import trio

from distasks import aio
from distasks.broker.base import (
    CLAIM_BLOCK_S,
    ENCODING_ERRORS,
    SOCKET_TIMEOUT_S,
    broker_errors,
    crossing,
    printable,
)
from distasks.broker.control import ControlCommands, ControlSubscription
from distasks.broker.dispatch import DispatchCommands, Settlement
from distasks.broker.dlq import DlqCommands
from distasks.broker.keys import Rank, rank
from distasks.broker.leases import LeaseCommands
from distasks.broker.queues import QueueCommands, QueueEntries
from distasks.broker.rates import RateCommands
from distasks.broker.rebuild import RebuildCommands
from distasks.broker.sessions import SessionCommands
from distasks.domain.errors import BrokerUnavailable

__all__ = ["CLAIM_BLOCK_S", "SOCKET_TIMEOUT_S", "Broker", "ControlSubscription", "QueueEntries",
           "Rank", "Settlement", "broker_errors", "printable", "rank"]


# Pings before /readyz calls Redis down (see Broker.ping).
PING_ATTEMPTS = 3


class Broker(DispatchCommands, LeaseCommands, QueueCommands, DlqCommands, ControlCommands,
             RebuildCommands, RateCommands, SessionCommands):
    """Every Redis command distasks sends; open with `Broker.open(url, prefix=…)`."""

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, prefix: str, max_connections: int = 64) -> AsyncIterator[Broker]:
        """Connect to `url` for the block; must run inside aio.open_loop()."""
        pool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None,
            socket_timeout=None, socket_connect_timeout=SOCKET_TIMEOUT_S,
            decode_responses=True, encoding_errors=ENCODING_ERRORS, retry_on_timeout=False)
        client = aredis.Redis(connection_pool=pool)
        try:
            yield cls(client, prefix)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SOCKET_TIMEOUT_S):
                await aio.call(client.aclose)
                await aio.call(pool.disconnect)

    async def ping(self) -> None:
        """PING, asked up to PING_ATTEMPTS times before Redis is called down: connections
        the pool kept across a Redis restart are dead while Redis is up, and the first
        command on each fails. A failed one is reconnected, but a busy daemon's other
        tasks may take it first and leave the next ping another dead one."""
        for _ in range(PING_ATTEMPTS - 1):
            try:
                await self._ping()
                return
            except BrokerUnavailable:
                pass
        await self._ping()

    @crossing
    async def _ping(self) -> None:
        await self._redis.ping()
