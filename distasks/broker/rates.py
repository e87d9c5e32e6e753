"""Rates: token buckets in Redis, on Redis's clock (rate_take.lua), shared by every daemon."""

from __future__ import annotations

from distasks.broker.base import BrokerBase, crossing
from distasks.broker.keys import rate_keys


class RateCommands(BrokerBase):
    """Tokens taken from a principal's and its tenant's buckets at once."""

    @crossing
    async def take_tokens(self, principal: str, tenant: str, *, per_ms: float,
                          capacity: int, tenant_per_ms: float, tenant_capacity: int,
                          want: int) -> tuple[int, int]:
        """Up to `want` tokens from the principal's and the tenant's buckets (a capacity
        of 0: no limit); (granted, ms until the next token when none was granted)."""
        keys = rate_keys(self._prefix, principal, tenant)
        granted, wait_ms, _left = await self._scripts["rate_take"](
            keys=list(keys), args=[per_ms, capacity, tenant_per_ms or 1, tenant_capacity, want])
        return int(granted), int(wait_ms)
