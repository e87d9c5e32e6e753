"""Leases: held runs' deadlines extended by the heartbeat, expired ones found by the reaper."""

from __future__ import annotations

from distasks.broker.base import BrokerBase, crossing


class LeaseCommands(BrokerBase):
    """The lease sets, as the heartbeat and the reaper see them."""

    @crossing
    async def extend_leases(self, by_queue: dict[str, list[str]], *, lease_until_ms: int) -> None:
        """Move the lease deadline of held run ids (only those still in the lease set)."""
        if not by_queue:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, run_ids in by_queue.items():
                pipe.zadd(self.keys(queue).leases, dict.fromkeys(run_ids, lease_until_ms), xx=True)
            await pipe.execute()

    @crossing
    async def expired_leases(self, queue: str, *, before_ms: int, limit: int) -> list[str]:
        """Run ids of `queue` whose Redis lease ended before `before_ms`."""
        items = await self._redis.zrange(self.keys(queue).leases, "-inf", before_ms,
                                         byscore=True, offset=0, num=limit)
        return [str(i) for i in items]
