"""Rate limits: token buckets in Redis (broker/rate_take.lua, on Redis's clock), one per
principal and one per tenant, shared by every daemon.

A daemon takes tokens a few at a time (LEASE_FRACTION of a bucket) and spends them
locally, so that most requests cost a dictionary lookup, not a Redis round trip; what it
took and did not spend is all another daemon may miss. A refusal is remembered until the
next token is due, so a client that keeps knocking costs no Redis call either. While
Redis does not answer (within TAKE_TIMEOUT_S), requests pass: an outage must not stop
the API (architecture §5.6).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from distasks.access.principals import Principal
from distasks.broker import Broker
from distasks.config import Config
from distasks.domain.errors import BrokerUnavailable, Refused

# A bucket holds this many seconds' worth of requests: the burst allowed.
BURST_S = 10.0
# Share of a bucket a daemon takes at a time.
LEASE_FRACTION = 0.05
# Longest a request waits for Redis's tokens; without an answer it passes, and so do the
# next lease's worth, so that a hung Redis slows one request per lease, not all of them.
TAKE_TIMEOUT_S = 0.5
# Most principals tracked locally; more and the table starts afresh.
MAX_TRACKED = 10_000


class RateLimited(Refused):
    def __init__(self, per_minute: int, retry_after_s: float):
        retry = max(1, math.ceil(retry_after_s))
        super().__init__(429, "rate_limited",
                         f"over {per_minute} requests per minute; retry after {retry}s",
                         {"Retry-After": str(retry), "RateLimit-Limit": str(per_minute),
                          "RateLimit-Remaining": "0", "RateLimit-Reset": str(retry)})


@dataclass(slots=True)
class _Local:
    tokens: int = 0
    refused_until: float = 0.0
    #: one take from Redis at a time per principal: concurrent requests wait for it and
    #: share what it brought, instead of each taking a lease (and emptying the bucket)
    taking: trio.Lock = field(default_factory=trio.Lock)


class RateLimiter:
    def __init__(self, broker: Broker, config: Config,
                 clock: Callable[[], float] = time.monotonic):
        self._broker = broker
        self._config = config
        self._limits = config.limits
        self._clock = clock
        self._local: dict[str, _Local] = {}

    async def spend(self, who: Principal) -> None:
        """One request of `who`; RateLimited when its bucket or its tenant's is empty."""
        per_minute = (who.rate_per_minute if who.rate_per_minute is not None
                      else self._limits.per_minute)
        tenant_per_minute = (self._config.tenant(who.tenant).requests_per_minute
                             or self._limits.tenant_per_minute)
        if per_minute == 0 and tenant_per_minute == 0:
            return
        # Principal ids are unique within a tenant (a JWT subject need not be across).
        bucket = f"{who.tenant}/{who.id}"
        local = self._local.get(bucket)
        if local is None:
            if len(self._local) >= MAX_TRACKED:
                self._local.clear()
            local = self._local[bucket] = _Local()
        if local.tokens > 0:
            local.tokens -= 1
            return
        async with local.taking:
            if local.tokens > 0:  # brought by the take this request waited for
                local.tokens -= 1
                return
            await self._take(who, local, per_minute, tenant_per_minute)

    async def _take(self, who: Principal, local: _Local, per_minute: int,
                    tenant_per_minute: int) -> None:
        now = self._clock()
        shown = per_minute or tenant_per_minute
        if now < local.refused_until:
            raise RateLimited(shown, local.refused_until - now)
        capacity = _capacity(per_minute)
        tenant_capacity = _capacity(tenant_per_minute)
        want = max(1, int(min(c for c in (capacity, tenant_capacity) if c) * LEASE_FRACTION))
        granted, wait_ms = want, 0  # what passes when Redis does not answer in time
        with contextlib.suppress(BrokerUnavailable), trio.move_on_after(TAKE_TIMEOUT_S):
            granted, wait_ms = await self._broker.take_tokens(
                f"{who.tenant}/{who.id}", who.tenant, per_ms=per_minute / 60_000, capacity=capacity,
                tenant_per_ms=tenant_per_minute / 60_000, tenant_capacity=tenant_capacity,
                want=want)
        if granted == 0:
            local.refused_until = now + wait_ms / 1000
            raise RateLimited(shown, wait_ms / 1000)
        local.tokens = granted - 1


def _capacity(per_minute: int) -> int:
    return 0 if per_minute == 0 else max(1, int(per_minute * BURST_S / 60))
