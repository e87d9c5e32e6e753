"""Queues: pause flags, depths, and what a deleted queue leaves behind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distasks.broker.base import FORGET_LIMIT, BrokerBase, crossing

# Most ready-list heads a depth reading returns per queue, for the age of the oldest
# ready run: one list per priority, so more only with that many priorities in use.
HEADS = 32


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

    async def _bands_on_asyncio(self, queues: Sequence[str]) -> dict[str, list[str]]:
        """The ready lists of each queue, one per priority in `bands` and `ready` itself."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrange(self.keys(queue).bands, 0, -1)
            replies = await pipe.execute()
        return {queue: [self.keys(queue).ready, *(self.keys(queue).band(p) for p in bands)]
                for queue, bands in zip(queues, replies, strict=True)}

    @crossing
    async def set_limits(self, limits: Mapping[str, int | None]) -> None:
        """Mirror the max-running limits of many queues (None: no limit) in one round
        trip, ringing each one's room signal so that fetchers held back re-check."""
        if not limits:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, limit in limits.items():
                keys = self.keys(queue)
                if limit is None:
                    pipe.delete(keys.max_running, keys.room)
                else:
                    pipe.set(keys.max_running, limit)
                    pipe.rpush(keys.room, "1")
                    pipe.ltrim(keys.room, 0, 0)
            await pipe.execute()

    @crossing
    async def queue_entries(self, queue: str) -> QueueEntries:
        """What a queue's ready lists, delayed set, leases and DLQ index hold (at most
        FORGET_LIMIT of each), for `forget_queue`."""
        keys = self.keys(queue)
        lists = (await self._bands_on_asyncio([queue]))[queue]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(keys.delayed, 0, FORGET_LIMIT - 1)
            pipe.zrange(keys.leases, 0, FORGET_LIMIT - 1)
            pipe.lrange(keys.dlq, 0, FORGET_LIMIT - 1)
            for ready in lists:
                pipe.lrange(ready, 0, FORGET_LIMIT - 1)
            delayed, leased, dead, *waiting = await pipe.execute()
        return QueueEntries(runs=frozenset([*delayed, *leased, *(i for w in waiting for i in w)]),
                            dead=frozenset(dead))

    @crossing
    async def forget_queue(self, queue: str, stale: QueueEntries) -> None:
        """A deleted queue: drop its pause flag and mover lock, and the `stale` entries
        of its ready lists, delayed set, leases, priorities and DLQ index. Only those: a
        create that raced the delete may have pushed a run since, which must stay."""
        keys = self.keys(queue)
        lists = (await self._bands_on_asyncio([queue]))[queue]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.paused, keys.mover_lock, keys.max_running, keys.room)
            for run_id in stale.runs:
                for ready in lists:
                    pipe.lrem(ready, 0, run_id)
            if stale.runs:
                pipe.zrem(keys.delayed, *stale.runs)
                pipe.zrem(keys.leases, *stale.runs)
                pipe.hdel(keys.priorities, *stale.runs)
            for task_id in stale.dead:
                pipe.lrem(keys.dlq, 0, task_id)
            await pipe.execute()

    @crossing
    async def depths(self, queue: str) -> dict[str, int]:
        """Sizes of the queue's ready (all priorities), delayed, leased and DLQ
        structures."""
        d = await self._depths_on_asyncio([queue])
        return {k: d[queue][k] for k in ("ready", "delayed", "leased", "dlq")}

    @crossing
    async def queue_depths(self, queues: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Depths of many queues in one pipeline, with the heads (oldest entries) of
        each queue's ready lists (at most HEADS, highest priorities first) and whether it
        is paused."""
        return await self._depths_on_asyncio(queues)

    async def _depths_on_asyncio(self, queues: Sequence[str]) -> dict[str, dict[str, Any]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                keys = self.keys(queue)
                self._pipe_script(pipe, "ready_depth", [keys.ready, keys.bands], [HEADS])
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.leases)
                pipe.llen(keys.dlq)
                pipe.exists(keys.paused)
            replies = await self._execute(pipe)
        out = {}
        for i, queue in enumerate(queues):
            (ready, *heads), delayed, leased, dead, paused = replies[5 * i:5 * i + 5]
            out[queue] = {"ready": ready, "delayed": delayed, "leased": leased, "dlq": dead,
                          "heads": heads, "paused": bool(paused)}
        return out
