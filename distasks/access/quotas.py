"""Tenant quotas: how many tasks a tenant may create per minute and keep queued
(`[tenants.<name>]`, architecture §8). Checked at the API's edge, before a create reaches
the intake, so that a tenant over its quota costs the others nothing.

Tasks per minute is a token bucket (access/buckets.py, as the rate limits are), shared by
every daemon; a Redis that does not answer lets creates pass.
Queued tasks are counted in PostgreSQL at most once a second per tenant, so a burst can
pass the limit by what one second brings; exactness would cost a count on every create.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from distasks.access import buckets
from distasks.broker import Broker
from distasks.config import Config
from distasks.domain.errors import InvalidInput, Refused
from distasks.store import Store

# How old a tenant's count of queued tasks may be.
COUNT_MAX_AGE_S = 1.0


class QuotaExceeded(Refused):
    def __init__(self, tenant: str, message: str, retry_after_s: float):
        retry = max(1, math.ceil(retry_after_s))
        super().__init__(429, "quota_exceeded", f"tenant {tenant!r}: {message}",
                         {"Retry-After": str(retry)})


@dataclass(slots=True)
class _Tenant:
    tokens: int = 0
    queued: int = 0
    counted_at: float = -math.inf
    lock: trio.Lock = field(default_factory=trio.Lock)


class TenantQuotas:
    def __init__(self, broker: Broker, store: Store, config: Config,
                 clock: Callable[[], float]):
        self._broker = broker
        self._store = store
        self._config = config
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}

    async def admit(self, tenant: str, count: int) -> None:
        """`count` new tasks of `tenant`, or QuotaExceeded naming the quota."""
        quotas = self._config.tenant(tenant)
        if not quotas.tasks_per_minute and not quotas.max_queued:
            return
        state = self._tenants.setdefault(tenant, _Tenant())
        async with state.lock:
            if quotas.max_queued:
                await self._check_queued(tenant, state, count, quotas.max_queued)
            if quotas.tasks_per_minute:
                await self._spend(tenant, state, count, quotas.tasks_per_minute)
            state.queued += count

    def any_limited(self) -> bool:
        """Whether any tenant has a quota on creates (else there is nothing to ask)."""
        return any(q.tasks_per_minute or q.max_queued for q in self._config.tenants.values())

    async def blocked(self, tenant: str) -> str | None:
        """Why one more task of `tenant` would be over a quota now, or None; spends
        nothing (the scheduler asks before it fires, then `charge`s what it made)."""
        quotas = self._config.tenant(tenant)
        state = self._tenants.setdefault(tenant, _Tenant())
        async with state.lock:
            try:
                if quotas.max_queued:
                    await self._check_queued(tenant, state, 1, quotas.max_queued)
                if quotas.tasks_per_minute:
                    await self._spend(tenant, state, 1, quotas.tasks_per_minute)
                    state.tokens += 1  # only looked: given back
            except QuotaExceeded as e:
                return e.message
        return None

    def charge(self, tenant: str, count: int) -> None:
        """`count` tasks of `tenant` made without `admit` (by its schedules, which were
        let through by `blocked`): spent from its tokens, which may go below zero, so
        that its next creates wait for them."""
        quotas = self._config.tenant(tenant)
        if not quotas.tasks_per_minute and not quotas.max_queued:
            return
        state = self._tenants.setdefault(tenant, _Tenant())
        state.tokens -= count
        state.queued += count

    async def _check_queued(self, tenant: str, state: _Tenant, count: int, limit: int) -> None:
        if count > limit:  # never admitted, however long the client waits
            raise InvalidInput(f"tenant {tenant!r} may have at most {limit} tasks queued; "
                               f"{count} at once can never be admitted", field="tasks")
        now = self._clock()
        if now - state.counted_at >= COUNT_MAX_AGE_S:
            state.queued = await self._store.queued_count(tenant)
            state.counted_at = now
        if state.queued + count > limit:
            raise QuotaExceeded(tenant, f"{state.queued} tasks queued, at most {limit}; "
                                "wait for some to finish", COUNT_MAX_AGE_S)

    async def _spend(self, tenant: str, state: _Tenant, count: int, per_minute: int) -> None:
        if state.tokens < count:
            capacity = buckets.capacity(per_minute)
            if count > capacity:  # never admitted, however long the client waits
                raise InvalidInput(f"tenant {tenant!r} may create at most {capacity} tasks "
                                   f"at once ({per_minute} per minute); split the batch",
                                   field="tasks")
            granted, wait_ms = await buckets.take(
                self._broker, f"quota:{tenant}", tenant, per_minute=per_minute,
                want=max(count - state.tokens, buckets.lease(capacity)))
            state.tokens += granted
            if state.tokens < count:
                missing_s = (count - state.tokens) * 60 / per_minute
                raise QuotaExceeded(tenant, f"over {per_minute} tasks per minute",
                                    max(wait_ms / 1000, missing_s))
        state.tokens -= count
