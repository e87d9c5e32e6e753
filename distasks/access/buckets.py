"""Token buckets: the one mechanism behind rate limits and tenant quotas.

A bucket lives in Redis (broker/rate_take.lua, on Redis's clock), shared by every daemon;
it holds BURST_S seconds' worth of its rate. A daemon takes tokens a lease at a time
(LEASE_FRACTION of a bucket) and spends them locally, so that most requests cost a
dictionary lookup, not a Redis round trip; what it took and did not spend is all another
daemon may miss. While Redis does not answer (within TAKE_TIMEOUT_S) the tokens asked for
are granted: an outage must not stop the API (architecture §5.6).
"""

from __future__ import annotations

import contextlib

import trio

from distasks.broker import Broker
from distasks.domain.errors import BrokerUnavailable

# A bucket holds this many seconds' worth of its rate: the burst allowed.
BURST_S = 10.0
# Share of a bucket a daemon takes at a time.
LEASE_FRACTION = 0.05
# Longest a take waits for Redis; without an answer it is granted, and so is the lease
# it asked for, so that a hung Redis slows one request per lease, not all of them.
TAKE_TIMEOUT_S = 0.5


def capacity(per_minute: int) -> int:
    """Tokens a bucket of `per_minute` holds when full; 0 for no limit."""
    return 0 if per_minute == 0 else max(1, int(per_minute * BURST_S / 60))


def lease(capacity_: int) -> int:
    """Tokens a daemon takes at a time from a bucket of `capacity_` (at least one)."""
    return max(1, int(capacity_ * LEASE_FRACTION))


async def take(broker: Broker, bucket: str, tenant: str, *, per_minute: int,
               tenant_per_minute: int = 0, want: int) -> tuple[int, int]:
    """Up to `want` tokens from `bucket` and, with `tenant_per_minute`, from the tenant's
    bucket too: (granted, ms until the next token when none was granted). All of `want`
    when Redis does not answer in time."""
    granted, wait_ms = want, 0
    with contextlib.suppress(BrokerUnavailable), trio.move_on_after(TAKE_TIMEOUT_S):
        granted, wait_ms = await broker.take_tokens(
            bucket, tenant, per_ms=per_minute / 60_000, capacity=capacity(per_minute),
            tenant_per_ms=tenant_per_minute / 60_000,
            tenant_capacity=capacity(tenant_per_minute), want=want)
    return granted, wait_ms
