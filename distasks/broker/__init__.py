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
    cluster_url,
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
           "Rank", "Settlement", "broker_errors", "cluster_url", "printable", "rank"]


# Pings before /readyz calls Redis down (see Broker.ping).
PING_ATTEMPTS = 3
# Connections per cluster node beyond the crossings' share: the control subscription's.
CONTROL_CONNECTIONS = 2


class Broker(DispatchCommands, LeaseCommands, QueueCommands, DlqCommands, ControlCommands,
             RebuildCommands, RateCommands, SessionCommands):
    """Every Redis command distasks sends; open with `Broker.open(url, prefix=…)`."""

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, prefix: str, max_connections: int = 64,
                   cluster: bool = False) -> AsyncIterator[Broker]:
        """Connect to `url` for the block; must run inside aio.open_loop(). With
        `cluster` (or a `redis+cluster://` URL), `url` names any node of a Redis Cluster
        and redis-py's cluster client sends each command to its slot's master."""
        url, cluster = cluster_url(url, cluster)
        if cluster:
            async with cls._open_cluster(url, prefix=prefix,
                                         max_connections=max_connections) as broker:
                yield broker
            return
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

    @classmethod
    @asynccontextmanager
    async def _open_cluster(cls, url: str, *, prefix: str,
                            max_connections: int) -> AsyncIterator[Broker]:
        """The cluster client: it learns the slots from the node in `url` on the first
        command (so that a cluster down at start-up is an outage the loops retry, not a
        failed start) and follows MOVED and failovers by itself. Its pools raise rather
        than wait when full, so the Broker lets at most `max_connections` crossings run
        at once (each holds at most one connection per node), leaving room per node for
        the control subscription."""
        client = aredis.RedisCluster.from_url(
            url, max_connections=max_connections + CONTROL_CONNECTIONS,
            socket_timeout=None, socket_connect_timeout=SOCKET_TIMEOUT_S,
            decode_responses=True, encoding_errors=ENCODING_ERRORS)
        broker = cls(client, prefix, crossings=trio.CapacityLimiter(max_connections))
        try:
            yield broker
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SOCKET_TIMEOUT_S):
                await aio.call(client.aclose)

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
