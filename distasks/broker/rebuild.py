"""Rebuild: Redis found empty (restarted, failed over, flushed) is filled again from
PostgreSQL by one daemon at a time (architecture §2); the epoch key says it is complete.

On a cluster each master has an epoch marker of its own, in a slot it serves, whose value
names that master (host:port). A master restarted empty loses its marker; a master killed
and replaced by its replica leaves a marker naming the old master, and its replica may
lack the last writes it acknowledged (replication is asynchronous). Either way only the
queues whose slots that master serves now are rebuilt.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from distasks.broker.base import BrokerBase, crossing
from distasks.broker.keys import Rank, epoch_marker, global_keys

# Value of the epoch key of a single Redis (a cluster's markers name their master).
SINGLE = "redis"
# Most candidate keys tried to find one in each master's slots (16384 slots: a master
# serving a few of them has one within the first tens of thousands).
MARKER_CANDIDATES = 100_000


class RebuildCommands(BrokerBase):
    """The epoch, the rebuild lock, and the entries a rebuild restores."""

    @crossing
    async def lost_epochs(self) -> dict[str, str]:
        """The epoch markers that are gone or name another master: marker key -> the
        master (host:port) serving it now, or "redis" for a single Redis. Empty when Redis
        holds the whole index; else rebuild the queues `on_lost` names and pass this to
        `end_rebuild`."""
        return await self._lost_epochs_on_asyncio()

    async def _lost_epochs_on_asyncio(self) -> dict[str, str]:
        if self.is_cluster:
            await self._redis.initialize()  # the slot map, learnt on first use
        markers = self._epoch_markers()
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in markers:
                pipe.get(key)
            values = await pipe.execute()
        # Read after the GETs: a failover they ran into has refreshed the slot map.
        markers = self._epoch_markers()
        return {key: owner for (key, owner), value in zip(markers.items(), values, strict=True)
                if value != owner}

    @crossing
    async def has_epoch(self) -> bool:
        """False when Redis lost some of our data (restarted empty, failed over, flushed)."""
        return not await self._lost_epochs_on_asyncio()

    def on_lost(self, lost: dict[str, str], queue: str) -> bool:
        """Whether `queue`'s keys are on a master that `lost` (from lost_epochs) names."""
        if not self.is_cluster:
            return bool(lost)
        return str(self._redis.get_node_from_key(self.keys(queue).ready).name) in lost.values()

    def _epoch_markers(self) -> dict[str, str]:
        """Marker key -> the master it is on: one per master of a cluster (the first
        candidate key whose slot the master serves, by the client's slot map), or the
        epoch key of a single Redis."""
        if not self.is_cluster:
            return {global_keys(self._prefix).epoch: SINGLE}
        # The masters that serve slots (one added and given none yet holds no queue).
        wanted = {str(nodes[0].name)
                  for nodes in self._redis.nodes_manager.slots_cache.values() if nodes}
        found: dict[str, str] = {}
        for n in range(MARKER_CANDIDATES):
            if not wanted:
                break
            key = epoch_marker(self._prefix, n)
            owner = str(self._redis.get_node_from_key(key).name)
            if owner in wanted:
                wanted.discard(owner)
                found[key] = owner
        return found

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
    async def end_rebuild(self, lost: dict[str, str]) -> None:
        """Mark the index complete on the masters `lost` (from lost_epochs, read before
        the rebuild: a master that failed over meanwhile still differs and is rebuilt
        again) and release the rebuild lock. Not one transaction: on a cluster the keys
        are in different slots, and a lock left behind only expires."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, owner in lost.items():
                pipe.set(key, owner)
            pipe.delete(global_keys(self._prefix).rebuild_lock)
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
