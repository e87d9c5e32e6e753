"""The broker's connections: a pooled connection that Redis dropped must not make a
healthy Redis look down."""

from __future__ import annotations

import pytest
import trio

from distasks import aio


async def test_readiness_ping_survives_a_pooled_connection_the_server_dropped(broker):
    """After a Redis restart the pool can still hold a connection to the old server
    that it has not yet seen closed; the first command on it fails though Redis is up,
    and readiness must not say "down" for that."""
    if broker.is_cluster:
        pytest.skip("single-node commands (CLIENT ID, CLIENT KILL) on one connection")
    redis = broker._redis

    async def ping_after_losing_own_connection() -> None:
        # One asyncio-side step: the server drops this connection and the next PING takes
        # it from the pool before the loop has read the close.
        own_id = await redis.client_id()
        await redis.execute_command("CLIENT", "KILL", "ID", own_id, "SKIPME", "no")

    with trio.fail_after(10):
        await broker.ping()
        await aio.call(ping_after_losing_own_connection)
        await broker.ping()
