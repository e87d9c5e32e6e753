"""Rate limits against real Redis (distasks.access.rate_limits, broker/rate_take.lua): a bucket
holds its burst then refuses with a retry time; buckets are per tenant and principal;
a tenant's own limit overrides limits.tenant_per_minute."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from distasks.access.principals import Principal
from distasks.access.rate_limits import RateLimited, RateLimiter
from distasks.config import Config, LimitsConfig, TenantConfig


def principal(tenant: str, pid: str = "jwt:alice") -> Principal:
    return Principal(id=pid, name=pid, tenant=tenant, scopes=frozenset())


async def spent(limiter: RateLimiter, who: Principal, n: int) -> int:
    """How many of `n` requests of `who` pass."""
    passed = 0
    for _ in range(n):
        try:
            await limiter.spend(who)
            passed += 1
        except RateLimited:
            pass
    return passed


async def test_a_bucket_holds_its_burst_then_refuses_with_a_retry_time(broker, config):
    # 60 a minute: a burst of 10 s worth.
    limiter = RateLimiter(broker, dataclasses.replace(config, limits=LimitsConfig(per_minute=60)))
    with trio.fail_after(10):
        assert await spent(limiter, principal("acme"), 12) == 10
        with pytest.raises(RateLimited) as refused:
            await limiter.spend(principal("acme"))
    assert refused.value.status == 429
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 2


async def test_one_subject_in_two_tenants_has_two_buckets(broker, config):
    # A JWT subject is unique within its tenant only: beta's alice must not spend acme's.
    limiter = RateLimiter(broker, dataclasses.replace(config, limits=LimitsConfig(per_minute=60)))
    with trio.fail_after(10):
        assert await spent(limiter, principal("acme"), 10) == 10
        assert await spent(limiter, principal("beta"), 10) == 10


async def test_a_tenants_own_limit_holds_for_all_its_principals(broker, config):
    limits = LimitsConfig(per_minute=0, tenant_per_minute=600)
    tenants = {"acme": TenantConfig(requests_per_minute=60)}
    limiter = RateLimiter(broker, Config(limits=limits, tenants=tenants,
                                         redis=config.redis, database=config.database))
    with trio.fail_after(10):
        # Two keys of acme share its 10-request burst; beta has the global 100.
        first = await spent(limiter, principal("acme", "key:1"), 6)
        second = await spent(limiter, principal("acme", "key:2"), 6)
        assert first + second == 10
        assert await spent(limiter, principal("beta", "key:3"), 12) == 12
