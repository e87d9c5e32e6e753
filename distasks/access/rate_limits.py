"""Rate limits: requests per minute, one token bucket (access/buckets.py) per principal
and one per tenant, shared by every daemon.

A refusal is remembered until the next token is due, so a client that keeps knocking
costs no Redis call either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from distasks.access import buckets
from distasks.access.principals import Principal
from distasks.broker import Broker
from distasks.config import Config
from distasks.domain.errors import Refused

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
        smaller = min(c for c in (buckets.capacity(per_minute),
                                  buckets.capacity(tenant_per_minute)) if c)
        granted, wait_ms = await buckets.take(
            self._broker, f"{who.tenant}/{who.id}", who.tenant, per_minute=per_minute,
            tenant_per_minute=tenant_per_minute, want=buckets.lease(smaller))
        if granted == 0:
            local.refused_until = now + wait_ms / 1000
            raise RateLimited(shown, wait_ms / 1000)
        local.tokens = granted - 1

