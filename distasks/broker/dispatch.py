"""Dispatch: runs pushed ready or delayed, claimed with a lease (highest priority
first, oldest first within a priority), handed back, settled after their outcome, and
moved from delayed to ready when due (architecture §3).

A priority is an integer; higher runs first. Each priority has its own FIFO ready list
(claim.lua describes the layout); a run of a priority other than 0 also has its priority
kept in the queue's `priorities` hash while it is in the index, so that a retry, a due
run or a run handed back goes back to its list inside a script. A run with a concurrency
key is filed by its rank (keys.Rank) in its key's list instead; the claim serves the keys
round robin, each within the queue's max_running_per_key.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from distasks.broker.base import CLAIM_BLOCK_S, MOVE_MAX_ROUNDS, BrokerBase, crossing
from distasks.broker.keys import Rank


@dataclass(slots=True)
class Settlement:
    """Redis follow-ups of a batch of recorded outcomes, for `settle`, by queue."""

    #: queue -> run ids whose lease ends (their rank leaves `priorities` too)
    unleased: dict[str, list[str]] = field(default_factory=dict)
    #: queue -> (due_ms, run id, rank) of retries
    delayed: dict[str, list[tuple[int, str, Rank]]] = field(default_factory=dict)
    #: queue -> task ids out of retries
    dead: dict[str, list[str]] = field(default_factory=dict)
    #: queue -> (run id, rank) to run next (interrupted runs handed back)
    urgent: dict[str, list[tuple[str, Rank]]] = field(default_factory=dict)
    #: queue -> (run id, rank) of first runs to push at the tail, as a create's
    #: (workflow nodes their last parent released)
    ready: dict[str, list[tuple[str, Rank]]] = field(default_factory=dict)
    #: task ids that reached a final state (announced to long-poll waiters)
    finished: list[str] = field(default_factory=list)
    #: when the outcomes were recorded, Unix time in ms
    now_ms: int = 0


class DispatchCommands(BrokerBase):
    """Ready lists, delayed sets and the claim's lease sets."""

    @crossing
    async def dispatch(self, ready: Sequence[tuple[str, str, Rank]] = (),
                       delayed: Sequence[tuple[str, str, int, Rank]] = ()) -> None:
        """Push (queue, run_id, rank) to ready lists and (queue, run_id, due_ms, rank)
        to delayed sets."""
        if not ready and not delayed:
            return
        by_queue: dict[str, list[tuple[str, Rank]]] = {}
        for queue, run_id, priority in ready:
            by_queue.setdefault(queue, []).append((run_id, priority))
        due_by_queue: dict[str, list[tuple[str, int, Rank]]] = {}
        for queue, run_id, due_ms, priority in delayed:
            due_by_queue.setdefault(queue, []).append((run_id, due_ms, priority))
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, runs in by_queue.items():
                self._push(pipe, queue, runs)
            for queue, due in due_by_queue.items():
                self._delay(pipe, queue, due)
            await self._execute(pipe)

    @crossing
    async def claim(self, queue: str, *, count: int, lease_until_ms: int,
                    block: bool) -> list[str] | None:
        """Lease up to `count` ready run ids of `queue`, highest priority first, oldest
        first within a priority; with `block`, wait up to CLAIM_BLOCK_S for the first
        one. None when the queue is paused.

        Returns at once when work is ready; otherwise waits on the server (`wait_ready`)
        and claims what arrived, all in one crossing. A queue whose start rate has no
        token left waits (with `block`) until the next one, up to CLAIM_BLOCK_S, and
        claims again. Claimed ids are in the lease set when this returns. Call it
        shielded: it must not be cancelled in flight, and it ends by itself within
        CLAIM_BLOCK_S plus two round trips.
        """
        keys = self.keys(queue)
        script = self._scripts["claim"]
        script_keys = [keys.ready, keys.leases, keys.paused, keys.bands, keys.bell,
                       keys.max_running, keys.room, keys.key_turns, keys.key_running,
                       keys.max_per_key, keys.rate]
        items: list[str | int] | None = await script(keys=script_keys,
                                                     args=[count, lease_until_ms])
        if items and isinstance(items[0], int):  # held back by the start rate
            if not block:
                return []
            await asyncio.sleep(min(items[0] / 1000, CLAIM_BLOCK_S))
        elif items is None or items or not block or not await self._wait_ready_on_asyncio(queue):
            return items  # type: ignore[return-value]
        items = await script(keys=script_keys, args=[count, lease_until_ms])
        if items and isinstance(items[0], int):
            return []
        return items  # type: ignore[return-value]

    @crossing
    async def wait_ready(self, queue: str) -> bool:
        """Wait up to CLAIM_BLOCK_S until `queue` may have a ready item; takes nothing.

        It waits on the queue's bell, which every push rings and a claim that finds
        every ready list empty takes down: one key whatever the priorities. BLMOVE of
        the bell onto itself (head to head) blocks like a pop but leaves it where it was,
        so even a reply lost to a dropped connection loses nothing.
        """
        return await self._wait_ready_on_asyncio(queue)

    async def _wait_ready_on_asyncio(self, queue: str) -> bool:
        """wait_ready's body, for `claim` to use within its own crossing. A queue held
        back by its max-running limit waits on its room signal instead (claim.lua), which
        an ended lease rings; one rung since the check makes the wait return at once."""
        keys = self.keys(queue)
        signal = keys.bell
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.max_running)
            pipe.zcard(keys.leases)
            limit, leased = await pipe.execute()
        if limit is not None and leased >= int(limit):
            signal = keys.room
        return await self._redis.blmove(signal, signal, CLAIM_BLOCK_S, "LEFT", "LEFT") is not None

    @crossing
    async def requeue(self, queue: str, run_ids: Sequence[str]) -> int:
        """Hand leased run ids back to the head of their priority's ready list; returns
        how many."""
        if not run_ids:
            return 0
        keys = self.keys(queue)
        return int(await self._scripts["requeue"](
            keys=[keys.leases, keys.ready, keys.bands, keys.bell, keys.priorities,
                  keys.max_running, keys.room, keys.key_turns, keys.key_running],
            args=list(run_ids)))

    @crossing
    async def release(self, queue: str, run_ids: Sequence[str]) -> None:
        """Drop the leases (and ranks) of claimed ids that have nothing to run."""
        if run_ids:
            async with self._redis.pipeline(transaction=False) as pipe:
                self._unlease(pipe, queue, run_ids)
                await self._execute(pipe)

    @crossing
    async def settle(self, s: Settlement) -> None:
        """Apply the Redis side of recorded outcomes in one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, run_ids in s.unleased.items():
                self._unlease(pipe, queue, run_ids)
            for queue, due in s.delayed.items():
                self._delay(pipe, queue, [(run_id, ms, p) for ms, run_id, p in due])
            for queue, task_ids in s.dead.items():
                pipe.rpush(self.keys(queue).dlq, *task_ids)
            for queue, runs in s.urgent.items():
                self._push(pipe, queue, runs, at_head=True)
            for queue, runs in s.ready.items():
                self._push(pipe, queue, runs)
            await self._execute_announcing(pipe, s.finished, now_ms=s.now_ms)

    @crossing
    async def move_due(self, queue: str, *, now_ms: int, limit: int, lock_ms: int) -> int | None:
        """Move due delayed ids of `queue` to ready; None if another daemon holds the lock.

        The lock (SET NX PX, not released) makes one daemon move per `lock_ms`; the script
        is atomic, so even two movers would never move one item twice.
        """
        keys = self.keys(queue)
        if not await self._redis.set(keys.mover_lock, secrets.token_hex(8), nx=True, px=lock_ms):
            return None
        moved = 0
        for _ in range(MOVE_MAX_ROUNDS):
            n = int(await self._scripts["move_due"](
                keys=[keys.delayed, keys.ready, keys.bands, keys.bell, keys.priorities,
                      keys.key_turns],
                args=[now_ms, limit]))
            moved += n
            if n < limit:  # fewer than the limit means done
                break
        return moved
