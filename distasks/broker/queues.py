"""Queues: pause flags, depths, and what a deleted queue leaves behind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distasks.broker.base import FORGET_LIMIT, BrokerBase, crossing


@dataclass(frozen=True, slots=True)
class QueueEntries:
    """Ids in a queue's Redis structures: run ids (ready, delayed, leased) and task ids
    (DLQ index)."""

    runs: frozenset[str] = frozenset()
    dead: frozenset[str] = frozenset()


class QueueCommands(BrokerBase):
    """A queue as a whole: its flag, its sizes, its keys."""

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Mirror a queue's pause flag (claims of a paused queue return nothing)."""
        await self.set_pause_flags({queue: paused})

    @crossing
    async def set_pause_flags(self, flags: Mapping[str, bool]) -> None:
        """Mirror the pause flags of many queues in one round trip."""
        if not flags:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, paused in flags.items():
                if paused:
                    pipe.set(self.keys(queue).paused, "1")
                else:
                    pipe.delete(self.keys(queue).paused)
            await pipe.execute()

    @crossing
    async def queue_entries(self, queue: str) -> QueueEntries:
        """What a queue's ready list, delayed set, leases and DLQ index hold (at most
        FORGET_LIMIT of each), for `forget_queue`."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.ready, 0, FORGET_LIMIT - 1)
            pipe.zrange(keys.delayed, 0, FORGET_LIMIT - 1)
            pipe.zrange(keys.leases, 0, FORGET_LIMIT - 1)
            pipe.lrange(keys.dlq, 0, FORGET_LIMIT - 1)
            ready, delayed, leased, dead = await pipe.execute()
        return QueueEntries(runs=frozenset([*ready, *delayed, *leased]), dead=frozenset(dead))

    @crossing
    async def forget_queue(self, queue: str, stale: QueueEntries) -> None:
        """A deleted queue: drop its pause flag and mover lock, and the `stale` entries
        of its ready list, delayed set, leases and DLQ index. Only those: a create that
        raced the delete may have pushed a run since, which must stay."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.paused, keys.mover_lock)
            for run_id in stale.runs:
                pipe.lrem(keys.ready, 0, run_id)
            if stale.runs:
                pipe.zrem(keys.delayed, *stale.runs)
                pipe.zrem(keys.leases, *stale.runs)
            for task_id in stale.dead:
                pipe.lrem(keys.dlq, 0, task_id)
            await pipe.execute()

    @crossing
    async def depths(self, queue: str) -> dict[str, int]:
        """Sizes of the queue's ready, delayed, leased and DLQ structures."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.llen(keys.ready)
            pipe.zcard(keys.delayed)
            pipe.zcard(keys.leases)
            pipe.llen(keys.dlq)
            ready, delayed, leased, dead = await pipe.execute()
        return {"ready": ready, "delayed": delayed, "leased": leased, "dlq": dead}

    @crossing
    async def queue_depths(self, queues: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Depths of many queues in one pipeline, with each ready list's head (oldest) and
        whether it is paused."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                keys = self.keys(queue)
                pipe.llen(keys.ready)
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.leases)
                pipe.llen(keys.dlq)
                pipe.lindex(keys.ready, 0)
                pipe.exists(keys.paused)
            replies = await pipe.execute()
        out = {}
        for i, queue in enumerate(queues):
            ready, delayed, leased, dead, head, paused = replies[6 * i:6 * i + 6]
            out[queue] = {"ready": ready, "delayed": delayed, "leased": leased, "dlq": dead,
                          "head": head, "paused": bool(paused)}
        return out
