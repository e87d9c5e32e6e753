"""Rebuild: Redis found empty (restarted, failed over, flushed) is filled again from
PostgreSQL by one daemon at a time (architecture §2); the epoch key says it is complete."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from distasks.broker.base import BrokerBase, crossing
from distasks.broker.keys import Rank, global_keys


class RebuildCommands(BrokerBase):
    """The epoch, the rebuild lock, and the entries a rebuild restores."""

    @crossing
    async def has_epoch(self) -> bool:
        """False when Redis lost our data (restarted empty, failed over, flushed)."""
        return bool(await self._redis.exists(global_keys(self._prefix).epoch))

    @crossing
    async def begin_rebuild(self, *, lock_ms: int) -> str | None:
        """Take the rebuild lock; its token, or None if another daemon is rebuilding."""
        lock, token = global_keys(self._prefix).rebuild_lock, secrets.token_hex(8)
        taken = await self._redis.set(lock, token, nx=True, px=lock_ms)
        return token if taken else None

    @crossing
    async def abandon_rebuild(self, token: str) -> None:
        """Release the rebuild lock taken with `token` after a rebuild failed, so that
        the next pass (of any daemon) starts again at once instead of after the lock's
        time runs out."""
        await self._scripts["release_lock"](keys=[global_keys(self._prefix).rebuild_lock],
                                            args=[token])

    @crossing
    async def end_rebuild(self, *, epoch: str) -> None:
        """Mark the index complete and release the rebuild lock."""
        g = global_keys(self._prefix)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(g.epoch, epoch)
            pipe.delete(g.rebuild_lock)
            await pipe.execute()

    @crossing
    async def restore(self, queue: str, *, ready: Sequence[tuple[str, Rank]] = (),
                      delayed: Sequence[tuple[str, int, Rank]] = (),
                      leased: Sequence[tuple[str, int, Rank]] = ()) -> None:
        """Add rebuilt entries to a queue's index: ready (run id, rank), delayed (run id,
        due_ms, rank), leased (run id, deadline_ms, rank); a leased run with a concurrency
        key counts against its key again. Duplicates of entries pushed since Redis came
        back are harmless: a run starts only once (PostgreSQL decides)."""
        keys = self.keys(queue)
        async with self._redis.pipeline(transaction=False) as pipe:
            if ready:
                self._push(pipe, queue, ready)
            if delayed:
                self._delay(pipe, queue, delayed)
            if leased:
                self._pipe_script(pipe, "restore_leases",
                                  [keys.leases, keys.priorities, keys.key_running],
                                  [x for run_id, ms, r in leased for x in (run_id, ms, str(r))])
            await self._execute(pipe)
