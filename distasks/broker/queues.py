"""Queues: pause flags, depths, and what a deleted queue leaves behind."""

from __future__ import annotations

import math
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
        """The ready lists of each queue: one per priority in `bands`, `ready` itself, and
        one per concurrency key in `key-turns`."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrange(self.keys(queue).bands, 0, -1)
                pipe.lrange(self.keys(queue).key_turns, 0, -1)
            replies = await pipe.execute()
        return {queue: [self.keys(queue).ready, *(self.keys(queue).band(p) for p in bands),
                        *(self.keys(queue).keyed(k) for k in turns)]
                for queue, bands, turns in zip(queues, replies[::2], replies[1::2], strict=True)}

    async def mirror_limits(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """Mirror the limits given for each queue, as PostgreSQL's `queues` columns name
        them (max_running, max_running_per_key, max_starts_per_second with burst; None:
        no limit); one not given stays as it is. A rate needs its burst given too."""
        rates: dict[str, tuple[float, int] | None] = {}
        for queue, row in rows.items():
            if "max_starts_per_second" in row or "burst" in row:
                per_s = row.get("max_starts_per_second")
                rates[queue] = (None if per_s is None
                                else (per_s, row.get("burst") or max(1, math.ceil(per_s))))
        await self.set_limits(
            {q: row["max_running"] for q, row in rows.items() if "max_running" in row},
            {q: row["max_running_per_key"] for q, row in rows.items()
             if "max_running_per_key" in row}, rates)

    @crossing
    async def set_limits(self, limits: Mapping[str, int | None],
                         per_key: Mapping[str, int | None] | None = None,
                         rates: Mapping[str, tuple[float, int] | None] | None = None) -> None:
        """Mirror the max-running limits of many queues (None: no limit) in one round
        trip, ringing each one's room signal so that fetchers held back re-check; and,
        for the queues in `per_key`, their max-running-per-key limits, ringing the bell
        (a claim that found every key at its limit took it down); and for those in
        `rates`, their start rate (per second, burst), keeping the bucket's tokens."""
        if not limits and not per_key and not rates:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, rate in (rates or {}).items():
                keys = self.keys(queue)
                if rate is None:
                    pipe.delete(keys.rate)
                else:
                    pipe.hset(keys.rate, mapping={"per_s": repr(rate[0]), "burst": rate[1]})
            for queue, limit in limits.items():
                keys = self.keys(queue)
                if limit is None:
                    pipe.delete(keys.max_running, keys.room)
                else:
                    pipe.set(keys.max_running, limit)
                    pipe.rpush(keys.room, "1")
                    pipe.ltrim(keys.room, 0, 0)
            for queue, limit in (per_key or {}).items():
                keys = self.keys(queue)
                if limit is None:
                    pipe.delete(keys.max_per_key)
                else:
                    pipe.set(keys.max_per_key, limit)
                pipe.rpush(keys.bell, "1")
                pipe.ltrim(keys.bell, 0, 0)
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
            pipe.delete(keys.paused, keys.mover_lock, keys.max_running, keys.room,
                        keys.max_per_key, keys.rate)
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
        each queue's ready lists (at most HEADS, highest priorities first), whether it
        is paused, and how many ready runs its limits hold back now."""
        return await self._depths_on_asyncio(queues)

    async def _depths_on_asyncio(self, queues: Sequence[str]) -> dict[str, dict[str, Any]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                keys = self.keys(queue)
                self._pipe_script(pipe, "ready_depth", [
                    keys.ready, keys.bands, keys.key_turns, keys.leases, keys.max_running,
                    keys.key_running, keys.max_per_key, keys.rate], [HEADS])
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.leases)
                pipe.llen(keys.dlq)
                pipe.exists(keys.paused)
            replies = await self._execute(pipe)
        out = {}
        for i, queue in enumerate(queues):
            (ready, held, *heads), delayed, leased, dead, paused = replies[5 * i:5 * i + 5]
            out[queue] = {"ready": ready, "delayed": delayed, "leased": leased, "dlq": dead,
                          "heads": heads, "paused": bool(paused), "waiting_for_limit": held}
        return out
